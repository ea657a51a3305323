//! Measuring a compiled model: repeated full runs after warm-up, and the order statistics
//! `resgraph bench` reports. Pure arithmetic apart from the runs themselves.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::exec::CompiledModel;

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
pub fn measure(
    model: &CompiledModel,
    input: &[f32],
    warmup: usize,
    iterations: usize,
    mut progress: impl FnMut(),
) -> Result<BenchResult> {
    for _ in 0..warmup {
        model.run(input)?;
    }
    let mut latencies = Vec::with_capacity(iterations);
    let mut encodes = Vec::with_capacity(iterations);
    let mut gpu_times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let (_, profile) = model.run_profiled(input)?;
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

/// The largest relative error of any row: `max_r ‖out_r − ref_r‖ / ‖ref_r‖`, infinite for NaN.
pub fn max_row_relative_error(output: &[f32], reference: &[f64], width: usize) -> f64 {
    output
        .chunks(width)
        .zip(reference.chunks(width))
        .map(|(out, reference)| crate::reference::relative_error(out, reference))
        .fold(0.0, f64::max)
}
