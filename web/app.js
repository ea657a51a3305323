// The page's logic: open the engine, run a model (a file or the built-in residual MLP) on a
// random input or classify a photo with it, and run `resgraph bench` in the browser. Build the package first
// (web/build.sh), then serve the repository's folder over HTTP and open /web/.
import init, { Engine } from "./pkg/resgraph_web.js";

const $ = (id) => document.getElementById(id);
const number = (id) => Number($(id).value);

function showError(target, error) {
  target.innerHTML = "";
  const line = document.createElement("p");
  line.className = "error";
  line.textContent = `error: ${error instanceof Error ? error.message : error}`;
  target.append(line);
}

function table(rows) {
  const element = document.createElement("table");
  for (const [name, value] of rows) {
    const row = element.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = value;
  }
  return element;
}

// A deterministic input in [-1, 1), so that runs can be compared.
function randomInput(length, seed) {
  const values = new Float32Array(length);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
    values[i] = ((state >>> 0) / 2 ** 32) * 2 - 1;
  }
  return values;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function loadModel(engine, batch, tune) {
  if (document.querySelector("input[name=source]:checked").value === "synthetic") {
    return engine.syntheticMlp(number("mlp-width"), number("mlp-depth"), batch, 42);
  }
  const file = $("model-file").files[0];
  if (!file) throw new Error("choose a model file, or the built-in residual MLP");
  const bytes = new Uint8Array(await file.arrayBuffer());
  const dataFile = $("data-file").files[0];
  const data = dataFile ? new Uint8Array(await dataFile.arrayBuffer()) : undefined;
  return engine.loadModel(file.name, bytes, data, batch, tune);
}

// The photo's pixels as the file holds them (RGBA, no colour management), for `classify`.
async function photoPixels(file) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  return { pixels: context.getImageData(0, 0, bitmap.width, bitmap.height).data, width: bitmap.width, height: bitmap.height };
}

// Classifies the chosen photo with `model`, as `resgraph classify` does, and shows the top five.
async function classify(model, file, target) {
  target.textContent = "classifying…";
  const { pixels, width, height } = await photoPixels(file);
  const { classes, milliseconds } = await model.classify(pixels, width, height, 5);
  target.innerHTML = "";
  target.append(table([
    ["photo", `${file.name} (${width} × ${height}, prepared as torchvision's ImageNet transform for [${model.inputShape.join(", ")}])`],
    ...classes.map((c) => [`${(c.probability * 100).toFixed(2)}%`, c.label === null ? `class ${c.class}` : `${c.class} ${c.label}`]),
    ["time of the run", `${milliseconds.toFixed(2)} ms`],
  ]));
}

async function run(engine) {
  const target = $("run-result");
  target.textContent = "compiling…";
  try {
    const batch = number("run-batch");
    const model = await loadModel(engine, batch, $("run-tune").checked);
    const photo = $("photo-file").files[0];
    if (photo) {
      await classify(model, photo, target);
      return;
    }
    const shape = [batch, ...model.inputShape];
    const input = randomInput(shape.reduce((a, b) => a * b, 1), 7);
    target.textContent = "running…";
    const times = [];
    let result;
    for (let i = 0; i < Math.max(1, number("run-count")); i++) {
      result = await model.run(input, shape);
      times.push(result.milliseconds);
    }
    const preview = Array.from(result.data.slice(0, 8), (v) => v.toFixed(5)).join(", ");
    target.innerHTML = "";
    target.append(table([
      ["input", `[${shape.join(", ")}]`],
      ["output", `[${result.shape.join(", ")}]`],
      ["first values", `${preview}${result.data.length > 8 ? ", …" : ""}`],
      ["time per inference", `${median(times).toFixed(2)} ms (median of ${times.length}; first ${times[0].toFixed(2)} ms)`],
      ["dispatches", `${model.kernels.length}: ${[...new Set(model.kernels)].join(", ")}`],
    ]));
  } catch (error) {
    showError(target, error);
  }
}

async function bench(engine) {
  const target = $("bench-result");
  const progress = $("bench-progress");
  target.textContent = "compiling and tuning…";
  progress.hidden = false;
  progress.value = 0;
  try {
    const options = {
      width: number("bench-width"), depth: number("bench-depth"), batch: number("bench-batch"),
      iters: number("bench-iters"), warmup: number("bench-warmup"), check: $("bench-check").checked,
    };
    const report = JSON.parse(await engine.benchmark(options, (done, total) => {
      progress.max = total;
      progress.value = done;
      target.textContent = `run ${done} of ${total}`;
    }));
    const ms = (value) => (value == null ? "–" : `${value.toFixed(3)} ms`);
    target.innerHTML = "";
    target.append(table([
      ["model", `residual MLP width ${report.width} depth ${report.depth}, batch ${report.batch} (${report.precision})`],
      ["adapter", `${report.adapter.name || "(name withheld)"} (${report.adapter.device_type}, ${report.adapter.backend})`],
      ["latency", `median ${ms(report.median_ms)}, p10 ${ms(report.p10_ms)}, p90 ${ms(report.p90_ms)} (${report.iters} runs after ${report.warmup} warm-up)`],
      ["throughput", `${report.gflops.toFixed(2)} GFLOP/s`],
      ["GPU time", ms(report.gpu_median_ms)],
      ["host encode", ms(report.encode_median_ms)],
      ["dispatches per run", `${report.dispatches_per_run} (${report.kernels.join(", ")})`],
      ["tuning", `measured ${report.tuning.measured}, from the page's cache ${report.tuning.cached}`],
      ["max relative error", report.max_rel_err == null ? "not checked" : `${report.max_rel_err.toExponential(2)} over ${report.checked_rows} rows`],
    ]));
    const raw = document.createElement("pre");
    raw.textContent = JSON.stringify(report, null, 2);
    target.append(raw);
  } catch (error) {
    showError(target, error);
  } finally {
    progress.hidden = true;
  }
}

async function main() {
  await init();
  let engine;
  try {
    engine = await Engine.create();
  } catch (error) {
    $("adapter").className = "error";
    $("adapter").textContent = `No WebGPU adapter: ${error.message}. resgraph needs a browser with WebGPU (Chrome or Edge; Chromium headless needs --enable-unsafe-webgpu).`;
    return;
  }
  $("adapter").textContent = `Adapter: ${engine.adapter}.`;
  const saved = localStorage.getItem("resgraph-tuning");
  if (saved) Engine.loadTuningCache(saved);
  const keepTuning = () => localStorage.setItem("resgraph-tuning", Engine.tuningCache());
  $("run").onclick = async () => { await run(engine); keepTuning(); };
  $("bench").onclick = async () => { await bench(engine); keepTuning(); };
}

main();
