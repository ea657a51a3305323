//! Fused GEMM throughput, `act(X·Wᵀ + b + R)` with ReLU and residual (the residual block's second
//! layer, the most expensive epilogue), for every variant the default adapter supports.
//!
//! Throughput is reported in elements per second where one element is one floating-point
//! operation (`2·M·N·K` per GEMM), so criterion's `Gelem/s` reads as GFLOP/s. Each iteration
//! submits the dispatch and waits for the GPU, so GPU work is inside the timing.
//!
//! `RESGRAPH_BENCH_SMOKE=1` shrinks the table to tiny shapes for CI, where
//! `cargo bench --bench gemm -- --test` runs each benchmark once.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resgraph::epilogue::Activation;
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::{AdapterOptions, GpuContext};
use resgraph::kernels::gemm::{GemmOperands, GemmVariant, LinearWeights, prepare_gemm};

/// (name, M, N, K).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("square_256", 256, 256, 256),
    ("square_1024", 1024, 1024, 1024),
    ("square_2048", 2048, 2048, 2048),
    ("resmlp_throughput_layer", 256, 1024, 1024),
    ("resmlp_latency_layer", 1, 512, 512),
    ("awkward_1000x127x17", 1000, 127, 17),
];

/// Tiny shapes that exercise the same code in seconds.
const SMOKE_SHAPES: &[(&str, usize, usize, usize)] =
    &[("smoke_17x33x65", 17, 33, 65), ("smoke_1x64x64", 1, 64, 64)];

fn deterministic_values(len: usize, scale: f32) -> Vec<f32> {
    // A fixed pseudo-random sequence (an LCG); the values only need to be ordinary floats.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn bench_gemm(criterion: &mut Criterion) {
    let context = match AdapterOptions::from_env().and_then(|options| GpuContext::new(&options)) {
        Ok(context) => context,
        Err(error) => panic!("the GEMM bench needs an adapter: {error}"),
    };
    let smoke = std::env::var_os("RESGRAPH_BENCH_SMOKE").is_some();
    let shapes = if smoke { SMOKE_SHAPES } else { SHAPES };
    eprintln!(
        "gemm bench on {} ({}, {})",
        context.adapter_info().name,
        context.adapter_info().backend,
        context.adapter_info().driver_info
    );
    let mut group = criterion.benchmark_group("gemm");
    group.sample_size(10);
    for variant in GemmVariant::ALL {
        if !variant.supported_by(&context, resgraph::precision::Precision::F32) {
            continue;
        }
        for &(name, m, n, k) in shapes {
            let scale = 1.0 / (k as f32).sqrt();
            let weights = LinearWeights::upload(
                &context,
                n,
                k,
                &deterministic_values(n * k, scale),
                Some(&deterministic_values(n, scale)),
            )
            .expect("weights");
            let input =
                DeviceMatrix::from_host(&context, "x", m, k, &deterministic_values(m * k, 1.0))
                    .expect("input");
            let residual =
                DeviceMatrix::from_host(&context, "r", m, n, &deterministic_values(m * n, 1.0))
                    .expect("residual");
            let output = DeviceMatrix::new(&context, "out", m, n).expect("output");
            let gemm = prepare_gemm(
                &context,
                &GemmOperands {
                    input: &input,
                    weights: &weights,
                    residual: Some(&residual),
                    output: &output,
                    activation: Activation::Relu,
                },
                variant,
            )
            .expect("prepare");
            group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            group.bench_function(BenchmarkId::new(format!("{variant:?}"), name), |bencher| {
                bencher.iter(|| {
                    gemm.submit(&context).expect("submit");
                    context.wait_idle().expect("wait");
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
