//! Measuring a compiled model: repeated full runs after warm-up, and the order statistics
//! `resgraph bench` reports. Pure arithmetic apart from the runs themselves.

use std::time::Duration;

use web_time::Instant;

use crate::error::Result;
use crate::exec::{CompiledModel, RunProfile};
use crate::graph::Graph;

/// Summary statistics of a set of durations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The median.
    pub median: Duration,
    /// The 10th percentile.
    pub p10: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The fastest.
    pub min: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Summary {
    /// Order statistics of `samples` (nearest-rank percentiles); `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |fraction: f64| {
            let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
            sorted[index]
        };
        let median = if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2
        };
        Some(Summary {
            median,
            p10: rank(0.1),
            p90: rank(0.9),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// Everything one benchmark measured.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Wall time of each full run: input upload, every dispatch, output readback.
    pub latency: Summary,
    /// Host time spent recording each run's command buffer.
    pub encode: Summary,
    /// GPU time of each run's compute pass, where timestamp queries exist.
    pub gpu: Option<Summary>,
    /// Timed runs.
    pub iterations: usize,
}

/// Runs `model` on `input` `warmup` times untimed, then `iterations` times timed, calling
/// `progress` after each timed run.
#[cfg(not(target_arch = "wasm32"))]
pub fn measure(
    model: &CompiledModel,
    input: &[f32],
    warmup: usize,
    iterations: usize,
    progress: impl FnMut(),
) -> Result<BenchResult> {
    pollster::block_on(measure_async(model, input, warmup, iterations, progress))
}

/// As [`measure`], awaiting each run (the web's way; `progress` may update a page).
pub async fn measure_async(
    model: &CompiledModel,
    input: &[f32],
    warmup: usize,
    iterations: usize,
    mut progress: impl FnMut(),
) -> Result<BenchResult> {
    for _ in 0..warmup {
        run_once(model, input).await?;
    }
    let mut latencies = Vec::with_capacity(iterations);
    let mut encodes = Vec::with_capacity(iterations);
    let mut gpu_times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let (_, profile) = run_once(model, input).await?;
        latencies.push(started.elapsed());
        encodes.push(profile.encode);
        if let Some(gpu) = profile.gpu {
            gpu_times.push(gpu);
        }
        progress();
    }
    let (Some(latency), Some(encode)) = (Summary::of(&latencies), Summary::of(&encodes)) else {
        unreachable!("at least one timed run is made");
    };
    Ok(BenchResult {
        latency,
        encode,
        gpu: Summary::of(&gpu_times),
        iterations: latencies.len(),
    })
}

/// One full run: blocking on native, where that is the lowest-latency wait (the device is
/// polled on this thread, with no helper thread to start), awaited on the web.
async fn run_once(model: &CompiledModel, input: &[f32]) -> Result<(Vec<f32>, RunProfile)> {
    #[cfg(not(target_arch = "wasm32"))]
    return model.run_profiled(input);
    #[cfg(target_arch = "wasm32")]
    return model.run_profiled_async(input).await;
}

/// The largest relative error of any row: `max_r ‖out_r − ref_r‖ / ‖ref_r‖`, infinite for NaN.
pub fn max_row_relative_error(output: &[f32], reference: &[f64], width: usize) -> f64 {
    output
        .chunks(width)
        .zip(reference.chunks(width))
        .map(|(out, reference)| crate::reference::relative_error(out, reference))
        .fold(0.0, f64::max)
}

/// One reading of a soak: after `runs` runs, the process's resident memory and the device
/// memory wgpu's allocator holds, where the platform reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoakSample {
    /// Runs completed when the sample was taken.
    pub runs: usize,
    /// Host resident set size in bytes (`None` off Linux).
    pub host_resident_bytes: Option<u64>,
    /// Bytes allocated by the device's memory allocator (`None` on backends without an
    /// allocator report, such as GL).
    pub device_allocated_bytes: Option<u64>,
}

/// What [`soak`] saw.
#[derive(Clone, Debug, PartialEq)]
pub struct SoakReport {
    /// A sample after the warm-up runs, then one every `sample_every` runs, and one at the end.
    pub samples: Vec<SoakSample>,
    /// Runs whose output differed, in any bit, from the first run's.
    pub mismatched_runs: usize,
}

impl SoakReport {
    /// The largest growth of host resident memory over the first sample (after warm-up), in
    /// bytes; `None` where it was not reported.
    pub fn host_growth(&self) -> Option<u64> {
        self.growth(|sample| sample.host_resident_bytes)
    }

    /// The largest growth of device memory over the first sample, in bytes; `None` where it
    /// was not reported.
    pub fn device_growth(&self) -> Option<u64> {
        self.growth(|sample| sample.device_allocated_bytes)
    }

    fn growth(&self, reading: impl Fn(&SoakSample) -> Option<u64>) -> Option<u64> {
        let first = reading(self.samples.first()?)?;
        self.samples
            .iter()
            .filter_map(reading)
            .map(|bytes| bytes.saturating_sub(first))
            .max()
    }
}

/// Runs `model` on `input` `warmup + runs` times, checks every output against the first bit
/// for bit (a compiled model is deterministic), and samples host and device memory after the
/// warm-up and every `sample_every` runs: what a long-running service would see.
#[cfg(not(target_arch = "wasm32"))]
pub fn soak(
    model: &CompiledModel,
    input: &[f32],
    warmup: usize,
    runs: usize,
    sample_every: usize,
) -> Result<SoakReport> {
    let sample = |runs: usize| SoakSample {
        runs,
        host_resident_bytes: crate::host::resident_memory(),
        device_allocated_bytes: model.context().device_allocated_bytes(),
    };
    let first = model.run(input)?;
    let mut mismatched_runs = 0;
    let mut check = |output: Vec<f32>| {
        let same = output.len() == first.len()
            && output
                .iter()
                .zip(&first)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            mismatched_runs += 1;
        }
    };
    for _ in 1..warmup.max(1) {
        check(model.run(input)?);
    }
    let mut samples = vec![sample(0)];
    for run in 1..=runs {
        check(model.run(input)?);
        if run % sample_every.max(1) == 0 || run == runs {
            samples.push(sample(run));
        }
    }
    Ok(SoakReport {
        samples,
        mismatched_runs,
    })
}

/// What a benchmark ran, for its report: the parts of `resgraph bench`'s arguments that name the
/// network (none of them for the synthetic MLP but its depth).
#[derive(Clone, Debug, Default)]
pub struct BenchSetup {
    /// The model file, when one was benchmarked.
    pub model: Option<String>,
    /// The synthetic ResNet's architecture, when one was benchmarked.
    pub arch: Option<&'static str>,
    /// The synthetic ResNet's image size.
    pub image: Option<usize>,
    /// The synthetic MLP's depth.
    pub depth: Option<usize>,
    /// Rows per run.
    pub batch: usize,
    /// Untimed runs first.
    pub warmup: usize,
}

/// The rows `bench --check` compares with the f64 reference: all of a batch up to 64, else the
/// first and last 32.
pub fn check_rows(batch: usize) -> Vec<usize> {
    if batch <= 64 {
        (0..batch).collect()
    } else {
        (0..32).chain(batch - 32..batch).collect()
    }
}

/// The largest relative error of `output`'s rows `rows` against the f64 reference on the same
/// rows of `input`. Rows are independent, so the reference runs on those rows only: the f64
/// forward of a large batch would take minutes.
pub fn reference_error(graph: &Graph, input: &[f32], output: &[f32], rows: &[usize]) -> f64 {
    let (in_width, out_width) = (graph.input_width(), graph.output_width());
    let pick = |values: &[f32], width: usize| -> Vec<f32> {
        rows.iter()
            .flat_map(|&row| values[row * width..(row + 1) * width].iter().copied())
            .collect()
    };
    let reference = crate::reference::forward_f64(graph, &pick(input, in_width), rows.len());
    max_row_relative_error(&pick(output, out_width), &reference, out_width)
}

/// The distinct kernels a model runs, in first-use order.
pub fn distinct_kernels(model: &CompiledModel) -> Vec<String> {
    let mut kernels: Vec<String> = Vec::new();
    for label in model.step_kernel_labels() {
        if !kernels.contains(&label) {
            kernels.push(label);
        }
    }
    kernels
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The JSON object `resgraph bench --json` prints (and the web package's benchmark returns):
/// the adapter, what ran, the latency statistics, GFLOP/s, GPU and encode time, the kernels,
/// what tuning did and memory; with `check`, the largest relative error against the f64
/// reference and the rows checked.
pub fn report_json(
    graph: &Graph,
    model: &CompiledModel,
    setup: &BenchSetup,
    result: &BenchResult,
    check: Option<(f64, usize)>,
) -> serde_json::Value {
    let info = model.context().adapter_info();
    let precision = model.precision();
    let flops = graph.flops_per_row() as f64 * setup.batch as f64;
    let gflops = flops / result.latency.median.as_secs_f64() / 1e9;
    let tuning = model.tuning_report();
    let mut object = serde_json::json!({
        "adapter": {
            "name": info.name,
            "backend": info.backend.to_str(),
            "device_type": format!("{:?}", info.device_type),
            "driver": format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        },
        "precision": precision.name(),
        "tolerance": precision.tolerance(),
        "model": setup.model,
        "width": graph.input_width(),
        "depth": setup.depth,
        "arch": setup.arch,
        "image": setup.image,
        "batch": setup.batch,
        "iters": result.iterations,
        "warmup": setup.warmup,
        "median_ms": millis(result.latency.median),
        "p10_ms": millis(result.latency.p10),
        "p90_ms": millis(result.latency.p90),
        "min_ms": millis(result.latency.min),
        "max_ms": millis(result.latency.max),
        "gflops": gflops,
        "gpu_median_ms": result.gpu.map(|gpu| millis(gpu.median)),
        "encode_median_ms": millis(result.encode.median),
        "dispatches_per_run": model.dispatches_per_run(),
        "kernels": distinct_kernels(model),
        "tuning": {
            "measured": tuning.measured,
            "cached": tuning.cached,
            "cache": tuning.cache_path.as_ref().map(|path| path.display().to_string()),
            "save_error": tuning.save_error,
        },
        "activation_bytes": model.activation_bytes(),
        "weight_bytes": model.weight_bytes(),
        "flops_per_run": flops,
    });
    if let Some((error, rows)) = check {
        object["max_rel_err"] = serde_json::json!(error);
        object["checked_rows"] = serde_json::json!(rows);
    }
    object
}
