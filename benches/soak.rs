//! The full soak (issue 13): one compiled model run 100,000 times, printing host resident
//! memory and the device allocator's bytes every 10,000 runs, and failing if either grows after
//! warm-up or any output differs from the first. `RESGRAPH_BENCH_SMOKE=1` shrinks it to 2,000
//! runs for CI; `RESGRAPH_SOAK_RUNS` sets the count. Not a criterion bench: the quantity is
//! memory over time, not a duration.
//!
//! ```sh
//! cargo bench --bench soak
//! ```

use std::sync::Arc;
use std::time::Instant;

use resgraph::bench::soak;
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::{AdapterOptions, GpuContext};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};

fn main() -> resgraph::Result<()> {
    let smoke = std::env::var_os("RESGRAPH_BENCH_SMOKE").is_some();
    let runs: usize = std::env::var("RESGRAPH_SOAK_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 100_000 });
    let context = Arc::new(GpuContext::new(&AdapterOptions::from_env()?)?);
    let graph = mlp(MlpShape::square(64, 4), 1.0, 1)?;
    let model = CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(8))?;
    let input = random_input(8 * 64, 2);
    println!(
        "soak: residual MLP width 64 depth 4, batch 8, {runs} runs after 1000 warm-up, on {} ({:?})",
        context.adapter_info().name,
        context.adapter_info().backend
    );
    let started = Instant::now();
    let report = soak(&model, &input, 1_000, runs, (runs / 10).max(1))?;
    for sample in &report.samples {
        println!(
            "  after {:>7} runs: host resident {:>12} bytes, device allocated {:>12} bytes",
            sample.runs,
            sample
                .host_resident_bytes
                .map_or("n/a".to_string(), |bytes| bytes.to_string()),
            sample
                .device_allocated_bytes
                .map_or("n/a".to_string(), |bytes| bytes.to_string())
        );
    }
    let elapsed = started.elapsed();
    println!(
        "  {runs} runs in {:.1} s ({:.3} ms per run); host growth {:?} bytes, device growth {:?} \
         bytes, {} runs differing from the first",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / runs as f64,
        report.host_growth(),
        report.device_growth(),
        report.mismatched_runs
    );
    // A few MiB of allocator noise, and nothing per run: 100,000 runs leaking a kilobyte each
    // would grow by 100 MB.
    let host_ok = report.host_growth().is_none_or(|growth| growth <= 4 << 20);
    let device_ok = report.device_growth().is_none_or(|growth| growth == 0);
    if !host_ok || !device_ok || report.mismatched_runs > 0 {
        eprintln!("soak: FAILED (memory grew or an output changed)");
        std::process::exit(1);
    }
    println!("soak: memory flat, every output identical");
    Ok(())
}
