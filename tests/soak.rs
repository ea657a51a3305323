//! A compiled model run many times keeps host and device memory flat and gives the same bits
//! every time; one model shared by eight threads running different batch sizes gives every
//! thread its own right answer, and async runs from many threads at once share one thread that
//! polls the device, which ends with the context. `benches/soak.rs` runs the full 100,000-run soak; this is its
//! CI-sized version (`RESGRAPH_SOAK_RUNS` raises the count).

mod common;

use std::sync::Arc;

use resgraph::bench::soak;
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::reference::{forward_f64, relative_error};

/// Host memory a few thousand runs may gain after warm-up: allocator noise, not a leak (a leak
/// of one kilobyte per run would show 3 MiB at the CI count and 100 MB in the bench).
const HOST_GROWTH_ALLOWED: u64 = 2 << 20;

/// The tests of this binary run one at a time: the threaded test's allocations would show in
/// the soak's reading of the process's resident memory.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn thousands_of_runs_keep_memory_flat_and_every_output_identical() {
    let _alone = one_at_a_time();
    let runs: usize = std::env::var("RESGRAPH_SOAK_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(3000);
    let graph = mlp(MlpShape::square(32, 2), 1.0, 5).expect("graph");
    for (backend, context) in common::contexts() {
        let model =
            CompiledModel::compile(common::shared(context), &graph, &CompileOptions::new(4))
                .expect("compile");
        let input = random_input(4 * 32, 9);
        let report = soak(&model, &input, 300, runs, runs / 10).expect("soak");
        assert_eq!(
            report.mismatched_runs, 0,
            "{backend}: outputs changed between runs"
        );
        let host = report.host_growth();
        let device = report.device_growth();
        eprintln!(
            "{backend}: {runs} runs, host resident growth {host:?} bytes, device allocation \
             growth {device:?} bytes ({} samples)",
            report.samples.len()
        );
        if cfg!(target_os = "linux") {
            let host = host.expect("Linux reports the resident set size");
            assert!(
                host <= HOST_GROWTH_ALLOWED,
                "{backend}: host memory grew by {host} bytes over {runs} runs: {:?}",
                report.samples
            );
        }
        // Vulkan, Metal and DX12 report their allocator; GL does not, and its host memory is
        // what the check above covers.
        if let Some(device) = device {
            assert_eq!(
                device, 0,
                "{backend}: device memory grew: {:?}",
                report.samples
            );
        }
    }
}

#[test]
fn eight_threads_sharing_one_model_with_different_batches_each_get_their_answer() {
    let _alone = one_at_a_time();
    let shape = MlpShape {
        input_width: 19,
        width: 24,
        hidden_width: 40,
        depth: 2,
        output_width: 7,
        residual: true,
    };
    let graph = Arc::new(mlp(shape, 1.0, 8).expect("graph"));
    for (backend, context) in common::contexts() {
        let model = Arc::new(
            CompiledModel::compile(common::shared(context), &graph, &CompileOptions::new(37))
                .expect("compile"),
        );
        std::thread::scope(|scope| {
            for thread in 0..8usize {
                let (model, graph, backend) = (Arc::clone(&model), Arc::clone(&graph), &backend);
                scope.spawn(move || {
                    // Batches 1, 6, 11, ... 36: every thread a different size.
                    let batch = 1 + 5 * thread;
                    let input = random_input(batch * shape.input_width, 40 + thread as u64);
                    let reference = forward_f64(&graph, &input, batch);
                    for run in 0..25 {
                        let out = model.run(&input).expect("run");
                        let error = relative_error(&out, &reference);
                        assert!(
                            error <= 1e-4,
                            "{backend}: thread {thread} (batch {batch}), run {run}: error \
                             {error:.2e}"
                        );
                    }
                });
            }
        });
    }
}

/// The threads of this process that poll a device for async runs (Linux names them in
/// `/proc/self/task/*/comm`, cut to 15 bytes).
#[cfg(target_os = "linux")]
fn polling_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "resgraph device")
        .count()
}

#[test]
fn async_runs_from_many_threads_share_one_polling_thread_that_ends_with_the_context() {
    let _alone = one_at_a_time();
    let graph = Arc::new(mlp(MlpShape::square(24, 2), 1.0, 12).expect("graph"));
    for backend in common::test_backends() {
        // A context of its own, so that the test sees its polling thread end; the cached test
        // contexts live as long as the process.
        let context = Arc::new(common::new_context(&backend, wgpu::Features::empty()));
        let model = Arc::new(
            CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(9))
                .expect("compile"),
        );
        std::thread::scope(|scope| {
            for thread in 0..4usize {
                let (model, graph, backend) = (Arc::clone(&model), Arc::clone(&graph), &backend);
                scope.spawn(move || {
                    for run in 0..10usize {
                        let batch = 1 + (thread * 3 + run) % 9;
                        let input = random_input(batch * 24, (thread * 100 + run) as u64);
                        let out = pollster::block_on(model.run_async(&input)).expect("run_async");
                        let error = relative_error(&out, &forward_f64(&graph, &input, batch));
                        assert!(
                            error <= 1e-4,
                            "{backend}: thread {thread} run {run} (batch {batch}): error \
                             {error:.2e}"
                        );
                    }
                });
            }
        });
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                polling_threads(),
                1,
                "{backend}: 40 async runs on one context should share one polling thread"
            );
            drop(model);
            drop(context);
            let started = std::time::Instant::now();
            while polling_threads() > 0 {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "{backend}: the polling thread outlived its context"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
