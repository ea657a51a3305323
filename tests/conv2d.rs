//! The implicit-GEMM convolution against the f64 reference, on every test adapter: the shapes of
//! a ResNet (7×7 stride-2 stem on 3 channels, 3×3 blocks, 1×1 stride-2 projections) at awkward
//! sizes, asymmetric padding, every epilogue, fewer images than prepared, and NaN propagation,
//! always with the output poisoned first. Every case runs with every variant the adapter
//! supports, not only the one a model would choose.

mod common;

use resgraph::epilogue::{Activation, Epilogue};
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::kernels::conv2d::{
    Conv2dGeometry, Conv2dOperands, Conv2dVariant, prepare_conv2d, upload_conv_weights,
};
use resgraph::precision::Precision;
use resgraph::reference::{Conv2dRef, conv2d_f64, to_f64};

/// One convolution case: its geometry, batch and epilogue.
struct Case {
    geometry: Conv2dGeometry,
    batch: usize,
    epilogue: Epilogue,
}

fn case(
    (in_h, in_w, in_channels): (usize, usize, usize),
    out_channels: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize, usize, usize),
    batch: usize,
    epilogue: Epilogue,
) -> Case {
    Case {
        geometry: Conv2dGeometry {
            input_size: (in_h, in_w),
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
        },
        batch,
        epilogue,
    }
}

const RELU_RESIDUAL: Epilogue = Epilogue {
    activation: Activation::Relu,
    add_residual: true,
};
const RELU: Epilogue = Epilogue {
    activation: Activation::Relu,
    add_residual: false,
};
const PLAIN: Epilogue = Epilogue {
    activation: Activation::Identity,
    add_residual: false,
};

/// The convolution variants `context` can run: all of them are tested.
fn variants(context: &GpuContext) -> Vec<Conv2dVariant> {
    Conv2dVariant::ALL
        .into_iter()
        .filter(|variant| variant.supported_by(context, Precision::F32))
        .collect()
}

/// Runs `case` with `variant` on `context` with `images` of the prepared batch and returns the
/// relative error against the reference.
fn check(
    context: &GpuContext,
    variant: Conv2dVariant,
    case: &Case,
    images: usize,
    seed: u64,
) -> f64 {
    let geometry = case.geometry;
    let (in_h, in_w) = geometry.input_size;
    let (out_h, out_w) = geometry.output_size().expect("a valid geometry");
    let mut rng = common::rng(seed);
    let weight_count =
        geometry.out_channels * geometry.in_channels * geometry.kernel.0 * geometry.kernel.1;
    let fan_in = (geometry.in_channels * geometry.kernel.0 * geometry.kernel.1) as f32;
    let scale = 1.0 / fan_in.sqrt();
    let weight = common::uniform(&mut rng, weight_count, -scale, scale);
    let bias = common::uniform(&mut rng, geometry.out_channels, -0.5, 0.5);
    let input_rows = case.batch * in_h * in_w;
    let output_rows = case.batch * out_h * out_w;
    let input = common::uniform(&mut rng, input_rows * geometry.in_channels, -1.0, 1.0);
    let residual = common::uniform(&mut rng, output_rows * geometry.out_channels, -1.0, 1.0);

    let weights = upload_conv_weights(context, &geometry, &weight, Some(&bias), Precision::F32)
        .expect("upload the weights");
    let input_matrix =
        DeviceMatrix::from_host(context, "x", input_rows, geometry.in_channels, &input).expect("x");
    let residual_matrix =
        DeviceMatrix::from_host(context, "r", output_rows, geometry.out_channels, &residual)
            .expect("r");
    let output = DeviceMatrix::new(context, "y", output_rows, geometry.out_channels).expect("y");
    output.fill(context, f32::NAN).expect("poison the output");
    let conv = prepare_conv2d(
        context,
        &Conv2dOperands {
            input: &input_matrix,
            weights: &weights,
            geometry,
            batch: case.batch,
            residual: case.epilogue.add_residual.then_some(&residual_matrix),
            output: &output,
            activation: case.epilogue.activation,
        },
        variant,
    )
    .expect("prepare the convolution");
    conv.set_rows(context, images).expect("set the images");
    context
        .submit_pass("conv2d test", |pass| conv.record_rows(pass, images))
        .expect("submit");
    context.wait_idle().expect("wait");
    let out = output.read(context).expect("read");

    let images_rows = images * out_h * out_w;
    let (reference, (reference_h, reference_w)) = conv2d_f64(
        &to_f64(&input[..images * in_h * in_w * geometry.in_channels]),
        (images, in_h, in_w),
        Conv2dRef {
            weight: &weight,
            bias: &bias,
            in_channels: geometry.in_channels,
            out_channels: geometry.out_channels,
            kernel: geometry.kernel,
            stride: geometry.stride,
            padding: geometry.padding,
        },
        case.epilogue
            .add_residual
            .then(|| to_f64(&residual[..images_rows * geometry.out_channels]))
            .as_deref(),
        case.epilogue,
    );
    assert_eq!((reference_h, reference_w), (out_h, out_w));
    let computed = &out[..images_rows * geometry.out_channels];
    // Rows past the images asked for must stay poisoned: the dispatch covered only those images.
    assert!(
        out[images_rows * geometry.out_channels..]
            .iter()
            .all(|value| value.is_nan()),
        "the convolution wrote past the {images} image(s) it was asked for"
    );
    common::assert_close(
        computed,
        &reference,
        Precision::F32.tolerance(),
        &format!(
            "{variant:?}: {:?} batch {} images {images}",
            geometry, case.batch
        ),
    )
}

fn resnet_shaped_cases() -> Vec<Case> {
    vec![
        // The stem: 7x7 stride 2 padding 3 on 3 channels (scalar loads, channels padded to 4).
        case((23, 17, 3), 16, (7, 7), (2, 2), (3, 3, 3, 3), 2, RELU),
        // A basic block's 3x3 convolutions, with the residual add in the second.
        case((9, 11, 16), 16, (3, 3), (1, 1), (1, 1, 1, 1), 3, RELU),
        case(
            (9, 11, 16),
            16,
            (3, 3),
            (1, 1),
            (1, 1, 1, 1),
            1,
            RELU_RESIDUAL,
        ),
        // A projection shortcut: 1x1 stride 2, no activation.
        case((13, 7, 8), 24, (1, 1), (2, 2), (0, 0, 0, 0), 2, PLAIN),
        // A stride-2 3x3 with asymmetric padding (as dynamo exports some pads) and odd channels.
        case(
            (17, 13, 5),
            17,
            (3, 3),
            (2, 2),
            (0, 1, 1, 0),
            3,
            RELU_RESIDUAL,
        ),
        // One output pixel, many channels: more channel blocks than pixels.
        case((3, 3, 12), 33, (3, 3), (1, 1), (0, 0, 0, 0), 1, RELU),
        // Chunks of 8 k's that straddle two taps (channels4 = 4, 12 or 20, not a multiple of 8),
        // with scalar loads (3 channels) and vec4 loads (12, 20): the subgroup variant's high
        // half of a chunk then reads the next tap, or the padding after the last one.
        case((7, 6, 3), 16, (3, 3), (1, 1), (1, 1, 1, 1), 2, RELU),
        case(
            (6, 9, 12),
            19,
            (3, 3),
            (1, 1),
            (1, 1, 1, 1),
            1,
            RELU_RESIDUAL,
        ),
        case((8, 5, 20), 16, (3, 3), (2, 1), (1, 0, 1, 2), 2, PLAIN),
        // 5 channels pad to 8: each chunk is one tap, its high half partly padded channels.
        case((6, 7, 5), 8, (3, 3), (1, 1), (1, 1, 1, 1), 2, RELU),
        // One input channel (padded to 4): every chunk is two taps, and the last chunk's high
        // half lies past the last tap, in the padding of the inner dimension.
        case((5, 5, 1), 4, (3, 3), (1, 1), (0, 0, 0, 0), 1, PLAIN),
        // A bottleneck's 1x1 expansion over more pixels than one workgroup covers.
        case(
            (19, 17, 4),
            20,
            (1, 1),
            (1, 1),
            (0, 0, 0, 0),
            1,
            RELU_RESIDUAL,
        ),
    ]
}

#[test]
fn every_resnet_shaped_convolution_matches_the_reference_on_every_backend() {
    for (backend, context) in common::contexts() {
        for variant in variants(context) {
            for (index, case) in resnet_shaped_cases().iter().enumerate() {
                let error = check(context, variant, case, case.batch, 100 + index as u64);
                eprintln!("{backend} {variant:?} case {index}: relative error {error:.2e}");
            }
        }
    }
}

#[test]
fn a_smaller_batch_than_prepared_computes_only_its_images() {
    let context = common::primary_context();
    let case = case(
        (11, 9, 8),
        12,
        (3, 3),
        (2, 2),
        (1, 1, 1, 1),
        4,
        RELU_RESIDUAL,
    );
    for variant in variants(context) {
        for images in [1, 3, 4] {
            check(context, variant, &case, images, 200 + images as u64);
        }
    }
}

#[test]
fn nan_in_the_input_is_nan_in_every_output_it_reaches() {
    let context = common::primary_context();
    let geometry = Conv2dGeometry {
        input_size: (5, 5),
        in_channels: 4,
        out_channels: 4,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1, 1, 1),
    };
    let mut input = vec![0.25f32; 5 * 5 * 4];
    // Pixel (2, 2), channel 1: every output pixel whose 3x3 window covers it sees the NaN.
    input[(2 * 5 + 2) * 4 + 1] = f32::NAN;
    let weights = upload_conv_weights(
        context,
        &geometry,
        &vec![0.5; 4 * 4 * 9],
        None,
        Precision::F32,
    )
    .expect("weights");
    let x = DeviceMatrix::from_host(context, "x", 25, 4, &input).expect("x");
    let y = DeviceMatrix::new(context, "y", 25, 4).expect("y");
    // With a ReLU too: relu(NaN) is NaN, as in PyTorch (`max(x, 0)` alone may give 0).
    for (variant, activation) in variants(context)
        .into_iter()
        .flat_map(|variant| [(variant, Activation::Identity), (variant, Activation::Relu)])
    {
        y.fill(context, 7.0).expect("reset the output");
        let conv = prepare_conv2d(
            context,
            &Conv2dOperands {
                input: &x,
                weights: &weights,
                geometry,
                batch: 1,
                residual: None,
                output: &y,
                activation,
            },
            variant,
        )
        .expect("prepare");
        conv.submit(context).expect("submit");
        context.wait_idle().expect("wait");
        let out = y.read(context).expect("read");
        for oh in 0..5usize {
            for ow in 0..5usize {
                let covers = oh.abs_diff(2) <= 1 && ow.abs_diff(2) <= 1;
                for oc in 0..4 {
                    let value = out[(oh * 5 + ow) * 4 + oc];
                    assert_eq!(
                        value.is_nan(),
                        covers,
                        "{variant:?}, {activation:?}: output ({oh}, {ow}) channel {oc} = {value}"
                    );
                }
            }
        }
    }
}

#[test]
fn operands_that_do_not_fit_the_geometry_are_typed_errors() {
    let context = common::primary_context();
    let geometry = Conv2dGeometry {
        input_size: (6, 6),
        in_channels: 3,
        out_channels: 8,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1, 1, 1),
    };
    let weights = upload_conv_weights(context, &geometry, &[0.1; 8 * 3 * 9], None, Precision::F32)
        .expect("weights");
    let x = DeviceMatrix::new(context, "x", 36, 3).expect("x");
    let wrong_input = DeviceMatrix::new(context, "x", 35, 3).expect("x");
    let y = DeviceMatrix::new(context, "y", 36, 8).expect("y");
    let operands = |input, output| Conv2dOperands {
        input,
        weights: &weights,
        geometry,
        batch: 1,
        residual: None,
        output,
        activation: Activation::Relu,
    };
    let portable = Conv2dVariant::Portable;
    let error =
        prepare_conv2d(context, &operands(&wrong_input, &y), portable).expect_err("wrong input");
    assert!(
        matches!(error, resgraph::Error::ShapeMismatch { .. }),
        "{error}"
    );
    let error = prepare_conv2d(context, &operands(&x, &x), portable).expect_err("wrong output");
    assert!(
        matches!(error, resgraph::Error::ShapeMismatch { .. }),
        "{error}"
    );
    let error = upload_conv_weights(context, &geometry, &[0.1; 10], None, Precision::F32)
        .expect_err("wrong weight length");
    assert!(
        matches!(error, resgraph::Error::ShapeMismatch { .. }),
        "{error}"
    );
}

#[test]
fn the_subgroup_variant_runs_on_a_test_adapter() {
    // The tests above check every variant each adapter supports; this one makes sure that the
    // subgroup variant is among them somewhere (lavapipe has subgroups of 8), so that it is never
    // left untested by an adapter list without subgroups.
    let with_subgroups = common::contexts_where("subgroups of at least 8 invocations", |context| {
        Conv2dVariant::Subgroup.supported_by(context, Precision::F32)
    });
    for (backend, context) in with_subgroups {
        assert!(
            variants(context).contains(&Conv2dVariant::Subgroup),
            "{backend}"
        );
    }
}

#[test]
fn the_subgroup_variant_on_a_device_without_subgroups_is_a_typed_error() {
    // Every adapter, opened without SUBGROUP, is a device that lacks what the subgroup variant
    // needs: asking for it must be the typed error, not a shader that fails to compile.
    let geometry = Conv2dGeometry {
        input_size: (4, 4),
        in_channels: 8,
        out_channels: 8,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1, 1, 1),
    };
    for (backend, context) in common::contexts_without(wgpu::Features::SUBGROUP) {
        assert!(
            !Conv2dVariant::Subgroup.supported_by(&context, Precision::F32),
            "{backend}: the subgroup convolution claims to run without SUBGROUP"
        );
        assert!(Conv2dVariant::Portable.supported_by(&context, Precision::F32));
        let weights =
            upload_conv_weights(&context, &geometry, &[0.1; 8 * 8 * 9], None, Precision::F32)
                .expect("weights");
        let x = DeviceMatrix::new(&context, "x", 16, 8).expect("x");
        let y = DeviceMatrix::new(&context, "y", 16, 8).expect("y");
        let operands = Conv2dOperands {
            input: &x,
            weights: &weights,
            geometry,
            batch: 1,
            residual: None,
            output: &y,
            activation: Activation::Relu,
        };
        match prepare_conv2d(&context, &operands, Conv2dVariant::Subgroup) {
            Ok(_) => panic!("{backend}: the subgroup convolution was prepared without SUBGROUP"),
            Err(resgraph::Error::MissingFeature { feature, .. }) => {
                assert!(feature.contains("SUBGROUP"), "{backend}: {feature}");
            }
            Err(other) => panic!("{backend}: expected MissingFeature, got {other}"),
        }
        prepare_conv2d(&context, &operands, Conv2dVariant::Portable)
            .unwrap_or_else(|error| panic!("{backend}: the portable convolution: {error}"));
    }
}
