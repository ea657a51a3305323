//! The `resgraph` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use resgraph::gpu::context::{
    AdapterIdentity, AdapterOptions, AdapterReport, choose_adapter, create_instance,
    enumerate_adapters, parse_backends,
};

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
    match cli.command {
        Command::Info => info(&options),
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

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}
