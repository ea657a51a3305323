//! The `resgraph` command line.

use std::process::ExitCode;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use resgraph::bench::{
    BenchResult, BenchSetup, check_rows, distinct_kernels, measure, reference_error, report_json,
};
use resgraph::exec::{CompileOptions, CompiledModel, Tuning};
use resgraph::gpu::context::{
    AdapterIdentity, AdapterOptions, AdapterReport, GpuContext, choose_adapter, create_instance,
    enumerate_adapters, parse_backends,
};
use resgraph::graph::layout::{model_input, model_output};
use resgraph::graph::synthetic::{MlpShape, ResNetArch, mlp, random_input, resnet};

/// Residual networks on any GPU.
#[derive(Parser, Debug)]
#[command(name = "resgraph", version, about)]
struct Cli {
    /// Run on the adapter whose name contains this text (case-insensitive).
    #[arg(long, global = true, env = "RESGRAPH_ADAPTER")]
    adapter: Option<String>,

    /// Search only these backends, comma-separated: vulkan, metal, dx12, gl.
    #[arg(long, global = true, env = "WGPU_BACKEND")]
    backend: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every adapter wgpu finds, what it can do, and which one resgraph would pick.
    Info,
    /// Benchmark a synthetic residual MLP (PyTorch Linear initialisation, fixed seed), or a model
    /// file with `--model`.
    Bench(BenchArgs),
    /// Run a model (.onnx or .safetensors) on a float32 .npy input and write a float32 .npy output.
    Run(RunArgs),
    /// Classify images (PNG, JPEG) with an image classifier such as a torchvision ResNet:
    /// torchvision's ImageNet evaluation preprocessing, then each image's top classes.
    Classify(ClassifyArgs),
    /// Describe a model: layers, shapes, parameter count, FLOPs per sample.
    Inspect {
        /// The model file (.onnx or .safetensors).
        model: PathBuf,
    },
    /// Choose every layer's kernel by measurement on this adapter, fill the tuning cache, and
    /// print the choices (takes the same model options as `bench`).
    Tune(BenchArgs),
    /// Convert an ONNX model to resgraph's safetensors format.
    Convert {
        /// The ONNX model.
        input: PathBuf,
        /// The safetensors file to write (atomically).
        output: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The model file (.onnx or .safetensors).
    model: PathBuf,
    /// float32 .npy input of shape [batch, in] or [in], or for an image model [batch, channels,
    /// height, width] or [channels, height, width] (NCHW, as PyTorch).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the float32 .npy output (replaced atomically).
    #[arg(long)]
    output: PathBuf,
    /// Storage precision.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

#[derive(clap::Args, Debug)]
struct ClassifyArgs {
    /// The model file (.onnx or .safetensors), taking [batch, 3, height, width] RGB images and
    /// giving one logit per class.
    model: PathBuf,
    /// The images (PNG or JPEG; other colour types are converted to RGB, alpha dropped).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// How many classes to print for each image.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    top: usize,
    /// The shorter side's length after resizing, before the centre crop to the model's input
    /// size [default: torchvision's proportion, 256 for a 224 × 224 model].
    #[arg(long, value_parser = at_least_one)]
    resize: Option<usize>,
    /// Class names, one a line, in the order of the model's outputs [default: ImageNet's 1000
    /// classes for a model with 1000 outputs, else class numbers only].
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Images per run on the GPU.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    batch: usize,
    /// Print one JSON object a line per image (image, classes with index, label and probability)
    /// instead of the table.
    #[arg(long)]
    json: bool,
    /// Storage precision.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

/// Storage precision of weights and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Precision {
    /// 32-bit floats throughout.
    F32,
    /// 16-bit float storage, f32 arithmetic; needs the adapter's `shader-f16`.
    F16,
    /// f16 where the adapter has `shader-f16`, else f32.
    Auto,
}

impl Precision {
    /// The storage precision to use on `context`'s device.
    fn resolve(self, context: &GpuContext) -> resgraph::precision::Precision {
        use resgraph::precision::Precision as Storage;
        match self {
            Precision::F32 => Storage::F32,
            Precision::F16 => Storage::F16,
            Precision::Auto if context.features().contains(wgpu::Features::SHADER_F16) => {
                Storage::F16
            }
            Precision::Auto => Storage::F32,
        }
    }
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Width of every block of the synthetic MLP.
    #[arg(long, default_value_t = 1024, value_parser = at_least_one, conflicts_with_all = ["model", "arch"])]
    width: usize,
    /// Number of residual blocks of the synthetic MLP.
    #[arg(long, default_value_t = 8, value_parser = at_least_one, conflicts_with_all = ["model", "arch"])]
    depth: usize,
    /// Rows per run.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    iters: usize,
    /// Untimed runs first (pipelines, caches, clocks).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Storage precision.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Compare the output with the f64 CPU reference first.
    #[arg(long)]
    check: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Seed of the weights and the input.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Benchmark this model file (.onnx or .safetensors) instead of the synthetic MLP; its input
    /// width replaces --width and --depth.
    #[arg(long, conflicts_with = "arch")]
    model: Option<PathBuf>,
    /// Benchmark a synthetic torchvision ResNet (He initialisation, batch norm folded, fixed
    /// seed) instead of the MLP: resnet18, resnet34, resnet50 or resnet101.
    #[arg(long, value_parser = parse_arch)]
    arch: Option<ResNetArch>,
    /// The ResNet's square input size in pixels (with --arch).
    #[arg(long, default_value_t = 224, requires = "arch")]
    image: usize,
    /// The ResNet's classes (with --arch).
    #[arg(long, default_value_t = 1000, requires = "arch")]
    classes: usize,
    /// Choose kernels by fixed rules instead of by measurement (and the tuning cache).
    #[arg(long)]
    no_tune: bool,
    /// Milliseconds the tuner may spend per layer shape searching the tiled GEMM family's
    /// points (0 leaves the family out).
    #[arg(long, default_value_t = resgraph::tune::DEFAULT_TILED_SEARCH.as_millis() as u64)]
    tiled_search_ms: u64,
}

/// Loads a model file; an error about the graph it describes (which names the node) also names
/// the file, for a user who passes several.
fn load_model(path: &std::path::Path) -> resgraph::Result<resgraph::Graph> {
    resgraph::model::load_model(path).map_err(|error| match error {
        resgraph::Error::GraphShape { .. }
        | resgraph::Error::InvalidGraph { .. }
        | resgraph::Error::ZeroSized { .. }
        | resgraph::Error::ShapeMismatch { .. } => resgraph::Error::Model {
            path: path.display().to_string(),
            reason: error.to_string(),
        },
        other => other,
    })
}

/// Parses a count that must be at least 1 (`--iters 0` would time nothing).
fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(value) => Ok(value),
        Err(error) => Err(format!("{error}")),
    }
}

/// Parses `--arch`, naming the architectures resgraph knows when the name is not one of them.
fn parse_arch(name: &str) -> std::result::Result<ResNetArch, String> {
    ResNetArch::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = ResNetArch::ALL.iter().map(|arch| arch.name()).collect();
        format!(
            "unknown architecture {name:?}; expected one of {}",
            known.join(", ")
        )
    })
}

/// The network `bench` and `tune` run: a model file, a synthetic ResNet, or the synthetic MLP.
/// A synthetic model's sizes are checked against the device's limits and the host's memory
/// before any of its weights are drawn, so that a huge `--width` or `--classes` is a clear error
/// rather than an allocation failure.
fn bench_graph(args: &BenchArgs, context: &GpuContext) -> resgraph::Result<resgraph::Graph> {
    match (&args.model, args.arch) {
        (Some(path), _) => load_model(path),
        (None, Some(arch)) => {
            // The convolutions' weights do not grow with any argument; the classifier does.
            let features: u64 = if arch.bottleneck() { 2048 } else { 512 };
            let head = (args.classes as u64).checked_mul(features);
            let what = format!("the {}-class classifier of {}", args.classes, arch.name());
            check_synthetic_weights(context, &what, head, head)?;
            resnet(arch, args.image, args.classes, args.seed)
        }
        (None, None) => {
            let shape = MlpShape::square(args.width, args.depth);
            let what = format!(
                "a residual MLP of width {} and depth {}",
                args.width, args.depth
            );
            check_synthetic_weights(
                context,
                &what,
                shape.largest_layer_weights(),
                shape.parameter_count(),
            )?;
            mlp(shape, 1.0, args.seed)
        }
    }
}

/// Refuses a synthetic model whose largest layer (`largest_layer` weights) would not fit one
/// device buffer, or whose `parameters` (f32 on the host while they are drawn and uploaded)
/// would not fit the host's available memory. `None` stands for a count that overflowed.
fn check_synthetic_weights(
    context: &GpuContext,
    what: &str,
    largest_layer: Option<u64>,
    parameters: Option<u64>,
) -> resgraph::Result<()> {
    let bytes = |count: Option<u64>| {
        count
            .and_then(|count| count.checked_mul(4))
            .unwrap_or(u64::MAX)
    };
    resgraph::gpu::buffers::check_storage_size(
        context,
        &format!("the largest layer's weights of {what}"),
        bytes(largest_layer),
    )?;
    let needed = bytes(parameters);
    if let Some(available) = resgraph::host::available_memory()
        && needed > available
    {
        return Err(resgraph::Error::HostMemory {
            what: format!("the weights of {what}"),
            requested: needed,
            available,
        });
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kept until the process ends: the folder the display probe is pointed at.
    let runtime_dir = quiet_display_probe();
    remove_partial_outputs_on_termination(runtime_dir.as_ref().map(|dir| dir.path().to_path_buf()));
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("resgraph: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Mesa's drivers probe for a Wayland display while wgpu enumerates adapters, and libwayland
/// prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." when that variable
/// is unset: noise on every command on a headless machine. Where it is unset, it is pointed at a
/// private empty folder (mode 0700, removed when the returned guard drops), where the probe
/// finds no display and says nothing.
fn quiet_display_probe() -> Option<tempfile::TempDir> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|dir| !dir.is_empty()) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("resgraph-runtime-")
        .tempdir()
        .ok()?;
    // SAFETY: this runs first in `main`, before any thread exists, so nothing can read the
    // environment while it changes (the reason `set_var` is unsafe).
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path()) };
    Some(dir)
}

/// On SIGINT, SIGTERM or SIGHUP, removes the temporary file of an output being written (the
/// output itself is left as it was) and the private runtime folder, if one was made, and exits
/// with status 130, as an interrupted tool does (exiting skips the folder guard's drop).
fn remove_partial_outputs_on_termination(runtime_dir: Option<std::path::PathBuf>) {
    let installed = ctrlc::set_handler(move || {
        resgraph::model::remove_unfinished_output_files();
        if let Some(dir) = &runtime_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
    if let Err(error) = installed {
        eprintln!("resgraph: warning: no handler for interruptions ({error})");
    }
}

fn run(cli: &Cli) -> resgraph::Result<()> {
    let mut options = AdapterOptions::from_env()?;
    if let Some(backend) = &cli.backend {
        options.backends = parse_backends(backend)?;
    }
    if let Some(adapter) = &cli.adapter {
        options.name_contains = Some(adapter.clone());
    }
    match &cli.command {
        Command::Info => info(&options),
        Command::Bench(args) => bench(&options, args),
        Command::Tune(args) => tune(&options, args),
        Command::Run(args) => run_model(&options, args),
        Command::Classify(args) => classify(&options, args),
        Command::Inspect { model } => inspect(model),
        Command::Convert { input, output } => convert(input, output),
    }
}

fn info(options: &AdapterOptions) -> resgraph::Result<()> {
    let instance = create_instance(options.backends);
    let adapters = enumerate_adapters(&instance, options.backends);
    let reports: Vec<AdapterReport> = adapters.iter().map(AdapterReport::of).collect();
    let identities: Vec<AdapterIdentity> = reports
        .iter()
        .map(|report| AdapterIdentity::from(&report.info))
        .collect();
    let chosen = choose_adapter(&identities, options);
    println!(
        "resgraph {}: {} adapter(s) found",
        env!("CARGO_PKG_VERSION"),
        reports.len()
    );
    for (index, report) in reports.iter().enumerate() {
        let marker = if matches!(chosen, Ok(pick) if pick == index) {
            "  <- resgraph uses this one"
        } else {
            ""
        };
        let info = &report.info;
        println!();
        println!("[{index}] {}{marker}", info.name);
        println!("    backend        {:?}", info.backend);
        println!("    device type    {:?}", info.device_type);
        println!("    driver         {} {}", info.driver, info.driver_info);
        println!(
            "    vendor/device  {:#06x}/{:#06x}",
            info.vendor, info.device
        );
        println!("    shader-f16     {}", yes_no(report.shader_f16));
        println!("    subgroups      {}", yes_no(report.subgroups));
        println!("    timestamps     {}", yes_no(report.timestamps));
        if report.cooperative_matrix.is_empty() {
            println!("    coop. matrix   no");
        } else {
            println!(
                "    coop. matrix   {}",
                report.cooperative_matrix.join(", ")
            );
        }
        let limits = &report.limits;
        println!(
            "    max storage binding    {} MiB",
            limits.max_storage_buffer_binding_size >> 20
        );
        println!(
            "    max buffer size        {} MiB",
            limits.max_buffer_size >> 20
        );
        println!(
            "    max uniform binding    {} KiB",
            limits.max_uniform_buffer_binding_size >> 10
        );
        println!(
            "    workgroup storage      {} KiB",
            limits.max_compute_workgroup_storage_size >> 10
        );
        println!(
            "    invocations/workgroup  {}",
            limits.max_compute_invocations_per_workgroup
        );
        println!(
            "    workgroups/dimension   {}",
            limits.max_compute_workgroups_per_dimension
        );
        println!(
            "    storage buffers/stage  {}",
            limits.max_storage_buffers_per_shader_stage
        );
    }
    println!();
    match chosen {
        Ok(pick) => {
            println!("resgraph would run on [{pick}] {}", reports[pick].info.name);
            Ok(())
        }
        Err(error) => Err(error),
    }
}

fn bench(options: &AdapterOptions, args: &BenchArgs) -> resgraph::Result<()> {
    let context = Arc::new(GpuContext::new(options)?);
    let graph = bench_graph(args, &context)?;
    let precision = args.precision.resolve(&context);
    let compile = CompileOptions {
        gpu_timestamps: true,
        precision,
        tuning: if args.no_tune {
            Tuning::Heuristic
        } else {
            Tuning::Measure
        },
        tiled_search: std::time::Duration::from_millis(args.tiled_search_ms),
        ..CompileOptions::new(args.batch)
    };
    let model = CompiledModel::compile(Arc::clone(&context), &graph, &compile)?;
    warn_if_unsaved(model.tuning_report());
    if !args.json && !args.no_tune {
        println!("{}", tuning_summary(model.tuning_report()));
    }
    // The compile checked the batch's activations against the device, so this cannot overflow;
    // a user's number is multiplied checked all the same.
    let input_len = args.batch.checked_mul(graph.input_width()).ok_or_else(|| {
        resgraph::Error::InvalidSetting {
            name: "--batch",
            value: args.batch.to_string(),
            expected: "a batch whose input (batch × input width values) fits in memory",
        }
    })?;
    let input = random_input(input_len, args.seed.wrapping_add(1));

    let checked_rows = check_rows(args.batch);
    let max_rel_err = if args.check {
        let output = model.run(&input)?;
        Some(reference_error(&graph, &input, &output, &checked_rows))
    } else {
        None
    };
    let result = measure_with_progress(&model, &input, args)?;

    let flops = graph.flops_per_row() as f64 * args.batch as f64;
    let gflops = flops / result.latency.median.as_secs_f64() / 1e9;
    if args.json {
        let setup = BenchSetup {
            model: args.model.as_ref().map(|path| path.display().to_string()),
            arch: args.arch.map(ResNetArch::name),
            image: args.arch.map(|_| args.image),
            depth: (args.model.is_none() && args.arch.is_none()).then_some(args.depth),
            batch: args.batch,
            warmup: args.warmup,
        };
        let check = max_rel_err.map(|error| (error, checked_rows.len()));
        let object = report_json(&graph, &model, &setup, &result, check);
        println!("{object}");
    } else {
        let title = match (&args.model, args.arch) {
            (Some(path), _) => format!(
                "model {} (input {}, {} parameters)",
                path.display(),
                graph.input_shape().describe(),
                graph.parameter_count()
            ),
            (None, Some(arch)) => format!(
                "{} at {}x{} ({} classes, synthetic weights)",
                arch.name(),
                args.image,
                args.image,
                args.classes
            ),
            (None, None) => format!("residual MLP width {} depth {}", args.width, args.depth),
        };
        print_bench_table(&title, args, &model, &result, gflops, max_rel_err, &context);
    }
    let tolerance = precision.tolerance();
    match max_rel_err {
        Some(error) if error.is_nan() || error > tolerance => Err(resgraph::Error::CheckFailed {
            max_rel_err: error,
            tolerance,
        }),
        _ => Ok(()),
    }
}

/// Times the model's runs as `args` say, with a progress bar unless the output is JSON.
fn measure_with_progress(
    model: &CompiledModel,
    input: &[f32],
    args: &BenchArgs,
) -> resgraph::Result<BenchResult> {
    let progress = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.iters.max(1) as u64)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} runs {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_prefix("bench");
    let result = measure(model, input, args.warmup, args.iters, || progress.inc(1))?;
    progress.finish_and_clear();
    Ok(result)
}

/// One line on what tuning did: measured now, or every choice from the cache.
fn tuning_summary(report: &resgraph::tune::TuningReport) -> String {
    let cache = report
        .cache_path
        .as_ref()
        .map_or("no cache file".to_string(), |path| {
            path.display().to_string()
        });
    if report.measured == 0 {
        format!(
            "tuning: all {} shape(s) (layers and residual blocks) from the cache ({cache}); nothing re-tuned",
            report.cached
        )
    } else if report.save_error.is_some() {
        format!(
            "tuning: measured {} shape(s) (layers and residual blocks), {} from the cache; choices not saved",
            report.measured, report.cached
        )
    } else {
        format!(
            "tuning: measured {} shape(s) (layers and residual blocks), {} from the cache; choices saved to {cache}",
            report.measured, report.cached
        )
    }
}

/// Warns, on stderr, that the tuning choices could not be saved; the command goes on.
fn warn_if_unsaved(report: &resgraph::tune::TuningReport) {
    if let Some(error) = &report.save_error {
        eprintln!(
            "resgraph: warning: the tuning choices could not be saved ({error}); they will be \
             measured again next time"
        );
    }
}

fn tune(options: &AdapterOptions, args: &BenchArgs) -> resgraph::Result<()> {
    let context = Arc::new(GpuContext::new(options)?);
    let graph = bench_graph(args, &context)?;
    let compile = CompileOptions {
        precision: args.precision.resolve(&context),
        tuning: Tuning::Measure,
        tiled_search: std::time::Duration::from_millis(args.tiled_search_ms),
        ..CompileOptions::new(args.batch)
    };
    let model = CompiledModel::compile(Arc::clone(&context), &graph, &compile)?;
    let report = model.tuning_report();
    warn_if_unsaved(report);
    println!(
        "adapter: {} ({:?})",
        context.adapter_info().name,
        context.adapter_info().backend
    );
    println!("{}", tuning_summary(report));
    for shape in &report.shapes {
        let labels: Vec<(String, std::time::Duration)> = shape
            .measured
            .iter()
            .map(|(candidate, time)| (candidate.label(), *time))
            .collect();
        let times = measured_times(labels.iter().map(|(label, time)| (label.as_str(), *time)));
        println!(
            "  {} -> {}  {times} [{}]",
            shape.key,
            shape.choice.label(),
            shape.clock
        );
        if let Some(search) = &shape.tiled_search {
            println!("    {search}");
        }
        for (candidate, why) in &shape.rejected {
            println!("    {} left out: {why}", candidate.label());
        }
    }
    for block in &report.blocks {
        let times = measured_times(block.measured.iter().map(|(f, t)| (f.name(), *t)));
        println!(
            "  {} -> {}  {times} [{}]",
            block.key,
            block.form.name(),
            block.clock
        );
        if let Some(why) = &block.rejected {
            println!("    residual_block left out: {why}");
        }
    }
    Ok(())
}

/// What `tune` prints for one shape: each candidate's median time, or `(cached)`.
fn measured_times<'a>(measured: impl Iterator<Item = (&'a str, std::time::Duration)>) -> String {
    let times: Vec<String> = measured
        .map(|(name, time)| format!("{name} {:.3} ms", millis(time)))
        .collect();
    if times.is_empty() {
        "(cached)".to_string()
    } else {
        times.join(", ")
    }
}

fn run_model(options: &AdapterOptions, args: &RunArgs) -> resgraph::Result<()> {
    let graph = load_model(&args.model)?;
    let array = resgraph::model::npy::read_npy(&args.input)?;
    let input = model_input(graph.input_shape(), &array.shape, array.data).map_err(|reason| {
        resgraph::Error::Npy {
            path: args.input.display().to_string(),
            reason,
        }
    })?;
    let context = Arc::new(GpuContext::new(options)?);
    let compile = CompileOptions {
        precision: args.precision.resolve(&context),
        ..CompileOptions::new(input.batch)
    };
    let model = CompiledModel::compile(context, &graph, &compile)?;
    let output = model.run(&input.values)?;
    let (shape, output) = model_output(graph.output_shape(), &input, output);
    resgraph::model::npy::write_npy_atomically(&args.output, &shape, &output)
}

fn classify(options: &AdapterOptions, args: &ClassifyArgs) -> resgraph::Result<()> {
    use resgraph::preprocess::{ClassifierShape, softmax, top_k};

    let graph = load_model(&args.model)?;
    let model_error = |reason: String| resgraph::Error::Model {
        path: args.model.display().to_string(),
        reason,
    };
    let shape = ClassifierShape::of(&graph).map_err(model_error)?;
    let (height, width, classes) = (shape.height, shape.width, shape.classes);
    let labels = class_labels(args.labels.as_deref(), shape)?;
    let mut transform = shape.transform();
    if let Some(resize) = args.resize {
        transform.resize = resize;
    }

    let context = Arc::new(GpuContext::new(options)?);
    let batch = args.batch.min(args.images.len());
    let compile = CompileOptions {
        precision: args.precision.resolve(&context),
        ..CompileOptions::new(batch)
    };
    let model = CompiledModel::compile(context, &graph, &compile)?;
    // Images are decoded a batch at a time, so that a thousand photos never sit in memory at
    // once; each batch's classes are printed before the next is read.
    for paths in args.images.chunks(batch) {
        let mut values = Vec::with_capacity(paths.len() * 3 * height * width);
        for path in paths {
            values.extend(transform.apply(&decode_image(path)?)?);
        }
        let input = model_input(
            graph.input_shape(),
            &[paths.len(), 3, height, width],
            values,
        )
        .map_err(model_error)?;
        let output = model.run(&input.values)?;
        let (_, logits) = model_output(graph.output_shape(), &input, output);
        for (path, logits) in paths.iter().zip(logits.chunks(classes)) {
            let ranked = top_k(&softmax(logits), args.top);
            let label = |class: usize| labels.as_ref().map(|labels| labels[class].as_str());
            if args.json {
                let classes: Vec<serde_json::Value> = ranked
                    .iter()
                    .map(|&(class, probability)| {
                        serde_json::json!({
                            "class": class,
                            "label": label(class),
                            "probability": probability,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "image": path.display().to_string(), "classes": classes })
                );
            } else {
                println!("{}", path.display());
                for (class, probability) in ranked {
                    let percent = format!("{:.2}%", probability * 100.0);
                    match label(class) {
                        Some(label) => println!("  {percent:>7}  {class:>4}  {label}"),
                        None => println!("  {percent:>7}  {class:>4}"),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The class names for a classifier of `shape`: the lines of `path`, which must be one per class;
/// without a file, ImageNet's for a 1000-class model, else none.
fn class_labels(
    path: Option<&Path>,
    shape: resgraph::preprocess::ClassifierShape,
) -> resgraph::Result<Option<Vec<String>>> {
    let classes = shape.classes;
    let Some(path) = path else {
        return Ok(shape
            .default_labels()
            .map(|labels| labels.into_iter().map(str::to_string).collect()));
    };
    let text = std::fs::read_to_string(path).map_err(|source| resgraph::Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let labels: Vec<String> = text.lines().map(|line| line.trim().to_string()).collect();
    if labels.len() != classes {
        return Err(resgraph::Error::Model {
            path: path.display().to_string(),
            reason: format!(
                "{} class names, one a line, where the model has {classes} classes",
                labels.len()
            ),
        });
    }
    Ok(Some(labels))
}

/// The image at `path` as 8-bit RGB: PNG or JPEG by its contents, other colour types converted
/// (grey repeated, alpha dropped, 16 bits rounded to 8), as Pillow's `convert("RGB")` does.
fn decode_image(path: &Path) -> resgraph::Result<resgraph::preprocess::RgbImage> {
    let image_error = |reason: String| resgraph::Error::Image {
        path: path.display().to_string(),
        reason,
    };
    let reader = image::ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .map_err(|source| resgraph::Error::Io {
            path: path.display().to_string(),
            source,
        })?;
    if reader.format().is_none() {
        return Err(image_error(
            "not a PNG or JPEG image (its first bytes are neither's signature)".to_string(),
        ));
    }
    let rgb = reader
        .decode()
        .map_err(|error| image_error(format!("cannot be decoded: {error}")))?
        .into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    resgraph::preprocess::RgbImage::new(width, height, rgb.into_raw())
        .map_err(|error| image_error(error.to_string()))
}

fn inspect(path: &Path) -> resgraph::Result<()> {
    use resgraph::graph::Op;
    let graph = load_model(path)?;
    println!("model {}", path.display());
    println!(
        "  input width {}, output width {}",
        graph.input_width(),
        graph.output_width()
    );
    println!();
    println!(
        "  {:<4} {:<12} {:<32} {:>16} {:>12} {:>14}",
        "#", "op", "name", "output", "parameters", "FLOPs/sample"
    );
    for (index, node) in graph.nodes().iter().enumerate() {
        let (op, parameters) = match &node.op {
            Op::Input => ("input", 0),
            Op::Linear { params, .. } => ("linear", params.parameter_count()),
            Op::Relu { .. } => ("relu", 0),
            Op::Add { .. } => ("add", 0),
            Op::Conv2d { params, .. } => ("conv2d", params.parameter_count()),
            Op::MaxPool2d { .. } => ("max_pool2d", 0),
            Op::AvgPool2d { .. } => ("avg_pool2d", 0),
            Op::GlobalAvgPool { .. } => ("global_pool", 0),
            Op::Flatten { .. } => ("flatten", 0),
        };
        let parameters = if parameters == 0 {
            String::new()
        } else {
            parameters.to_string()
        };
        let flops = match node.flops() {
            0 => String::new(),
            flops => flops.to_string(),
        };
        println!(
            "  {index:<4} {op:<12} {:<32} {:>16} {parameters:>12} {flops:>14}",
            node.name,
            format!("[B, {}]", &node.shape.describe()[1..].trim_end_matches(']')),
        );
    }
    let plan = resgraph::plan::Plan::new(&graph)?;
    println!();
    println!("  parameters          {}", graph.parameter_count());
    println!("  FLOPs per sample    {}", graph.flops_per_row());
    println!(
        "  dispatches per run  {} (after fusion)",
        plan.dispatch_count()
    );
    Ok(())
}

fn convert(input: &Path, output: &Path) -> resgraph::Result<()> {
    // convert writes resgraph's safetensors format; safetensors bytes under another format's
    // name (out.onnx) would mislead every tool that reads the name. A name without an extension
    // (a device, a pipe) is the user's choice.
    if let Some(extension) = output.extension()
        && extension != "safetensors"
    {
        return Err(resgraph::Error::Io {
            path: output.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "convert writes resgraph's safetensors format, not .{}; name the output \
                     *.safetensors",
                    extension.to_string_lossy()
                ),
            ),
        });
    }
    let graph = load_model(input)?;
    let bytes = resgraph::model::safetensors::export_safetensors(&graph)?;
    resgraph::model::write_file_atomically(output, &bytes)?;
    println!(
        "wrote {} ({} parameters, {} bytes)",
        output.display(),
        graph.parameter_count(),
        bytes.len()
    );
    Ok(())
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn print_bench_table(
    title: &str,
    args: &BenchArgs,
    model: &CompiledModel,
    result: &BenchResult,
    gflops: f64,
    max_rel_err: Option<f64>,
    context: &GpuContext,
) {
    let info = context.adapter_info();
    println!(
        "resgraph bench: {title}, batch {} ({}), {} timed runs after {} warm-up",
        args.batch,
        model.precision(),
        result.iterations,
        args.warmup
    );
    println!(
        "adapter: {} ({:?}, {} {})",
        info.name, info.backend, info.driver, info.driver_info
    );
    if let Some(error) = max_rel_err {
        let tolerance = model.precision().tolerance();
        let verdict = if error <= tolerance { "ok" } else { "FAILED" };
        println!(
            "check: max relative error vs f64 reference {error:.2e} over {} rows (tolerance {tolerance:.0e}) {verdict}",
            check_rows(args.batch).len()
        );
    }
    println!();
    let row = |name: &str, value: String| println!("  {name:<28} {value}");
    row(
        "latency median (full run)",
        format!("{:.3} ms", millis(result.latency.median)),
    );
    row(
        "latency p10 / p90",
        format!(
            "{:.3} / {:.3} ms",
            millis(result.latency.p10),
            millis(result.latency.p90)
        ),
    );
    row("throughput", format!("{gflops:.2} GFLOP/s"));
    row(
        "GPU time median",
        match &result.gpu {
            Some(gpu) => format!("{:.3} ms (timestamp queries)", millis(gpu.median)),
            None => "n/a (no timestamp queries on this adapter)".to_string(),
        },
    );
    row(
        "host encode median",
        format!("{:.1} us", result.encode.median.as_secs_f64() * 1e6),
    );
    row(
        "dispatches per run",
        format!(
            "{} ({})",
            model.dispatches_per_run(),
            distinct_kernels(model).join(", ")
        ),
    );
    row(
        "activation memory",
        format!(
            "{:.2} MiB",
            model.activation_bytes() as f64 / (1u64 << 20) as f64
        ),
    );
    row(
        "weight memory",
        format!(
            "{:.2} MiB",
            model.weight_bytes() as f64 / (1u64 << 20) as f64
        ),
    );
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}
