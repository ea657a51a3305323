//! Max, average and global average pooling against the f64 reference, on every test adapter:
//! ResNet's 3×3 stride-2 max pooling at awkward sizes, 1×1 images, odd channel counts (scalar
//! loads) and multiples of 4 (vec4 loads), asymmetric padding, average pooling with and without
//! `count_include_pad`, fewer images than prepared, NaN propagation, f16 storage and typed errors
//! for bad operands, always with the output poisoned with NaN first.

mod common;

use resgraph::Error;
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::GpuContext;
use resgraph::kernels::PreparedKernel;
use resgraph::kernels::pool::{
    GlobalAvgPoolOperands, Pool2dGeometry, Pool2dOperands, prepare_avg_pool2d,
    prepare_global_avg_pool, prepare_max_pool2d,
};
use resgraph::precision::Precision;
use resgraph::reference::{avg_pool2d_f64, global_avg_pool_f64, max_pool2d_f64, to_f64};

/// Which reduction a 2-D pooling applies over its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pooling {
    Max,
    Average { count_include_pad: bool },
}

const EVERY_POOLING: [Pooling; 3] = [
    Pooling::Max,
    Pooling::Average {
        count_include_pad: true,
    },
    Pooling::Average {
        count_include_pad: false,
    },
];

fn geometry(
    (height, width, channels): (usize, usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize, usize, usize),
) -> Pool2dGeometry {
    Pool2dGeometry {
        input_size: (height, width),
        channels,
        kernel,
        stride,
        padding,
    }
}

/// `values` as they are after a round trip through `precision` storage, so that the reference
/// sees exactly what the device reads.
fn stored(values: &[f32], precision: Precision) -> Vec<f32> {
    precision.decode(&precision.encode(values))
}

/// Uploads `values` as a `rows × cols` matrix stored in `precision`.
fn upload(
    context: &GpuContext,
    label: &str,
    (rows, cols): (usize, usize),
    values: &[f32],
    precision: Precision,
) -> DeviceMatrix {
    let matrix = DeviceMatrix::new_with_precision(context, label, rows, cols, precision)
        .expect("allocate a matrix");
    matrix.write(context, values).expect("upload a matrix");
    matrix
}

/// Allocates a `rows × cols` output stored in `precision` and poisons it with NaN, so that a
/// value the kernel never writes cannot pass for a result.
fn poisoned_output(
    context: &GpuContext,
    (rows, cols): (usize, usize),
    precision: Precision,
) -> DeviceMatrix {
    let output = DeviceMatrix::new_with_precision(context, "pooled", rows, cols, precision)
        .expect("allocate the output");
    output.fill(context, f32::NAN).expect("poison the output");
    output
}

/// Re-aims `kernel` at `images` images, runs it, waits, and reads `output` back whole.
fn run_images(
    context: &GpuContext,
    kernel: &PreparedKernel,
    images: usize,
    output: &DeviceMatrix,
) -> Vec<f32> {
    kernel.set_rows(context, images).expect("set the images");
    context
        .submit_pass("pool test", |pass| kernel.record_rows(pass, images))
        .expect("submit");
    context.wait_idle().expect("wait");
    output.read(context).expect("read the output")
}

/// Runs `pooling` over `input` (`batch` NHWC images) on the device for the first `images`
/// images, and returns the whole output, poisoned past those images.
fn pool_on_device(
    context: &GpuContext,
    pooling: Pooling,
    geometry: Pool2dGeometry,
    (batch, images): (usize, usize),
    input: &[f32],
    precision: Precision,
) -> Vec<f32> {
    let (in_h, in_w) = geometry.input_size;
    let (out_h, out_w) = geometry.output_size().expect("a valid geometry");
    let input = upload(
        context,
        "x",
        (batch * in_h * in_w, geometry.channels),
        input,
        precision,
    );
    let output = poisoned_output(
        context,
        (batch * out_h * out_w, geometry.channels),
        precision,
    );
    let operands = Pool2dOperands {
        input: &input,
        geometry,
        batch,
        output: &output,
    };
    let kernel = match pooling {
        Pooling::Max => prepare_max_pool2d(context, &operands),
        Pooling::Average { count_include_pad } => {
            prepare_avg_pool2d(context, &operands, count_include_pad)
        }
    }
    .expect("prepare the pooling");
    assert_eq!(kernel.max_rows(), batch, "the prepared rows are images");
    run_images(context, &kernel, images, &output)
}

/// The reference pooling of the first `images` images of `input`.
fn pool_reference(
    pooling: Pooling,
    geometry: Pool2dGeometry,
    images: usize,
    input: &[f32],
) -> Vec<f64> {
    let (in_h, in_w) = geometry.input_size;
    let shape = (images, in_h, in_w, geometry.channels);
    let input = to_f64(&input[..images * in_h * in_w * geometry.channels]);
    let (reference, size) = match pooling {
        Pooling::Max => max_pool2d_f64(
            &input,
            shape,
            geometry.kernel,
            geometry.stride,
            geometry.padding,
        ),
        Pooling::Average { count_include_pad } => avg_pool2d_f64(
            &input,
            shape,
            geometry.kernel,
            geometry.stride,
            geometry.padding,
            count_include_pad,
        ),
    };
    assert_eq!(size, geometry.output_size().expect("a valid geometry"));
    reference
}

/// Splits `out` after the values of the images computed, and checks that everything past them
/// is still poisoned: the dispatch covered only those images.
fn computed_part<'a>(out: &'a [f32], computed_values: usize, what: &str) -> &'a [f32] {
    let (computed, rest) = out.split_at(computed_values);
    if let Some(index) = rest.iter().position(|value| !value.is_nan()) {
        panic!(
            "{what}: value {} past the images asked for was written ({})",
            computed_values + index,
            rest[index]
        );
    }
    computed
}

/// Compares a pooling's output with the reference: max pooling exactly (it only selects
/// values), average pooling within the precision's tolerance.
fn assert_pooled(
    pooling: Pooling,
    computed: &[f32],
    reference: &[f64],
    precision: Precision,
    what: &str,
) {
    if pooling == Pooling::Max {
        assert_eq!(computed.len(), reference.len(), "{what}: output length");
        for (index, (&value, &expected)) in computed.iter().zip(reference).enumerate() {
            assert!(
                f64::from(value) == expected,
                "{what}: output[{index}] = {value}, the reference has {expected}"
            );
        }
    } else {
        common::assert_close(computed, reference, precision.tolerance(), what);
    }
}

/// Runs `pooling` on `context` for `images` of `batch` random images and checks it against the
/// reference, the rest of the output still poisoned.
fn check_pooling(
    context: &GpuContext,
    pooling: Pooling,
    geometry: Pool2dGeometry,
    (batch, images): (usize, usize),
    precision: Precision,
    seed: u64,
) {
    let (in_h, in_w) = geometry.input_size;
    let (out_h, out_w) = geometry.output_size().expect("a valid geometry");
    let mut rng = common::rng(seed);
    let input = stored(
        &common::uniform(&mut rng, batch * in_h * in_w * geometry.channels, -1.0, 1.0),
        precision,
    );
    let out = pool_on_device(
        context,
        pooling,
        geometry,
        (batch, images),
        &input,
        precision,
    );
    let what = format!("{pooling:?} {geometry:?} {precision} batch {batch} images {images}");
    let computed = computed_part(&out, images * out_h * out_w * geometry.channels, &what);
    let reference = pool_reference(pooling, geometry, images, &input);
    assert_pooled(pooling, computed, &reference, precision, &what);
}

/// Pooling cases at the sizes a ResNet has and at awkward ones, each with its batch.
fn pooling_cases() -> Vec<(Pool2dGeometry, usize)> {
    vec![
        // ResNet's max pooling after the stem, 3x3 stride 2 padding 1, at an odd size, with
        // vec4 loads (64 channels) and scalar loads (3 channels).
        (geometry((23, 17, 64), (3, 3), (2, 2), (1, 1, 1, 1)), 3),
        (geometry((23, 17, 3), (3, 3), (2, 2), (1, 1, 1, 1)), 1),
        // A 1x1 image: a 1x1 window, and a 3x3 window that is all padding but its centre.
        (geometry((1, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0)), 1),
        (geometry((1, 1, 4), (3, 3), (1, 1), (1, 1, 1, 1)), 3),
        // A non-square window and stride with asymmetric padding, 17 channels (4 groups of 4
        // and one of 1).
        (geometry((3, 5, 17), (2, 3), (1, 2), (0, 1, 1, 0)), 3),
        // Overlapping windows, padding only on the top and right, 4 channels.
        (geometry((17, 13, 4), (3, 3), (2, 2), (1, 0, 0, 1)), 1),
        // Windows that skip input (stride larger than the window), one channel.
        (geometry((17, 13, 1), (2, 2), (3, 3), (0, 0, 0, 0)), 3),
        // A 2x2 stride-2 pooling without padding, as VGG-style networks have.
        (geometry((8, 6, 16), (2, 2), (2, 2), (0, 0, 0, 0)), 3),
        // A window as large as the image (an average pooling to 1x1 written as a window).
        (geometry((7, 7, 12), (7, 7), (1, 1), (0, 0, 0, 0)), 3),
    ]
}

#[test]
fn every_pooling_matches_the_reference_on_every_backend() {
    for (backend, context) in common::contexts() {
        for (index, (geometry, batch)) in pooling_cases().into_iter().enumerate() {
            for pooling in EVERY_POOLING {
                eprintln!("{backend}: {pooling:?} {geometry:?} batch {batch}");
                check_pooling(
                    context,
                    pooling,
                    geometry,
                    (batch, batch),
                    Precision::F32,
                    100 + index as u64,
                );
            }
        }
    }
}

#[test]
fn max_pooling_padding_never_wins_over_negative_inputs() {
    // With every input negative, a padding that counted as zero would win at every border.
    for (backend, context) in common::contexts() {
        for channels in [3, 8] {
            let geometry = geometry((5, 6, channels), (3, 3), (2, 2), (1, 1, 1, 1));
            let input: Vec<f32> = (0..5 * 6 * channels)
                .map(|index| -1.0 - index as f32 / 64.0)
                .collect();
            let out = pool_on_device(
                context,
                Pooling::Max,
                geometry,
                (1, 1),
                &input,
                Precision::F32,
            );
            let reference = pool_reference(Pooling::Max, geometry, 1, &input);
            assert!(reference.iter().all(|&value| value < 0.0));
            assert_pooled(
                Pooling::Max,
                &out,
                &reference,
                Precision::F32,
                &format!("{backend} negative inputs, {channels} channels"),
            );
        }
    }
}

#[test]
fn a_smaller_batch_than_prepared_computes_only_its_images() {
    for (backend, context) in common::contexts() {
        for geometry in [
            geometry((9, 7, 8), (3, 3), (2, 2), (1, 1, 1, 1)),
            geometry((9, 7, 5), (2, 2), (1, 1), (0, 1, 1, 0)),
        ] {
            for pooling in EVERY_POOLING {
                for images in [1, 2, 3] {
                    eprintln!("{backend}: {pooling:?} {geometry:?} images {images} of 3");
                    check_pooling(
                        context,
                        pooling,
                        geometry,
                        (3, images),
                        Precision::F32,
                        200 + images as u64,
                    );
                }
            }
        }
    }
}

/// Checks that `out` has a NaN exactly where `reference` has one, and matches it elsewhere.
fn assert_nan_where_the_reference_has_nan(out: &[f32], reference: &[f64], what: &str) {
    assert_eq!(out.len(), reference.len(), "{what}: output length");
    let mut nans = 0;
    for (index, (&value, &expected)) in out.iter().zip(reference).enumerate() {
        if expected.is_nan() {
            nans += 1;
            assert!(value.is_nan(), "{what}: output[{index}] = {value}, not NaN");
        } else {
            assert!(
                (f64::from(value) - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                "{what}: output[{index}] = {value}, the reference has {expected}"
            );
        }
    }
    assert!(nans > 0, "{what}: the case has no NaN output to check");
}

#[test]
fn a_window_holding_a_nan_pools_to_nan_wherever_the_nan_sits_in_it() {
    // One NaN per channel, at a different pixel for each: the window's first tap, its centre,
    // its last tap, and on the image's border; max pooling must keep it whether or not the
    // running maximum has already been set (some drivers' `max` drops a NaN argument).
    let nan_pixels = [(0usize, 0usize), (2, 2), (3, 4), (4, 0), (1, 3)];
    for (backend, context) in common::contexts() {
        for channels in [5, 8] {
            let geometry = geometry((5, 5, channels), (3, 3), (2, 2), (1, 1, 1, 1));
            let mut input: Vec<f32> = (0..25 * channels)
                .map(|index| ((index * 37) % 23) as f32 / 8.0 - 1.0)
                .collect();
            for (channel, &(y, x)) in nan_pixels.iter().enumerate().take(channels) {
                input[(y * 5 + x) * channels + channel] = f32::NAN;
            }
            for pooling in EVERY_POOLING {
                let out =
                    pool_on_device(context, pooling, geometry, (1, 1), &input, Precision::F32);
                let reference = pool_reference(pooling, geometry, 1, &input);
                assert_nan_where_the_reference_has_nan(
                    &out,
                    &reference,
                    &format!("{backend} {pooling:?} {channels} channels"),
                );
            }
        }
    }
}

#[test]
fn f16_storage_matches_the_reference_where_the_adapter_has_shader_f16() {
    let contexts = common::contexts_where("SHADER_F16", |context| {
        context.features().contains(wgpu::Features::SHADER_F16)
    });
    for (backend, context) in contexts {
        for (index, (geometry, batch)) in pooling_cases().into_iter().enumerate() {
            for pooling in EVERY_POOLING {
                eprintln!("{backend} f16: {pooling:?} {geometry:?} batch {batch}");
                check_pooling(
                    context,
                    pooling,
                    geometry,
                    (batch, batch.min(2)),
                    Precision::F16,
                    300 + index as u64,
                );
            }
        }
        for (index, (input_size, channels, batch)) in global_cases().into_iter().enumerate() {
            check_global_avg_pool(
                context,
                input_size,
                channels,
                (batch, batch),
                Precision::F16,
                400 + index as u64,
            );
        }
    }
}

/// Runs global average pooling over `input` (`batch` NHWC images) on the device for the first
/// `images` images, and returns the whole output, poisoned past those images.
fn global_avg_pool_on_device(
    context: &GpuContext,
    input_size: (usize, usize),
    channels: usize,
    (batch, images): (usize, usize),
    input: &[f32],
    precision: Precision,
) -> Vec<f32> {
    let (height, width) = input_size;
    let input = upload(
        context,
        "x",
        (batch * height * width, channels),
        input,
        precision,
    );
    let output = poisoned_output(context, (batch, channels), precision);
    let kernel = prepare_global_avg_pool(
        context,
        &GlobalAvgPoolOperands {
            input: &input,
            input_size,
            channels,
            batch,
            output: &output,
        },
    )
    .expect("prepare the global average pooling");
    assert_eq!(kernel.max_rows(), batch, "the prepared rows are images");
    run_images(context, &kernel, images, &output)
}

/// Runs global average pooling for `images` of `batch` random images and checks it against the
/// reference, the rest of the output still poisoned.
fn check_global_avg_pool(
    context: &GpuContext,
    input_size: (usize, usize),
    channels: usize,
    (batch, images): (usize, usize),
    precision: Precision,
    seed: u64,
) {
    let (height, width) = input_size;
    let mut rng = common::rng(seed);
    let input = stored(
        &common::uniform(&mut rng, batch * height * width * channels, -1.0, 1.0),
        precision,
    );
    let out = global_avg_pool_on_device(
        context,
        input_size,
        channels,
        (batch, images),
        &input,
        precision,
    );
    let what = format!(
        "global average pooling {height}x{width}x{channels} {precision} batch {batch} images \
         {images}"
    );
    let computed = computed_part(&out, images * channels, &what);
    let reference = global_avg_pool_f64(
        &to_f64(&input[..images * height * width * channels]),
        (images, height, width, channels),
    );
    common::assert_close(computed, &reference, precision.tolerance(), &what);
}

/// Global average pooling cases: (input size, channels, batch).
fn global_cases() -> Vec<((usize, usize), usize, usize)> {
    vec![
        // A ResNet-18's last feature map, and a ResNet-50's channel count.
        ((7, 7), 64, 3),
        ((7, 7), 2048, 1),
        // A 1x1 image: the mean is the value itself.
        ((1, 1), 3, 3),
        ((3, 5), 17, 3),
        ((17, 13), 1, 1),
        ((17, 13), 4, 3),
    ]
}

#[test]
fn global_average_pooling_matches_the_reference_on_every_backend() {
    for (backend, context) in common::contexts() {
        for (index, (input_size, channels, batch)) in global_cases().into_iter().enumerate() {
            eprintln!("{backend}: global average pooling {input_size:?}x{channels} batch {batch}");
            check_global_avg_pool(
                context,
                input_size,
                channels,
                (batch, batch),
                Precision::F32,
                500 + index as u64,
            );
        }
    }
}

#[test]
fn global_average_pooling_of_fewer_images_than_prepared_computes_only_those() {
    for (_, context) in common::contexts() {
        for channels in [6, 8] {
            for images in [1, 2, 4] {
                check_global_avg_pool(
                    context,
                    (5, 3),
                    channels,
                    (4, images),
                    Precision::F32,
                    600 + images as u64,
                );
            }
        }
    }
}

#[test]
fn global_average_pooling_of_a_channel_holding_a_nan_is_nan() {
    for (backend, context) in common::contexts() {
        for channels in [5, 8] {
            let (batch, height, width) = (2, 3, 4);
            let mut input: Vec<f32> = (0..batch * height * width * channels)
                .map(|index| ((index * 29) % 17) as f32 / 4.0 - 2.0)
                .collect();
            // Image 0 channel 1 (its first pixel) and image 1 channel 4 (its last pixel).
            input[1] = f32::NAN;
            input[((batch * height * width) - 1) * channels + 4] = f32::NAN;
            let out = global_avg_pool_on_device(
                context,
                (height, width),
                channels,
                (batch, batch),
                &input,
                Precision::F32,
            );
            let reference = global_avg_pool_f64(&to_f64(&input), (batch, height, width, channels));
            assert_nan_where_the_reference_has_nan(
                &out,
                &reference,
                &format!("{backend} global average pooling, {channels} channels"),
            );
            assert_eq!(
                out.iter().filter(|value| value.is_nan()).count(),
                2,
                "{backend}: exactly the two channels holding a NaN are NaN"
            );
        }
    }
}

#[test]
fn operands_that_do_not_fit_are_typed_errors() {
    let context = common::primary_context();
    let geometry = geometry((6, 6, 3), (3, 3), (2, 2), (1, 1, 1, 1));
    // (6 + 2 - 3) / 2 + 1 = 3.
    let input = DeviceMatrix::new(context, "x", 2 * 36, 3).expect("x");
    let output = DeviceMatrix::new(context, "y", 2 * 9, 3).expect("y");
    let wrong_rows = DeviceMatrix::new(context, "x", 2 * 36 - 1, 3).expect("x");
    let wrong_cols = DeviceMatrix::new(context, "y", 2 * 9, 4).expect("y");
    let f16_output =
        DeviceMatrix::new_with_precision(context, "y", 2 * 9, 3, Precision::F16).expect("y");
    let operands = |input, geometry, batch, output| Pool2dOperands {
        input,
        geometry,
        batch,
        output,
    };
    let max = |operands: &Pool2dOperands<'_>| prepare_max_pool2d(context, operands);
    let average = |operands: &Pool2dOperands<'_>| prepare_avg_pool2d(context, operands, false);
    type Prepare<'a> = &'a dyn Fn(&Pool2dOperands<'_>) -> resgraph::Result<PreparedKernel>;
    for prepare in [&max as Prepare<'_>, &average] {
        let error = prepare(&operands(&wrong_rows, geometry, 2, &output)).expect_err("input");
        assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
        let error = prepare(&operands(&input, geometry, 2, &wrong_cols)).expect_err("output");
        assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
        let error = prepare(&operands(&input, geometry, 0, &output)).expect_err("no images");
        assert!(
            matches!(
                error,
                Error::ZeroSized {
                    dimension: "batch",
                    ..
                }
            ),
            "{error}"
        );
        let too_big = Pool2dGeometry {
            kernel: (9, 3),
            ..geometry
        };
        let error = prepare(&operands(&input, too_big, 2, &output)).expect_err("window");
        assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
        let in_padding = Pool2dGeometry {
            padding: (3, 1, 1, 1),
            ..geometry
        };
        let error = prepare(&operands(&input, in_padding, 2, &output)).expect_err("padding");
        assert!(matches!(error, Error::UnsupportedShape { .. }), "{error}");
        // A 1x1 stride-1 window keeps the shape, so only the aliasing is wrong.
        let identity = Pool2dGeometry {
            kernel: (1, 1),
            stride: (1, 1),
            padding: (0, 0, 0, 0),
            ..geometry
        };
        let error = prepare(&operands(&input, identity, 2, &input)).expect_err("aliased");
        assert!(
            matches!(
                error,
                Error::AliasedOutput {
                    operand: "input",
                    ..
                }
            ),
            "{error}"
        );
        let error = prepare(&operands(&input, geometry, 2, &f16_output)).expect_err("precision");
        assert!(
            matches!(
                error,
                Error::PrecisionMismatch {
                    operand: "output",
                    ..
                }
            ),
            "{error}"
        );
    }

    let global = |input, input_size, batch, output| {
        prepare_global_avg_pool(
            context,
            &GlobalAvgPoolOperands {
                input,
                input_size,
                channels: 3,
                batch,
                output,
            },
        )
    };
    let pooled = DeviceMatrix::new(context, "y", 2, 3).expect("y");
    let error = global(&input, (6, 5), 2, &pooled).expect_err("input size");
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    let error = global(&input, (6, 6), 2, &output).expect_err("output rows");
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    let error = global(&input, (6, 6), 0, &pooled).expect_err("no images");
    assert!(matches!(error, Error::ZeroSized { .. }), "{error}");
    let error = global(&input, (0, 6), 2, &pooled).expect_err("no pixels");
    assert!(matches!(error, Error::ZeroSized { .. }), "{error}");
    let whole = DeviceMatrix::new(context, "y", 1, 3).expect("y");
    let error = global(&whole, (1, 1), 1, &whole).expect_err("aliased");
    assert!(matches!(error, Error::AliasedOutput { .. }), "{error}");

    // set_rows takes images: no more than the batch prepared.
    let kernel = global(&input, (6, 6), 2, &pooled).expect("prepare");
    let error = kernel
        .set_rows(context, 3)
        .expect_err("more images than prepared");
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
}
