//! Kernel selection as the compiled model sees it: what the caller forces is honoured or refused,
//! never silently ignored.

mod common;

use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::reference::forward_f64;
use resgraph::tune::TunedShape;
use resgraph::{BlockFusion, CompileOptions, CompiledModel, Error, GemmVariant, Precision, Tuning};

/// Batches of this many rows run the whole-block kernel wherever it is supported.
const ROWS: usize = 8;

#[test]
fn a_forced_variant_is_honoured_under_measured_tuning() {
    let context = common::context_where("the whole-block kernel (subgroups of at least 8)", |c| {
        resgraph::kernels::residual_block::supported(c, Precision::F32, (ROWS, 24, 24))
    });
    let context = common::shared(context);
    let graph = mlp(MlpShape::square(24, 3), 1.0, 5).expect("graph");
    let cache = tempfile::tempdir().expect("temp dir");
    let options = CompileOptions {
        gemm_variant: Some(GemmVariant::Portable),
        tuning: Tuning::Measure,
        tuning_cache: Some(cache.path().join("tuning.json")),
        block_fusion: BlockFusion::WhereFaster,
        ..CompileOptions::new(ROWS)
    };
    let model = CompiledModel::compile(context, &graph, &options).expect("compile");
    let report = model.tuning_report();
    // Every layer runs the forced variant: no layer shape was tuned ...
    assert!(report.shapes.is_empty(), "layers were tuned: {report:?}");
    for kernel in model.step_kernels() {
        assert!(
            kernel == "gemm" || kernel == "residual_block",
            "a step ran {kernel}, not the forced portable GEMM or the whole block"
        );
    }
    // ... while the blocks' form was still measured, against the forced variant (the three
    // blocks share one shape, so one measurement).
    assert_eq!(report.blocks.len(), 1, "{report:?}");
    match &report.blocks[0].key.shape {
        TunedShape::Block {
            first_layer,
            second_layer,
            ..
        } => assert_eq!(
            (first_layer.as_str(), second_layer.as_str()),
            ("gemm", "gemm"),
            "the block was not timed against the forced variant"
        ),
        other => panic!("a block's key names a layer shape: {other}"),
    }
    let input = random_input(ROWS * 24, 6);
    let output = model.run(&input).expect("run");
    common::assert_close(
        &output,
        &forward_f64(&graph, &input, ROWS),
        Precision::F32.tolerance(),
        "forced portable GEMM under measured tuning",
    );
}

#[test]
fn measured_tuning_without_the_small_batch_kernel_and_no_forced_variant_is_refused() {
    let graph = mlp(MlpShape::square(16, 1), 1.0, 7).expect("graph");
    let cache = tempfile::tempdir().expect("temp dir");
    let options = CompileOptions {
        small_batch_kernel: false,
        tuning: Tuning::Measure,
        tuning_cache: Some(cache.path().join("tuning.json")),
        ..CompileOptions::new(4)
    };
    let error = CompiledModel::compile(common::shared_primary_context(), &graph, &options)
        .expect_err("the tuner cannot honour small_batch_kernel = false");
    assert!(matches!(error, Error::ConflictingOptions { .. }), "{error}");
    // With a forced variant the same request is honoured: no layer runs the texture GEMV.
    let forced = CompileOptions {
        gemm_variant: Some(GemmVariant::Portable),
        ..options
    };
    let model = CompiledModel::compile(common::shared_primary_context(), &graph, &forced)
        .expect("compile with a forced variant");
    assert!(
        !model.step_kernels().contains(&"gemv_texture"),
        "{:?}",
        model.step_kernels()
    );
}
