//! The whole-block kernel against the two-dispatch form: one residual block
//! (`relu(W2·relu(W1·a + b1) + b2 + a)`) compiled with `BlockFusion::Always` and with
//! `BlockFusion::Never`, each iteration a full `CompiledModel::run` (upload, dispatches in one
//! pass, readback), on the default adapter. Both forms use the fixed kernel rules (no tuning), so
//! the two-dispatch form runs the texture GEMV up to 16 rows and the tiled GEMM above.
//!
//! Throughput is in elements per second where one element is one floating-point operation, so
//! criterion's `Gelem/s` reads as GFLOP/s. `RESGRAPH_BENCH_SMOKE=1` shrinks the table for CI.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resgraph::exec::{BlockFusion, CompileOptions, CompiledModel};
use resgraph::gpu::context::{AdapterOptions, GpuContext};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::kernels::residual_block;
use resgraph::precision::Precision;

/// (name, batch, width); the hidden width equals the width.
const SHAPES: &[(&str, usize, usize)] = &[
    ("b1_w512", 1, 512),
    ("b64_w256", 64, 256),
    ("b256_w128", 256, 128),
    ("b1024_w64", 1024, 64),
];

const SMOKE_SHAPES: &[(&str, usize, usize)] = &[("smoke_b5_w33", 5, 33)];

fn bench_residual_block(criterion: &mut Criterion) {
    let context = match AdapterOptions::from_env().and_then(|options| GpuContext::new(&options)) {
        Ok(context) => Arc::new(context),
        Err(error) => panic!("the residual block bench needs an adapter: {error}"),
    };
    eprintln!(
        "residual block bench on {} ({})",
        context.adapter_info().name,
        context.adapter_info().backend
    );
    let smoke = std::env::var_os("RESGRAPH_BENCH_SMOKE").is_some();
    let mut group = criterion.benchmark_group("residual_block");
    group.sample_size(10);
    for &(name, batch, width) in if smoke { SMOKE_SHAPES } else { SHAPES } {
        if !residual_block::supported(&context, Precision::F32, (batch, width, width)) {
            eprintln!("{name}: the adapter cannot run the whole-block kernel; skipped");
            continue;
        }
        let graph = mlp(MlpShape::square(width, 1), 1.0, 42).expect("graph");
        let input = random_input(batch * width, 7);
        group.throughput(Throughput::Elements(graph.flops_per_row() * batch as u64));
        for (form, fusion) in [
            ("whole_block", BlockFusion::Always),
            ("two_dispatches", BlockFusion::Never),
        ] {
            let options = CompileOptions {
                block_fusion: fusion,
                ..CompileOptions::new(batch)
            };
            let model =
                CompiledModel::compile(Arc::clone(&context), &graph, &options).expect("compile");
            group.bench_function(BenchmarkId::new(form, name), |bencher| {
                bencher.iter(|| model.run(&input).expect("run"));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_residual_block);
criterion_main!(benches);
