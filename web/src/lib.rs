//! resgraph's JavaScript package: the engine on the browser's WebGPU adapter, for a page.
//!
//! ```js
//! import init, { Engine } from "./pkg/resgraph_web.js";
//! await init();
//! const engine = await Engine.create();                      // rejects without WebGPU
//! const model = await engine.loadModel("m.onnx", bytes, null, 8, false);
//! const { data, shape } = await model.run(input, [3, model.inputShape[0]]);
//! const report = JSON.parse(await engine.benchmark({ width: 256, depth: 4, batch: 32 }));
//! const pixels = canvas.getContext("2d").getImageData(0, 0, w, h).data; // a photo, RGBA
//! const { classes } = await resnet.classify(pixels, w, h, 5);   // [{ class, label, probability }]
//! ```
//!
//! Models load from bytes (ONNX, with its external data as a second buffer, or resgraph's
//! safetensors); inputs are a `Float32Array` with a shape, `[batch, width]` for dense models and
//! `[batch, channels, height, width]` (PyTorch's NCHW) for image models, and outputs come back
//! the same way. Every error rejects the promise with a JavaScript `Error` whose message is the
//! one line `resgraph` prints on the command line. The benchmark returns the JSON object that
//! `resgraph bench --json` prints.
//!
//! Built only for `wasm32-unknown-unknown`; `web/build.sh` makes `web/pkg/` with wasm-bindgen.
#![cfg(target_arch = "wasm32")]
// The engine shares a context as an `Arc` (threads share it on native); a page has one thread,
// and wgpu's web types are not `Send`, so here the `Arc` is only a shared handle.
#![allow(clippy::arc_with_non_send_sync)]

use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Float32Array, Function, Object, Promise, Reflect, Uint8Array};
use resgraph::bench::{BenchSetup, check_rows, measure_async, reference_error, report_json};
use resgraph::exec::{CompileOptions, CompiledModel, Tuning};
use resgraph::gpu::context::{AdapterOptions, GpuContext};
use resgraph::graph::Graph;
use resgraph::graph::layout::{model_input, model_output};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::preprocess::{ClassifierShape, RgbImage, softmax, top_k};
use resgraph::tune::TuningCache;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// A JavaScript value as JSON text (`-3`, `"wide"`), for messages about a page's options.
fn describe(value: &JsValue) -> String {
    js_sys::JSON::stringify(value)
        .ok()
        .and_then(|text| text.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// A JavaScript `Error` carrying `error`'s one-line message.
fn js_error(error: impl std::fmt::Display) -> JsValue {
    JsError::new(&error.to_string()).into()
}

/// The browser's WebGPU adapter, opened once; models and benchmarks run on it.
#[wasm_bindgen]
pub struct Engine {
    context: Arc<GpuContext>,
}

#[wasm_bindgen]
impl Engine {
    /// Opens the browser's WebGPU adapter. Resolves to an `Engine`; rejects when the browser
    /// offers no adapter (WebGPU switched off, or a browser without it).
    pub fn create() -> Promise {
        future_to_promise(async move {
            let options = AdapterOptions {
                backends: wgpu::Backends::BROWSER_WEBGPU,
                ..AdapterOptions::default()
            };
            let context = GpuContext::new_async(&options).await.map_err(js_error)?;
            Ok(Engine {
                context: Arc::new(context),
            }
            .into())
        })
    }

    /// The adapter, as far as the browser tells: its name (browsers often withhold it), its
    /// kind and its backend.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        let info = self.context.adapter_info();
        let name = if info.name.is_empty() {
            "WebGPU adapter (name withheld by the browser)"
        } else {
            info.name.as_str()
        };
        format!("{name} ({:?}, {})", info.device_type, info.backend.to_str())
    }

    /// Loads a model from its bytes, an `ArrayBuffer` or a `Uint8Array` (`name` names it in
    /// errors and, by its extension, picks the format: `.onnx` or `.safetensors`, else the
    /// content decides) and compiles it for batches of up to `maxBatch` rows. `externalData` is
    /// an ONNX model's side file (`m.onnx.data`), if it has one, in the same forms. With `tune`,
    /// each layer's kernel is chosen by timing the candidates on this adapter (slower to load;
    /// the choices are kept for the page), else by fixed rules. Resolves to a `Model`.
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(
        &self,
        name: String,
        bytes: JsValue,
        external_data: JsValue,
        max_batch: usize,
        tune: bool,
    ) -> Promise {
        let context = Arc::clone(&self.context);
        future_to_promise(async move {
            let bytes = byte_vector(&bytes, "the model")?;
            let external_data = if external_data.is_undefined() || external_data.is_null() {
                None
            } else {
                Some(byte_vector(&external_data, "the external data")?)
            };
            let graph = resgraph::parse_model_bytes(&name, &bytes, external_data.as_deref())
                .map_err(js_error)?;
            let model = Model::compile(context, graph, max_batch, tune).await?;
            Ok(model.into())
        })
    }

    /// A synthetic residual MLP (`depth` blocks of `width`, PyTorch's `nn.Linear`
    /// initialisation from `seed`), the model `resgraph bench` runs, compiled for batches of up
    /// to `maxBatch` rows with fixed rules. Resolves to a `Model`.
    #[wasm_bindgen(js_name = syntheticMlp)]
    pub fn synthetic_mlp(
        &self,
        width: usize,
        depth: usize,
        max_batch: usize,
        seed: u32,
    ) -> Promise {
        let context = Arc::clone(&self.context);
        future_to_promise(async move {
            let graph = synthetic_graph(width, depth, u64::from(seed))?;
            let model = Model::compile(context, graph, max_batch, false).await?;
            Ok(model.into())
        })
    }

    /// `resgraph bench` in the page: a synthetic residual MLP, compiled with tuning (unless
    /// `tune: false`), run `warmup` times and then `iters` times timed, each run a full one
    /// (upload, every dispatch, readback). `options` may give `width` (1024), `depth` (8),
    /// `batch` (256), `iters` (20), `warmup` (3), `seed` (42), `check` (false: compare with the
    /// f64 reference first) and `tune` (true). `progress(done, total)` is called after each
    /// timed run. Resolves to the JSON text `resgraph bench --json` prints.
    pub fn benchmark(&self, options: JsValue, progress: Option<Function>) -> Promise {
        let context = Arc::clone(&self.context);
        future_to_promise(async move {
            let options = BenchOptions::read(&options)?;
            let report = options.run(context, progress).await?;
            Ok(JsValue::from_str(&report))
        })
    }

    /// The tuning choices this page has measured or loaded, as the cache file's JSON text (to
    /// keep, in `localStorage` say, for the next visit).
    #[wasm_bindgen(js_name = tuningCache)]
    pub fn tuning_cache() -> String {
        TuningCache::session_json()
    }

    /// Adds the choices of a tuning cache's JSON text to this page's; returns how many it
    /// held. Text that is not a cache holds none.
    #[wasm_bindgen(js_name = loadTuningCache)]
    pub fn load_tuning_cache(json: &str) -> usize {
        TuningCache::load_session(json)
    }
}

/// The bytes of an `ArrayBuffer` or of a typed array's view (a `Uint8Array`, say); `what` names
/// the argument in the error for anything else.
fn byte_vector(value: &JsValue, what: &str) -> Result<Vec<u8>, JsValue> {
    if value.is_instance_of::<js_sys::ArrayBuffer>() {
        return Ok(Uint8Array::new(value).to_vec());
    }
    if let Some(view) = value.dyn_ref::<js_sys::Object>()
        && js_sys::ArrayBuffer::is_view(view)
    {
        let view = Reflect::get(value, &"buffer".into())
            .ok()
            .zip(Reflect::get(value, &"byteOffset".into()).ok())
            .zip(Reflect::get(value, &"byteLength".into()).ok());
        if let Some(((buffer, offset), length)) = view
            && let (Some(offset), Some(length)) = (offset.as_f64(), length.as_f64())
        {
            return Ok(Uint8Array::new_with_byte_offset_and_length(
                &buffer,
                offset as u32,
                length as u32,
            )
            .to_vec());
        }
    }
    Err(js_error(format!(
        "{what}: {} is not an ArrayBuffer or a typed array of bytes",
        describe(value)
    )))
}

/// A synthetic residual MLP of `depth` blocks of `width`, as `resgraph bench` builds it.
fn synthetic_graph(width: usize, depth: usize, seed: u64) -> Result<Graph, JsValue> {
    if width == 0 || depth == 0 {
        return Err(js_error(format!(
            "a residual MLP of width {width} and depth {depth}: both must be at least 1"
        )));
    }
    mlp(MlpShape::square(width, depth), 1.0, seed).map_err(js_error)
}

/// Compile options for `max_batch` rows, tuned by measurement or by the rules.
fn compile_options(max_batch: usize, tune: bool) -> CompileOptions {
    CompileOptions {
        gpu_timestamps: true,
        tuning: if tune {
            Tuning::Measure
        } else {
            Tuning::Heuristic
        },
        ..CompileOptions::new(max_batch)
    }
}

/// A compiled model and the graph it came from.
struct Loaded {
    graph: Graph,
    model: CompiledModel,
}

impl Loaded {
    /// Runs the model on `values` (in its own layout) and returns the output with the time of
    /// the whole run in milliseconds (upload, dispatches, readback).
    async fn timed_run(&self, values: &[f32]) -> Result<(Vec<f32>, f64), JsValue> {
        let started = web_time::Instant::now();
        let output = self.model.run_async(values).await.map_err(js_error)?;
        Ok((output, started.elapsed().as_secs_f64() * 1e3))
    }
}

/// A model compiled onto the engine's adapter.
#[wasm_bindgen]
pub struct Model {
    loaded: Rc<Loaded>,
}

impl Model {
    async fn compile(
        context: Arc<GpuContext>,
        graph: Graph,
        max_batch: usize,
        tune: bool,
    ) -> Result<Model, JsValue> {
        let options = compile_options(max_batch, tune);
        let model = CompiledModel::compile_async(context, &graph, &options)
            .await
            .map_err(js_error)?;
        Ok(Model {
            loaded: Rc::new(Loaded { graph, model }),
        })
    }
}

#[wasm_bindgen]
impl Model {
    /// The shape of one input entry: `[width]`, or `[channels, height, width]` for an image
    /// model (PyTorch's NCHW order).
    #[wasm_bindgen(getter, js_name = inputShape)]
    pub fn input_shape(&self) -> Vec<usize> {
        self.loaded.graph.input_shape().torch_dims()
    }

    /// The shape of one output entry.
    #[wasm_bindgen(getter, js_name = outputShape)]
    pub fn output_shape(&self) -> Vec<usize> {
        self.loaded.graph.output_shape().torch_dims()
    }

    /// The largest batch a run may have.
    #[wasm_bindgen(getter, js_name = maxBatch)]
    pub fn max_batch(&self) -> usize {
        self.loaded.model.max_batch()
    }

    /// The kernel of each dispatch, in order.
    #[wasm_bindgen(getter)]
    pub fn kernels(&self) -> Vec<String> {
        self.loaded.model.step_kernel_labels()
    }

    /// Classifies one image, as `resgraph classify` does: `pixels` are its RGBA bytes (`width ×
    /// height × 4`, as a canvas's `getImageData` gives them; alpha is dropped), prepared as
    /// torchvision's ImageNet evaluation transform prepares a Pillow image, for this model's
    /// input size. Resolves to `{ classes: [{ class, label, probability }], milliseconds }`: the
    /// `top` most probable classes (softmax), labelled with ImageNet's names for a 1000-class
    /// model (`label` is null otherwise), and the time of the run.
    pub fn classify(&self, pixels: JsValue, width: usize, height: usize, top: usize) -> Promise {
        let loaded = Rc::clone(&self.loaded);
        let bytes = byte_vector(&pixels, "the image's pixels");
        future_to_promise(async move {
            let graph = &loaded.graph;
            let shape = ClassifierShape::of(graph).map_err(js_error)?;
            let image = RgbImage::from_rgba(width, height, &bytes?).map_err(js_error)?;
            let values = shape.transform().apply(&image).map_err(js_error)?;
            let input = model_input(
                graph.input_shape(),
                &[1, 3, shape.height, shape.width],
                values,
            )
            .map_err(js_error)?;
            let (logits, milliseconds) = loaded.timed_run(&input.values).await?;
            let labels = shape.default_labels();
            let classes = Array::new();
            for (class, probability) in top_k(&softmax(&logits), top) {
                let entry = Object::new();
                Reflect::set(&entry, &"class".into(), &(class as f64).into())?;
                let label = labels
                    .as_ref()
                    .map_or(JsValue::NULL, |labels| labels[class].into());
                Reflect::set(&entry, &"label".into(), &label)?;
                Reflect::set(&entry, &"probability".into(), &probability.into())?;
                classes.push(&entry);
            }
            let result = Object::new();
            Reflect::set(&result, &"classes".into(), &classes)?;
            Reflect::set(&result, &"milliseconds".into(), &milliseconds.into())?;
            Ok(result.into())
        })
    }

    /// Runs the model on `data`, of `shape` (`[batch, ...inputShape]`, or `inputShape` alone
    /// for one entry). Resolves to `{ data: Float32Array, shape: number[], milliseconds }`, the
    /// output in the same form and the time of the whole run (upload, dispatches, readback).
    pub fn run(&self, data: Float32Array, shape: Vec<usize>) -> Promise {
        let loaded = Rc::clone(&self.loaded);
        let values = data.to_vec();
        future_to_promise(async move {
            let graph = &loaded.graph;
            let input = model_input(graph.input_shape(), &shape, values)
                .map_err(|reason| js_error(format!("the input: {reason}")))?;
            let (output, milliseconds) = loaded.timed_run(&input.values).await?;
            let (shape, output) = model_output(graph.output_shape(), &input, output);
            let result = Object::new();
            let shape_array: Array = shape.iter().map(|&dim| JsValue::from(dim as f64)).collect();
            Reflect::set(
                &result,
                &"data".into(),
                &Float32Array::from(output.as_slice()),
            )?;
            Reflect::set(&result, &"shape".into(), &shape_array)?;
            Reflect::set(&result, &"milliseconds".into(), &milliseconds.into())?;
            Ok(result.into())
        })
    }
}

/// What [`Engine::benchmark`] runs, read off the page's options object.
struct BenchOptions {
    width: usize,
    depth: usize,
    batch: usize,
    iters: usize,
    warmup: usize,
    seed: u64,
    check: bool,
    tune: bool,
}

impl BenchOptions {
    /// Reads `options`; a field left out takes `resgraph bench`'s default, and one that is not
    /// a whole number in range (or, for the flags, a boolean) is an error naming it.
    fn read(options: &JsValue) -> Result<Self, JsValue> {
        let field = |name: &str| -> Result<Option<JsValue>, JsValue> {
            if options.is_undefined() || options.is_null() {
                return Ok(None);
            }
            let value = Reflect::get(options, &name.into())?;
            Ok((!value.is_undefined() && !value.is_null()).then_some(value))
        };
        let count = |name: &str, default: usize, at_least: usize| -> Result<usize, JsValue> {
            let Some(value) = field(name)? else {
                return Ok(default);
            };
            match value.as_f64() {
                Some(number)
                    if number.fract() == 0.0
                        && number >= at_least as f64
                        && number <= u32::MAX as f64 =>
                {
                    Ok(number as usize)
                }
                _ => Err(js_error(format!(
                    "benchmark option {name}: {} is not a whole number of at least {at_least}",
                    describe(&value)
                ))),
            }
        };
        let flag = |name: &str, default: bool| -> Result<bool, JsValue> {
            match field(name)? {
                None => Ok(default),
                Some(value) => value.as_bool().ok_or_else(|| {
                    js_error(format!(
                        "benchmark option {name}: {} is not true or false",
                        describe(&value)
                    ))
                }),
            }
        };
        Ok(BenchOptions {
            width: count("width", 1024, 1)?,
            depth: count("depth", 8, 1)?,
            batch: count("batch", 256, 1)?,
            iters: count("iters", 20, 1)?,
            warmup: count("warmup", 3, 0)?,
            seed: count("seed", 42, 0)? as u64,
            check: flag("check", false)?,
            tune: flag("tune", true)?,
        })
    }

    /// Compiles, optionally checks, and measures the synthetic MLP; returns the report's JSON.
    async fn run(
        &self,
        context: Arc<GpuContext>,
        progress: Option<Function>,
    ) -> Result<String, JsValue> {
        let graph = synthetic_graph(self.width, self.depth, self.seed)?;
        let options = compile_options(self.batch, self.tune);
        let model = CompiledModel::compile_async(context, &graph, &options)
            .await
            .map_err(js_error)?;
        let input = random_input(self.batch * graph.input_width(), self.seed.wrapping_add(1));
        let check = if self.check {
            let rows = check_rows(self.batch);
            let output = model.run_async(&input).await.map_err(js_error)?;
            let error = reference_error(&graph, &input, &output, &rows);
            let tolerance = model.precision().tolerance();
            if error.is_nan() || error > tolerance {
                return Err(js_error(resgraph::Error::CheckFailed {
                    max_rel_err: error,
                    tolerance,
                }));
            }
            Some((error, rows.len()))
        } else {
            None
        };
        let total = self.iters;
        let mut done = 0usize;
        let report_progress = || {
            done += 1;
            if let Some(callback) = &progress {
                // A page's progress callback that throws does not stop the benchmark.
                let _ = callback.call2(&JsValue::NULL, &done.into(), &total.into());
            }
        };
        let result = measure_async(&model, &input, self.warmup, self.iters, report_progress)
            .await
            .map_err(js_error)?;
        let setup = BenchSetup {
            depth: Some(self.depth),
            batch: self.batch,
            warmup: self.warmup,
            ..BenchSetup::default()
        };
        Ok(report_json(&graph, &model, &setup, &result, check).to_string())
    }
}
