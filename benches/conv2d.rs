//! Implicit-GEMM convolution throughput, `relu(conv(x, W) + b)`, for every variant the default
//! adapter supports, on the convolution shapes of ResNet-50 at 224×224 and batch 1.
//!
//! Two groups:
//! - `conv2d`: one convolution per benchmark, the shapes of [`LAYER_SHAPES`] (one of each kind
//!   ResNet-50 has: the 7×7 stride-2 stem, the 3×3 convolutions of each stage, a 1×1 expansion and
//!   the last stage's 1×1 stride-2 projection), and, as the yardstick, the subgroup GEMM on each
//!   one's GEMM view (`SubgroupGemmOfTheSameShape`: pixels × out channels × taps · channels4).
//! - `conv2d_resnet50`: all 53 convolutions of torchvision's ResNet-50 (bottleneck blocks with
//!   the stride on the 3×3, as torchvision ≥ 0.13 builds it) recorded in one compute pass, one
//!   submit per iteration: what the convolutions of one forward pass cost together. Pooling,
//!   the residual adds and the classifier are left out; each convolution reads its own input.
//!
//! Throughput is reported in elements per second where one element is one floating-point
//! operation (`2 · output pixels · out_channels · kernel_h · kernel_w · in_channels` per
//! convolution), so criterion's `Gelem/s` reads as GFLOP/s. Each iteration submits the dispatches
//! and waits for the GPU, so GPU work is inside the timing.
//!
//! `RESGRAPH_BENCH_SMOKE=1` shrinks both to tiny shapes for CI, where
//! `cargo bench --bench conv2d -- --test` runs each benchmark once.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use resgraph::epilogue::Activation;
use resgraph::gpu::buffers::DeviceMatrix;
use resgraph::gpu::context::{AdapterOptions, GpuContext};
use resgraph::kernels::PreparedKernel;
use resgraph::kernels::conv2d::{
    Conv2dGeometry, Conv2dOperands, Conv2dVariant, prepare_conv2d, upload_conv_weights,
};
use resgraph::kernels::gemm::{GemmOperands, GemmVariant, LinearWeights, prepare_gemm};
use resgraph::precision::Precision;

/// One convolution to benchmark: a name, its input size (square) and channels, and its window.
#[derive(Clone, Copy, Debug)]
struct ConvShape {
    name: &'static str,
    input_size: usize,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl ConvShape {
    fn geometry(&self) -> Conv2dGeometry {
        Conv2dGeometry {
            input_size: (self.input_size, self.input_size),
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: (self.kernel, self.kernel),
            stride: (self.stride, self.stride),
            padding: (self.padding, self.padding, self.padding, self.padding),
        }
    }

    /// Floating-point operations of one image: two per multiply-add.
    fn flops(&self) -> u64 {
        let (out_h, out_w) = self
            .geometry()
            .output_size()
            .expect("a benchmark shape fits its input");
        2 * (out_h * out_w * self.out_channels * self.kernel * self.kernel * self.in_channels)
            as u64
    }
}

const fn shape(
    name: &'static str,
    input_size: usize,
    (in_channels, out_channels): (usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> ConvShape {
    ConvShape {
        name,
        input_size,
        in_channels,
        out_channels,
        kernel,
        stride,
        padding,
    }
}

/// One convolution of each kind ResNet-50 has at 224×224 (the input size given is the layer's).
const LAYER_SHAPES: &[ConvShape] = &[
    shape("stem_7x7s2_3to64_at224", 224, (3, 64), 7, 2, 3),
    // The stem again on an input padded to 4 channels (a zero fourth channel, with zero
    // weights): vec4 loads instead of scalar ones. Its FLOPs count the fourth channel.
    shape("stem_7x7s2_4to64_at224", 224, (4, 64), 7, 2, 3),
    shape("3x3_64to64_at56", 56, (64, 64), 3, 1, 1),
    shape("1x1_64to256_at56", 56, (64, 256), 1, 1, 0),
    shape("3x3_128to128_at28", 28, (128, 128), 3, 1, 1),
    shape("3x3_256to256_at14", 14, (256, 256), 3, 1, 1),
    shape("3x3_512to512_at7", 7, (512, 512), 3, 1, 1),
    shape("1x1s2_1024to2048_at14", 14, (1024, 2048), 1, 2, 0),
];

/// Tiny shapes that exercise the same code (the stem's scalar loads and chunks that straddle
/// taps, vec4 3×3 and a strided 1×1) in seconds.
const SMOKE_LAYER_SHAPES: &[ConvShape] = &[
    shape("smoke_stem_7x7s2_3to16_at19", 19, (3, 16), 7, 2, 3),
    shape("smoke_3x3_16to24_at9", 9, (16, 24), 3, 1, 1),
    shape("smoke_1x1s2_32to48_at8", 8, (32, 48), 1, 2, 0),
];

/// Every convolution of torchvision's ResNet-50 for an `image`×`image` input, with every width
/// divided by `width_divisor` (1 for the real network; the stem keeps its 3 input channels).
fn resnet50_convolutions(image: usize, width_divisor: usize) -> Vec<ConvShape> {
    let width = |channels: usize| (channels / width_divisor).max(1);
    let mut convolutions = vec![shape("stem", image, (3, width(64)), 7, 2, 3)];
    // After the stem (stride 2) and the 3×3 stride-2 max-pool: a quarter of the input's side,
    // rounded as PyTorch's floor rule rounds each.
    let mut size = ((image + 6 - 7) / 2 + 1 + 2 - 3) / 2 + 1;
    let mut channels = width(64);
    // (blocks, bottleneck width, stride of the first block) of each stage.
    for (blocks, stage_width, first_stride) in [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)] {
        let (mid, out) = (width(stage_width), width(stage_width * 4));
        for block in 0..blocks {
            let stride = if block == 0 { first_stride } else { 1 };
            let out_size = (size + 2 - 3) / stride + 1;
            convolutions.push(shape("reduce", size, (channels, mid), 1, 1, 0));
            convolutions.push(shape("3x3", size, (mid, mid), 3, stride, 1));
            convolutions.push(shape("expand", out_size, (mid, out), 1, 1, 0));
            if block == 0 {
                convolutions.push(shape("projection", size, (channels, out), 1, stride, 0));
            }
            channels = out;
            size = out_size;
        }
    }
    convolutions
}

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

/// A prepared convolution (or GEMM) with the buffers it reads and writes (kept alive with it).
struct PreparedConvolution {
    kernel: PreparedKernel,
    _buffers: (LinearWeights, DeviceMatrix, DeviceMatrix),
}

/// Uploads weights and an input for `conv` (batch 1) and prepares it with `variant`, ReLU
/// epilogue.
fn prepare(context: &GpuContext, conv: &ConvShape, variant: Conv2dVariant) -> PreparedConvolution {
    let geometry = conv.geometry();
    let (out_h, out_w) = geometry.output_size().expect("a valid shape");
    let fan_in = conv.in_channels * conv.kernel * conv.kernel;
    let scale = 1.0 / (fan_in as f32).sqrt();
    let weights = upload_conv_weights(
        context,
        &geometry,
        &deterministic_values(conv.out_channels * fan_in, scale),
        Some(&deterministic_values(conv.out_channels, scale)),
        Precision::F32,
    )
    .expect("weights");
    let input_rows = conv.input_size * conv.input_size;
    let input = DeviceMatrix::from_host(
        context,
        "x",
        input_rows,
        conv.in_channels,
        &deterministic_values(input_rows * conv.in_channels, 1.0),
    )
    .expect("input");
    let output = DeviceMatrix::new(context, "y", out_h * out_w, conv.out_channels).expect("output");
    let kernel = prepare_conv2d(
        context,
        &Conv2dOperands {
            input: &input,
            weights: &weights,
            geometry,
            batch: 1,
            residual: None,
            output: &output,
            activation: Activation::Relu,
        },
        variant,
    )
    .expect("prepare");
    PreparedConvolution {
        kernel,
        _buffers: (weights, input, output),
    }
}

fn open_context() -> GpuContext {
    match AdapterOptions::from_env().and_then(|options| GpuContext::new(&options)) {
        Ok(context) => context,
        Err(error) => panic!("the convolution bench needs an adapter: {error}"),
    }
}

fn supported_variants(context: &GpuContext) -> Vec<Conv2dVariant> {
    Conv2dVariant::ALL
        .into_iter()
        .filter(|variant| variant.supported_by(context, Precision::F32))
        .collect()
}

fn smoke() -> bool {
    std::env::var_os("RESGRAPH_BENCH_SMOKE").is_some()
}

fn bench_layers(criterion: &mut Criterion) {
    let context = open_context();
    let shapes = if smoke() {
        SMOKE_LAYER_SHAPES
    } else {
        LAYER_SHAPES
    };
    eprintln!(
        "conv2d bench on {} ({}, {})",
        context.adapter_info().name,
        context.adapter_info().backend,
        context.adapter_info().driver_info
    );
    let mut group = criterion.benchmark_group("conv2d");
    group.sample_size(10);
    for variant in supported_variants(&context) {
        for conv in shapes {
            let prepared = prepare(&context, conv, variant);
            group.throughput(Throughput::Elements(conv.flops()));
            group.bench_function(
                BenchmarkId::new(format!("{variant:?}"), conv.name),
                |bencher| {
                    bencher.iter(|| {
                        prepared.kernel.submit(&context).expect("submit");
                        context.wait_idle().expect("wait");
                    });
                },
            );
        }
    }
    // The yardstick: the subgroup GEMM on each convolution's GEMM view (output pixels × out
    // channels × kernel taps · channels4), as if the im2col matrix had been materialised. The
    // issue asks the convolution to be as efficient as this.
    if GemmVariant::Subgroup.supported_by(&context, Precision::F32) {
        for conv in shapes {
            let gemm = prepare_equivalent_gemm(&context, conv);
            group.throughput(Throughput::Elements(conv.flops()));
            group.bench_function(
                BenchmarkId::new("SubgroupGemmOfTheSameShape", conv.name),
                |bencher| {
                    bencher.iter(|| {
                        gemm.kernel.submit(&context).expect("submit");
                        context.wait_idle().expect("wait");
                    });
                },
            );
        }
    }
    group.finish();
}

/// The subgroup GEMM with the rows, columns and inner dimension of `conv`'s implicit GEMM, on
/// random data, with the same ReLU epilogue.
fn prepare_equivalent_gemm(context: &GpuContext, conv: &ConvShape) -> PreparedConvolution {
    let geometry = conv.geometry();
    let (out_h, out_w) = geometry.output_size().expect("a valid shape");
    let (rows, cols, inner) = (out_h * out_w, conv.out_channels, geometry.inner());
    let scale = 1.0 / (inner as f32).sqrt();
    let weights = LinearWeights::upload(
        context,
        cols,
        inner,
        &deterministic_values(cols * inner, scale),
        Some(&deterministic_values(cols, scale)),
    )
    .expect("weights");
    let input = DeviceMatrix::from_host(
        context,
        "x",
        rows,
        inner,
        &deterministic_values(rows * inner, 1.0),
    )
    .expect("input");
    let output = DeviceMatrix::new(context, "y", rows, cols).expect("output");
    let kernel = prepare_gemm(
        context,
        &GemmOperands {
            input: &input,
            weights: &weights,
            residual: None,
            output: &output,
            activation: Activation::Relu,
        },
        GemmVariant::Subgroup,
    )
    .expect("prepare");
    PreparedConvolution {
        kernel,
        _buffers: (weights, input, output),
    }
}

fn bench_resnet50(criterion: &mut Criterion) {
    let context = open_context();
    let (image, width_divisor, name) = if smoke() {
        (32, 16, "smoke_all_convolutions_32x32_width_over_16")
    } else {
        (224, 1, "all_53_convolutions_224x224_batch1")
    };
    let convolutions = resnet50_convolutions(image, width_divisor);
    let flops: u64 = convolutions.iter().map(ConvShape::flops).sum();
    eprintln!(
        "ResNet-50 convolutions at {image}x{image} (widths / {width_divisor}): {} convolutions, \
         {:.3} GFLOP per image",
        convolutions.len(),
        flops as f64 * 1e-9
    );
    let mut group = criterion.benchmark_group("conv2d_resnet50");
    group.sample_size(10);
    for variant in supported_variants(&context) {
        let prepared: Vec<PreparedConvolution> = convolutions
            .iter()
            .map(|conv| prepare(&context, conv, variant))
            .collect();
        group.throughput(Throughput::Elements(flops));
        group.bench_function(BenchmarkId::new(format!("{variant:?}"), name), |bencher| {
            bencher.iter(|| {
                context
                    .submit_pass("ResNet-50 convolutions", |pass| {
                        for conv in &prepared {
                            conv.kernel.record(pass);
                        }
                    })
                    .expect("submit");
                context.wait_idle().expect("wait");
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layers, bench_resnet50);
criterion_main!(benches);
