//! Whole-block fusion: the one-dispatch residual block kernel against the f64 reference on awkward
//! shapes with its output poisoned, its typed refusals, and the executor using it only where
//! asked or where it measured faster, with the same results as the two-dispatch form.

mod common;

use std::sync::Arc;

use resgraph::epilogue::{Activation, Epilogue};
use resgraph::exec::{BlockFusion, CompileOptions, CompiledModel, Tuning};
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::kernels::gemm::LinearWeights;
use resgraph::kernels::residual_block::{self, ResidualBlockOperands, prepare_residual_block};
use resgraph::precision::Precision;
use resgraph::reference::{LinearRef, forward_f64, linear_f64, to_f64};
use resgraph::tune::BlockForm;

/// Runs one block `relu(W2·relu(W1·a + b1) + b2 + a)` with the fused kernel and returns the
/// relative error against the f64 reference.
fn check_block(
    context: &GpuContext,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
    seed: u64,
) -> f64 {
    let what = format!("residual block rows={rows} width={width} hidden={hidden} {precision}");
    let mut rng = common::rng(seed);
    let a = common::uniform(&mut rng, rows * width, -1.0, 1.0);
    let s1 = 1.0 / (width as f32).sqrt();
    let s2 = 1.0 / (hidden as f32).sqrt();
    let w1 = common::uniform(&mut rng, hidden * width, -s1, s1);
    let b1 = common::uniform(&mut rng, hidden, -s1, s1);
    let w2 = common::uniform(&mut rng, width * hidden, -s2, s2);
    let b2 = common::uniform(&mut rng, width, -s2, s2);

    let first =
        LinearWeights::upload_with_precision(context, hidden, width, &w1, Some(&b1), precision)
            .expect("first layer");
    let second =
        LinearWeights::upload_with_precision(context, width, hidden, &w2, Some(&b2), precision)
            .expect("second layer");
    let input = DeviceMatrix::new_with_precision(context, "a", rows, width, precision).expect("a");
    input.write(context, &a).expect("write a");
    let output =
        DeviceMatrix::new_with_precision(context, "out", rows, width, precision).expect("out");
    output.fill(context, f32::NAN).expect("poison");
    let block = prepare_residual_block(
        context,
        &ResidualBlockOperands {
            input: &input,
            first: &first,
            second: &second,
            output: &output,
        },
    )
    .expect("prepare block");
    block.submit(context).expect("submit");
    context.wait_idle().expect("wait");
    let out = output.read(context).expect("read");

    // f16 storage rounds inputs, weights and outputs; its tolerance covers that.
    let (a_stored, w1_stored, w2_stored) = (to_f64(&a), &w1, &w2);
    let hidden_ref = linear_f64(
        &a_stored,
        rows,
        LinearRef {
            weight: w1_stored,
            bias: &b1,
            in_features: width,
            out_features: hidden,
        },
        None,
        Epilogue {
            activation: Activation::Relu,
            add_residual: false,
        },
    );
    let reference = linear_f64(
        &hidden_ref,
        rows,
        LinearRef {
            weight: w2_stored,
            bias: &b2,
            in_features: hidden,
            out_features: width,
        },
        Some(&a_stored),
        Epilogue {
            activation: Activation::Relu,
            add_residual: true,
        },
    );
    common::assert_close(&out, &reference, precision.tolerance(), &what)
}

/// The test contexts that can run the block kernel (lavapipe: subgroups of 8), at least one.
fn block_contexts() -> Vec<&'static GpuContext> {
    common::contexts_where(
        "what the whole-block kernel needs (subgroups of at least 8 invocations)",
        |context| residual_block::supported(context, Precision::F32, (8, 16, 16)),
    )
    .into_iter()
    .map(|(_, context)| context)
    .collect()
}

#[test]
fn the_block_kernel_matches_the_reference_on_awkward_shapes() {
    let shapes = [
        (1, 1, 1),
        (3, 17, 3),
        (17, 3, 17),
        (9, 127, 33),
        (33, 40, 127),
        (5, 1000, 512),
        (127, 64, 512),
        (8, 513, 40),
    ];
    for context in block_contexts() {
        for (index, &shape) in shapes.iter().enumerate() {
            let error = check_block(context, Precision::F32, shape, 40 + index as u64);
            eprintln!("block {shape:?} f32: relative error {error:.2e}");
        }
    }
}

#[test]
fn the_block_kernel_matches_the_reference_in_f16() {
    let contexts = common::contexts_where(
        "what the whole-block kernel needs in f16 (subgroups of at least 8 and shader-f16)",
        |context| residual_block::supported(context, Precision::F16, (8, 16, 16)),
    );
    for (_, context) in contexts {
        for (index, shape) in [(3, 17, 3), (17, 127, 33), (9, 256, 512)]
            .into_iter()
            .enumerate()
        {
            let error = check_block(context, Precision::F16, shape, 60 + index as u64);
            eprintln!("block {shape:?} f16: relative error {error:.2e}");
        }
    }
}

fn shape(input_width: usize, width: usize, hidden_width: usize, depth: usize) -> MlpShape {
    MlpShape {
        input_width,
        width,
        hidden_width,
        depth,
        output_width: 7,
        residual: true,
    }
}

fn compile(
    context: &Arc<GpuContext>,
    graph: &resgraph::graph::Graph,
    batch: usize,
    fusion: BlockFusion,
    tuning: Tuning,
    cache: Option<&std::path::Path>,
) -> CompiledModel {
    let options = CompileOptions {
        block_fusion: fusion,
        tuning,
        tuning_cache: cache.map(std::path::Path::to_path_buf),
        ..CompileOptions::new(batch)
    };
    CompiledModel::compile(Arc::clone(context), graph, &options).expect("compile")
}

#[test]
fn a_fused_model_runs_one_dispatch_per_block_and_matches_the_reference() {
    for context in block_contexts() {
        let context = common::shared(context);
        for (index, &(input_width, width, hidden, depth, batch)) in [
            (20, 33, 17, 5, 9),
            (3, 127, 512, 2, 1),
            (40, 64, 64, 3, 127),
        ]
        .iter()
        .enumerate()
        {
            let graph =
                mlp(shape(input_width, width, hidden, depth), 1.0, index as u64).expect("graph");
            let input = random_input(batch * input_width, 90 + index as u64);
            let reference = forward_f64(&graph, &input, batch);
            let fused = compile(
                &context,
                &graph,
                batch,
                BlockFusion::Always,
                Tuning::Heuristic,
                None,
            );
            let split = compile(
                &context,
                &graph,
                batch,
                BlockFusion::Never,
                Tuning::Heuristic,
                None,
            );
            // A stem and a head layer besides the blocks.
            assert_eq!(fused.dispatches_per_run(), depth + 2);
            assert_eq!(split.dispatches_per_run(), 2 * depth + 2);
            let block_steps = fused
                .step_kernels()
                .iter()
                .filter(|name| **name == "residual_block")
                .count();
            assert_eq!(block_steps, depth);
            for (model, form) in [(&fused, "fused"), (&split, "two dispatches")] {
                let what = format!("{form} {width}x{hidden} depth {depth} batch {batch}");
                let out = model.run(&input).expect("run");
                let error = common::assert_close(&out, &reference, 1e-5, &what);
                eprintln!("{what}: relative error {error:.2e}");
            }
            // A smaller batch on the same compiled model.
            let rows = batch.div_ceil(2);
            let out = fused
                .run(&input[..rows * input_width])
                .expect("smaller batch");
            let reference = forward_f64(&graph, &input[..rows * input_width], rows);
            common::assert_close(&out, &reference, 1e-5, "fused, smaller batch");
        }
    }
}

#[test]
fn blocks_the_kernel_cannot_run_stay_two_dispatches() {
    // A hidden width past what the kernel keeps on chip, and every adapter opened without
    // subgroups (as llvmpipe GL always is): asking for fusion changes nothing there, and results
    // stay right.
    let mut cases = vec![(common::shared_primary_context(), 513usize)];
    for (backend, context) in common::contexts_without(wgpu::Features::SUBGROUP) {
        assert!(
            !residual_block::supported(&context, Precision::F32, (4, 16, 16)),
            "{backend}: the block kernel claims to run without subgroups"
        );
        cases.push((context, 16));
    }
    for (context, hidden) in cases {
        let graph = mlp(shape(5, 24, hidden, 2), 1.0, 3).expect("graph");
        let model = compile(
            &context,
            &graph,
            4,
            BlockFusion::Always,
            Tuning::Heuristic,
            None,
        );
        assert_eq!(model.dispatches_per_run(), 2 * 2 + 2, "hidden {hidden}");
        let input = random_input(4 * 5, 4);
        let out = model.run(&input).expect("run");
        common::assert_close(&out, &forward_f64(&graph, &input, 4), 1e-5, "unfused");
    }
}

#[test]
fn measured_fusion_times_both_forms_once_and_then_uses_the_cache() {
    let context = common::shared(block_contexts()[0]);
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("tuning.json");
    let graph = mlp(shape(12, 48, 40, 3), 1.0, 8).expect("graph");
    let batch = 16;
    let first = compile(
        &context,
        &graph,
        batch,
        BlockFusion::WhereFaster,
        Tuning::Measure,
        Some(&cache),
    );
    let report = first.tuning_report();
    // Three identical blocks: one shape, measured both ways once.
    assert_eq!(report.blocks.len(), 1);
    let block = &report.blocks[0];
    assert_eq!(block.measured.len(), 2, "{block:?}");
    let fused_steps = first
        .step_kernels()
        .iter()
        .filter(|name| **name == "residual_block")
        .count();
    let expected = if block.form == BlockForm::WholeBlock {
        3
    } else {
        0
    };
    assert_eq!(fused_steps, expected, "{block:?}");
    eprintln!("block choice: {block:?}");

    let second = compile(
        &context,
        &graph,
        batch,
        BlockFusion::WhereFaster,
        Tuning::Measure,
        Some(&cache),
    );
    assert_eq!(second.tuning_report().measured, 0);
    assert_eq!(second.tuning_report().blocks[0].form, block.form);
    assert_eq!(second.step_kernels(), first.step_kernels());
    let input = random_input(batch * 12, 9);
    let out = second.run(&input).expect("run");
    common::assert_close(&out, &forward_f64(&graph, &input, batch), 1e-5, "tuned");
}
