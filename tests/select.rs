//! Kernel selection as the compiled model sees it: what the caller forces is honoured or refused,
//! never silently ignored.

mod common;

use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::reference::forward_f64;
use resgraph::tune::TunedShape;
use resgraph::{BlockFusion, CompileOptions, CompiledModel, GemmVariant, Precision, Tuning};

/// Batches of this many rows are above the texture GEMV's batches, so the rules run every layer
/// on a tiled GEMM.
const ROWS: usize = 32;

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
fn a_forced_variant_replaces_only_the_gemm_variant_and_small_batches_keep_the_gemv() {
    let context = common::context_where("the texture GEMV (subgroups of at least 8)", |c| {
        resgraph::kernels::gemv::supported_by(c)
    });
    let graph = mlp(MlpShape::square(16, 2), 1.0, 9).expect("graph");
    let options = CompileOptions {
        gemm_variant: Some(GemmVariant::Portable),
        ..CompileOptions::new(4)
    };
    let model = CompiledModel::compile(common::shared(context), &graph, &options).expect("compile");
    assert!(
        model
            .step_kernels()
            .iter()
            .all(|kernel| *kernel == "gemv_texture"),
        "{:?}",
        model.step_kernels()
    );
    let without_gemv = CompileOptions {
        small_batch_kernel: false,
        ..options
    };
    let model =
        CompiledModel::compile(common::shared(context), &graph, &without_gemv).expect("compile");
    assert!(
        model.step_kernels().iter().all(|kernel| *kernel == "gemm"),
        "{:?}",
        model.step_kernels()
    );
}

#[test]
fn measured_tuning_without_the_small_batch_kernel_never_times_or_runs_the_gemv() {
    let context = common::context_where("the texture GEMV (subgroups of at least 8)", |c| {
        resgraph::kernels::gemv::supported_by(c)
    });
    let graph = mlp(MlpShape::square(16, 1), 1.0, 7).expect("graph");
    let cache = tempfile::tempdir().expect("temp dir");
    let options = CompileOptions {
        small_batch_kernel: false,
        tuning: Tuning::Measure,
        tuning_cache: Some(cache.path().join("tuning.json")),
        ..CompileOptions::new(4)
    };
    let model = CompiledModel::compile(common::shared(context), &graph, &options).expect("compile");
    assert!(
        !model.step_kernels().contains(&"gemv_texture"),
        "{:?}",
        model.step_kernels()
    );
    let report = model.tuning_report();
    assert!(!report.shapes.is_empty(), "nothing was tuned: {report:?}");
    for shape in &report.shapes {
        assert!(
            !shape
                .key
                .candidates
                .iter()
                .any(|name| name == "gemv_texture"),
            "the GEMV was a candidate: {}",
            shape.key
        );
    }
    // The same model with the GEMV allowed offers it to the tuner (a separate cache entry).
    let allowed = CompileOptions {
        small_batch_kernel: true,
        ..options
    };
    let model = CompiledModel::compile(common::shared(context), &graph, &allowed).expect("compile");
    assert!(
        model.tuning_report().shapes.iter().all(|shape| shape
            .key
            .candidates
            .iter()
            .any(|name| name == "gemv_texture")),
        "{:?}",
        model.tuning_report()
    );
}
