// The JavaScript package as a page uses it, checked in a real browser: models from bytes
// against onnxruntime's stored outputs (values and shapes), a side file as a second buffer, the
// synthetic MLP, a photo classified by a ResNet, errors as exceptions, and the benchmark's
// report. The outcome goes to
// `window.testOutcome`, which web/test/drive.py reads over WebDriver and compares with the CLI.
import init, { Engine } from "../pkg/resgraph_web.js";

const results = [];
const log = (line) => { document.getElementById("log").textContent += `${line}\n`; };

function check(name, ok, detail = "") {
  results.push({ name, ok: Boolean(ok), detail: String(detail) });
  log(`${ok ? "ok  " : "FAIL"} ${name} ${detail}`);
}

// A little-endian float32 `.npy` file (what scripts/onnx_reference.py writes).
function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  if (!header.includes("'<f4'") || header.includes("'fortran_order': True")) {
    throw new Error(`not a C-order float32 .npy: ${header}`);
  }
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(",").map((s) => s.trim())
    .filter((s) => s.length).map(Number);
  const offset = start + headerLength;
  return { shape, data: new Float32Array(buffer.slice(offset)) };
}

async function fetchBytes(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

function relativeError(out, expected) {
  let difference = 0;
  let norm = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = out[i] - expected[i];
    difference += d * d;
    norm += expected[i] * expected[i];
  }
  return Math.sqrt(difference) / Math.sqrt(norm);
}

const sameShape = (a, b) => a.length === b.length && a.every((value, i) => value === b[i]);
const cases = "../../tests/data/onnx/";

async function onnxCase(engine, name, input, expected, side) {
  // The model as an ArrayBuffer, its side file as a Uint8Array view: both forms are taken.
  const bytes = await fetchBytes(cases + name);
  const data = side ? new Uint8Array(await fetchBytes(cases + side)) : undefined;
  const x = parseNpy(await fetchBytes(cases + input));
  const y = parseNpy(await fetchBytes(cases + expected));
  const model = await engine.loadModel(name, bytes, data, x.shape[0], false);
  check(`${name}: input shape`, sameShape(model.inputShape, x.shape.slice(1)), model.inputShape);
  const result = await model.run(x.data, x.shape);
  check(`${name}: output shape`, sameShape(result.shape, y.shape), `${result.shape} vs ${y.shape}`);
  check(`${name}: output is a Float32Array`, result.data instanceof Float32Array);
  const finite = result.data.every(Number.isFinite);
  const error = relativeError(result.data, y.data);
  check(`${name}: matches onnxruntime`, finite && error <= 1e-4, `relative error ${error.toExponential(2)}`);
  check(`${name}: run time`, result.milliseconds > 0, `${result.milliseconds.toFixed(2)} ms`);
  return { model, x, y };
}

async function rejection(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return error;
  }
}

async function main() {
  await init();
  const engine = await Engine.create();
  log(`adapter: ${engine.adapter}`);
  const outcome = { adapter: engine.adapter, results };

  const { model, x, y } = await onnxCase(engine, "pytorch_gemm_w17_stem_head.onnx",
    "pytorch_gemm_w17_stem_head.b7.input.npy", "pytorch_gemm_w17_stem_head.b7.expected.npy");
  await onnxCase(engine, "external_data_w23_stem_head.onnx",
    "external_data_w23_stem_head.b6.input.npy", "external_data_w23_stem_head.b6.expected.npy",
    "external_data_w23_stem_head.onnx.data");

  // One entry without a batch dimension: the output drops it too, and equals row 0.
  const width = model.inputShape[0];
  const one = await model.run(x.data.slice(0, width), [width]);
  const outWidth = y.shape[1];
  check("one entry: output shape", sameShape(one.shape, [outWidth]), one.shape);
  check("one entry: same values as row 0",
    relativeError(one.data, y.data.slice(0, outWidth)) <= 1e-4);

  // Errors are exceptions with the one-line messages of the CLI.
  const garbage = new TextEncoder().encode("not an ONNX model");
  const bad = await rejection(engine.loadModel("bad.onnx", garbage, undefined, 1, false));
  check("a bad model rejects with an Error", bad instanceof Error, bad);
  outcome.badModelMessage = bad instanceof Error ? bad.message : null;
  check("its message is one line", bad && !bad.message.includes("\n"), bad && bad.message);
  const notBytes = await rejection(engine.loadModel("m.onnx", [1, 2, 3], undefined, 1, false));
  check("a model that is not bytes rejects", notBytes instanceof Error
    && notBytes.message.includes("not an ArrayBuffer"), notBytes && notBytes.message);
  const wrong = await rejection(model.run(new Float32Array(10), [2, 5]));
  check("a wrong input shape rejects", wrong instanceof Error && wrong.message.includes("[2, 5]"),
    wrong && wrong.message);
  const short = await rejection(model.run(new Float32Array(3), [1, width]));
  check("data shorter than its shape rejects", short instanceof Error, short && short.message);
  const tooMany = await rejection(model.run(new Float32Array(8 * width), [8, width]));
  check("a batch over the maximum rejects", tooMany instanceof Error, tooMany && tooMany.message);

  // The built-in residual MLP, the model `resgraph bench` runs.
  const mlp = await engine.syntheticMlp(32, 2, 4, 42);
  const mlpRun = await mlp.run(new Float32Array(4 * 32).fill(0.5), [4, 32]);
  check("synthetic MLP: output shape", sameShape(mlpRun.shape, [4, 32]), mlpRun.shape);
  check("synthetic MLP: finite output", mlpRun.data.every(Number.isFinite));

  // The benchmark, with progress, and its report.
  const progress = [];
  const report = JSON.parse(await engine.benchmark(
    { width: 32, depth: 2, batch: 4, iters: 3, warmup: 1, check: true },
    (done, total) => progress.push([done, total])));
  check("benchmark: progress after each timed run",
    progress.length === 3 && progress[2][0] === 3 && progress[2][1] === 3, JSON.stringify(progress));
  check("benchmark: timed runs", report.iters === 3 && report.median_ms > 0,
    `${report.iters} runs, median ${report.median_ms} ms`);
  check("benchmark: checked against the f64 reference",
    report.max_rel_err <= 1e-5 && report.checked_rows === 4, report.max_rel_err);
  check("benchmark: GFLOP/s", report.gflops > 0, report.gflops);
  outcome.benchKeys = Object.keys(report).sort();
  const badOption = await rejection(engine.benchmark({ width: -3 }));
  check("a bad benchmark option rejects", badOption instanceof Error && badOption.message.includes("width"),
    badOption && badOption.message);

  // A photo classified as `resgraph classify` does: the browser decodes the PNG (no colour
  // management, so the pixels are the file's), the package prepares it as torchvision does
  // (Pillow's resampling to the bit) and ranks the classes; the probabilities are onnxruntime's
  // on Pillow's transform (scripts/classify_reference.py).
  const photos = "../../tests/data/classify/";
  const resnet = await engine.loadModel("resnet18.onnx", await fetchBytes(
    "../../tests/data/onnx_resnet/resnet18_torchscript_opset17_w4_29x32.onnx"), undefined, 1, false);
  const bitmap = await createImageBitmap(new Blob([await fetchBytes(photos + "wide_61x47.png")]),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const pixels = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const expected = parseNpy(await fetchBytes(photos + "wide_61x47_png.probabilities.npy")).data;
  const { classes } = await resnet.classify(pixels, bitmap.width, bitmap.height, 10);
  const worst = Math.max(...classes.map((c) => Math.abs(c.probability - expected[c.class])));
  check("classify: ten classes, ranked", classes.length === 10
    && classes.every((c, i) => i === 0 || classes[i - 1].probability >= c.probability),
    JSON.stringify(classes.slice(0, 2)));
  check("classify: torchvision's probabilities", worst <= 1e-5 && classes[0].label === null,
    `largest difference ${worst.toExponential(2)}, top class ${classes[0].class}`);
  const notImage = await rejection(mlp.classify(pixels, bitmap.width, bitmap.height, 5));
  check("classify with a model that takes no images rejects", notImage instanceof Error
    && notImage.message.includes("RGB image"), notImage && notImage.message);
  const shortPixels = await rejection(resnet.classify(pixels.slice(0, 10), 61, 47, 5));
  check("pixels that do not fill the image reject", shortPixels instanceof Error, shortPixels
    && shortPixels.message);

  // The tuning cache the page keeps.
  const tuned = await rejection(engine.loadModel("pytorch_gemm_w17_stem_head.onnx",
    new Uint8Array(await fetchBytes(cases + "pytorch_gemm_w17_stem_head.onnx")), undefined, 2, true));
  check("a tuned load succeeds", tuned === null, tuned);
  const cache = Engine.tuningCache();
  check("the tuning cache has entries", Engine.loadTuningCache(cache) > 0, cache.length);

  window.testOutcome = outcome;
}

main().catch((error) => {
  log(`fatal: ${error && error.stack ? error.stack : error}`);
  window.testOutcome = { fatal: String(error && error.message ? error.message : error), results };
});
