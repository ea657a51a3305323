//! The residual MLP end to end: one `CompiledModel::run` (input upload, every dispatch in one
//! pass, output readback) per iteration, on the default adapter; and the same as `run_async`
//! awaited, whose difference is the cost of waking the future from the context's polling
//! thread (the `overhead` shape, whose kernels take almost nothing, shows it best).
//!
//! Throughput is in elements per second where one element is one floating-point operation, so
//! criterion's `Gelem/s` reads as GFLOP/s. `RESGRAPH_BENCH_SMOKE=1` shrinks the shapes for CI.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::{AdapterOptions, GpuContext};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};

/// (name, width, depth, batch).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("throughput_w1024_d8_b256", 1024, 8, 256),
    ("latency_w512_d8_b1", 512, 8, 1),
    ("overhead_w16_d2_b1", 16, 2, 1),
];

const SMOKE_SHAPES: &[(&str, usize, usize, usize)] = &[("smoke_w33_d3_b5", 33, 3, 5)];

fn bench_residual(criterion: &mut Criterion) {
    let context = match AdapterOptions::from_env().and_then(|options| GpuContext::new(&options)) {
        Ok(context) => Arc::new(context),
        Err(error) => panic!("the residual bench needs an adapter: {error}"),
    };
    eprintln!(
        "residual bench on {} ({})",
        context.adapter_info().name,
        context.adapter_info().backend
    );
    let smoke = std::env::var_os("RESGRAPH_BENCH_SMOKE").is_some();
    let mut group = criterion.benchmark_group("residual_mlp");
    group.sample_size(10);
    for &(name, width, depth, batch) in if smoke { SMOKE_SHAPES } else { SHAPES } {
        let graph = mlp(MlpShape::square(width, depth), 1.0, 42).expect("graph");
        let model =
            CompiledModel::compile(Arc::clone(&context), &graph, &CompileOptions::new(batch))
                .expect("compile");
        let input = random_input(batch * width, 7);
        group.throughput(Throughput::Elements(graph.flops_per_row() * batch as u64));
        group.bench_function(BenchmarkId::new("run", name), |bencher| {
            bencher.iter(|| model.run(&input).expect("run"));
        });
        group.bench_function(BenchmarkId::new("run_async", name), |bencher| {
            bencher.iter(|| pollster::block_on(model.run_async(&input)).expect("run_async"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_residual);
criterion_main!(benches);
