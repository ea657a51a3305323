//! The `resgraph` command line.

use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use resgraph::bench::{BenchResult, max_row_relative_error, measure};
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::{
    AdapterIdentity, AdapterOptions, AdapterReport, GpuContext, choose_adapter, create_instance,
    enumerate_adapters, parse_backends,
};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::reference::forward_f64;

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
    /// Benchmark a synthetic residual MLP (PyTorch Linear initialisation, fixed seed).
    Bench(BenchArgs),
}

/// Storage precision of weights and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Precision {
    /// 32-bit floats throughout.
    F32,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Width of every block.
    #[arg(long, default_value_t = 1024)]
    width: usize,
    /// Number of residual blocks.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Rows per run.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("resgraph: error: {error}");
            ExitCode::FAILURE
        }
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
    let graph = mlp(MlpShape::square(args.width, args.depth), 1.0, args.seed)?;
    let compile = CompileOptions {
        gpu_timestamps: true,
        ..CompileOptions::new(args.batch)
    };
    let model = CompiledModel::compile(Arc::clone(&context), &graph, &compile)?;
    let input = random_input(args.batch * args.width, args.seed.wrapping_add(1));

    let max_rel_err = if args.check {
        let output = model.run(&input)?;
        let reference = forward_f64(&graph, &input, args.batch);
        Some(max_row_relative_error(
            &output,
            &reference,
            model.output_width(),
        ))
    } else {
        None
    };

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
    let result = measure(&model, &input, args.warmup, args.iters, || progress.inc(1))?;
    progress.finish_and_clear();

    let flops = graph.flops_per_row() as f64 * args.batch as f64;
    let gflops = flops / result.latency.median.as_secs_f64() / 1e9;
    let info = context.adapter_info();
    if args.json {
        let mut object = serde_json::json!({
            "adapter": {
                "name": info.name,
                "backend": info.backend.to_str(),
                "device_type": format!("{:?}", info.device_type),
                "driver": format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            },
            "precision": "f32",
            "width": args.width,
            "depth": args.depth,
            "batch": args.batch,
            "iters": result.iterations,
            "warmup": args.warmup,
            "median_ms": millis(result.latency.median),
            "p10_ms": millis(result.latency.p10),
            "p90_ms": millis(result.latency.p90),
            "min_ms": millis(result.latency.min),
            "max_ms": millis(result.latency.max),
            "gflops": gflops,
            "gpu_median_ms": result.gpu.map(|gpu| millis(gpu.median)),
            "encode_median_ms": millis(result.encode.median),
            "dispatches_per_run": model.dispatches_per_run(),
            "kernels": kernel_summary(&model),
            "activation_bytes": model.activation_bytes(),
            "weight_bytes": model.weight_bytes(),
            "flops_per_run": flops,
        });
        if let Some(error) = max_rel_err {
            object["max_rel_err"] = serde_json::json!(error);
        }
        println!("{object}");
    } else {
        print_bench_table(args, &model, &result, gflops, max_rel_err, &context);
    }
    match max_rel_err {
        Some(error) if error.is_nan() || error > 1e-5 => Err(resgraph::Error::CheckFailed {
            max_rel_err: error,
            tolerance: 1e-5,
        }),
        _ => Ok(()),
    }
}

/// The distinct kernels a model runs, in first-use order.
fn kernel_summary(model: &CompiledModel) -> Vec<&'static str> {
    let mut kernels: Vec<&'static str> = Vec::new();
    for kernel in model.step_kernels() {
        if !kernels.contains(&kernel) {
            kernels.push(kernel);
        }
    }
    kernels
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn print_bench_table(
    args: &BenchArgs,
    model: &CompiledModel,
    result: &BenchResult,
    gflops: f64,
    max_rel_err: Option<f64>,
    context: &GpuContext,
) {
    let info = context.adapter_info();
    println!(
        "resgraph bench: residual MLP width {} depth {} batch {} (f32), {} timed runs after {} warm-up",
        args.width, args.depth, args.batch, result.iterations, args.warmup
    );
    println!(
        "adapter: {} ({:?}, {} {})",
        info.name, info.backend, info.driver, info.driver_info
    );
    if let Some(error) = max_rel_err {
        let verdict = if error <= 1e-5 { "ok" } else { "FAILED" };
        println!(
            "check: max relative error vs f64 reference {error:.2e} (tolerance 1e-5) {verdict}"
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
            kernel_summary(model).join(", ")
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
