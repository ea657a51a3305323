//! Host side of `shaders/conv2d.wgsl`: a 2-D convolution as an implicit GEMM, with the GEMM's
//! fused epilogue (bias, residual add, ReLU) and no materialised im2col buffer.
//!
//! Activations are NHWC matrices: a batch of `height × width` images with `channels` values per
//! pixel is a [`DeviceMatrix`] of `batch · height · width` rows and `channels` columns, so that
//! the output of a convolution is a matrix of the same kind and a 1×1 convolution is exactly a
//! GEMM over pixels. Weights, given in PyTorch's `[out, in, kernel_h, kernel_w]` layout, are
//! reordered once at upload to `[out, kernel_h, kernel_w, channels4]` (channels padded with zero
//! weights to a multiple of 4) and stored in the GEMM's blocked layout ([`LinearWeights`]).
//!
//! Two shader variants read that one layout ([`Conv2dVariant`]): a portable one, and one that
//! shares each chunk of 8 k's of weights across 8 invocations with subgroup broadcasts, as the
//! subgroup GEMM does.

use crate::epilogue::Activation;
use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::BindingKind;
use crate::kernels::gemm::{
    COLUMN_BLOCK, GemmVariant, INNER_CHUNK, LinearWeights, ROWS_PER_WORKGROUP,
};
use crate::kernels::launch::{
    LaunchDescriptor, LaunchShape, PreparedKernel, check_operands, param_bytes, to_u32,
};
use crate::kernels::source::{
    ACTIVATION, FUSED_EPILOGUE, KernelSource, OPERAND_BINDINGS, no_declarations,
};
use crate::kernels::workgroup_count;
use crate::precision::Precision;
use crate::shape::window_output_size;

/// The bindings of both convolution kernels, in binding order: the GEMM's, with NHWC
/// activations.
const CONV2D_BINDINGS: &[BindingKind] = &[
    BindingKind::Uniform,          // 0: params
    BindingKind::StorageRead,      // 1: input, NHWC
    BindingKind::StorageRead,      // 2: weights, 16-column blocks over (kh, kw, c)
    BindingKind::StorageRead,      // 3: bias, padded to 16
    BindingKind::StorageRead,      // 4: residual, NHWC like the output
    BindingKind::StorageReadWrite, // 5: output, NHWC
    BindingKind::StorageRead,      // 6: input again, as vec4 when channels % 4 == 0
];

/// The portable implicit-GEMM convolution: register blocking only, runs on every adapter.
pub const CONV2D_KERNEL: KernelSource = KernelSource {
    name: "conv2d",
    body: include_str!("../../shaders/conv2d.wgsl"),
    pieces: &[OPERAND_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "conv2d",
    bindings: CONV2D_BINDINGS,
};

/// The subgroup implicit-GEMM convolution: each chunk of 8 k's of weights is loaded once per 8
/// invocations and shared with `subgroupBroadcast`, as in the subgroup GEMM.
pub const CONV2D_SUBGROUP_KERNEL: KernelSource = KernelSource {
    name: "conv2d_subgroup",
    body: include_str!("../../shaders/conv2d_subgroup.wgsl"),
    pieces: &[OPERAND_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "conv2d",
    bindings: CONV2D_BINDINGS,
};

/// Which convolution shader runs a dispatch. Both read the same weight layout
/// ([`upload_conv_weights`]), so one upload serves either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conv2dVariant {
    /// `shaders/conv2d.wgsl`: register blocking, no optional features.
    Portable,
    /// `shaders/conv2d_subgroup.wgsl`: register blocking plus weights shared across 8
    /// invocations through subgroup broadcasts. Needs what [`GemmVariant::Subgroup`] needs.
    Subgroup,
}

impl Conv2dVariant {
    /// Every variant, for tests and benchmarks.
    pub const ALL: [Conv2dVariant; 2] = [Conv2dVariant::Portable, Conv2dVariant::Subgroup];

    /// Whether the device can run this variant with `precision` storage: the subgroup variant
    /// needs the `SUBGROUP` feature and subgroups of at least 8 invocations, exactly as the
    /// subgroup GEMM does.
    pub fn supported_by(self, context: &GpuContext, precision: Precision) -> bool {
        match self {
            Conv2dVariant::Portable => true,
            Conv2dVariant::Subgroup => GemmVariant::Subgroup.supported_by(context, precision),
        }
    }

    /// What the device lacks when [`Self::supported_by`] is false, for the error message.
    fn requirement(self) -> &'static str {
        match self {
            Conv2dVariant::Portable => "nothing",
            Conv2dVariant::Subgroup => "SUBGROUP (with subgroups of at least 8 invocations)",
        }
    }

    /// The shader of this variant.
    pub fn kernel(self) -> &'static KernelSource {
        match self {
            Conv2dVariant::Portable => &CONV2D_KERNEL,
            Conv2dVariant::Subgroup => &CONV2D_SUBGROUP_KERNEL,
        }
    }
}

/// The shape of one convolution: what it reads and how its window moves. Dilation is 1 and
/// groups is 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Input height and width.
    pub input_size: (usize, usize),
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride along height and width.
    pub stride: (usize, usize),
    /// Zero padding `(top, left, bottom, right)`.
    pub padding: (usize, usize, usize, usize),
}

impl Conv2dGeometry {
    /// The output height and width, or an error naming what does not fit: a zero-sized
    /// dimension, a zero stride, or a kernel larger than the padded input.
    pub fn output_size(&self) -> Result<(usize, usize)> {
        let what = "2-D convolution";
        for (dimension, value) in [
            ("input height", self.input_size.0),
            ("input width", self.input_size.1),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("kernel height", self.kernel.0),
            ("kernel width", self.kernel.1),
            ("stride height", self.stride.0),
            ("stride width", self.stride.1),
        ] {
            if value == 0 {
                return Err(Error::zero_sized(what, dimension));
            }
        }
        window_output_size(self.input_size, self.kernel, self.stride, self.padding).ok_or_else(
            || {
                Error::shape_mismatch(
                    what,
                    format!(
                        "a kernel that fits the input {}x{} padded by {:?}",
                        self.input_size.0, self.input_size.1, self.padding
                    ),
                    format!("a {}x{} kernel", self.kernel.0, self.kernel.1),
                )
            },
        )
    }

    /// Input channels padded to a multiple of 4: the weights' channel stride.
    pub fn channels4(&self) -> usize {
        self.in_channels.next_multiple_of(4)
    }

    /// The GEMM's inner dimension: `kernel_h · kernel_w · channels4`.
    pub fn inner(&self) -> usize {
        self.kernel.0 * self.kernel.1 * self.channels4()
    }
}

/// Reorders a PyTorch `[out, in, kernel_h, kernel_w]` convolution weight to the rows the
/// implicit GEMM reads, `[out, kernel_h, kernel_w, channels4]`, with zeros for the padded
/// channels.
pub(crate) fn conv_weights_to_gemm_rows(weight: &[f32], geometry: &Conv2dGeometry) -> Vec<f32> {
    let (kernel_h, kernel_w) = geometry.kernel;
    let (in_channels, channels4) = (geometry.in_channels, geometry.channels4());
    let mut rows = vec![0.0f32; geometry.out_channels * geometry.inner()];
    for oc in 0..geometry.out_channels {
        for c in 0..in_channels {
            for kh in 0..kernel_h {
                for kw in 0..kernel_w {
                    let from = ((oc * in_channels + c) * kernel_h + kh) * kernel_w + kw;
                    let to = oc * geometry.inner() + (kh * kernel_w + kw) * channels4 + c;
                    rows[to] = weight[from];
                }
            }
        }
    }
    rows
}

/// Uploads a convolution's weights (PyTorch `[out, in, kernel_h, kernel_w]`) and bias
/// (`[out]`, zeros when `None`) in the implicit GEMM's layout, stored in `precision`.
pub fn upload_conv_weights(
    context: &GpuContext,
    geometry: &Conv2dGeometry,
    weight: &[f32],
    bias: Option<&[f32]>,
    precision: Precision,
) -> Result<LinearWeights> {
    geometry.output_size()?;
    let expected = geometry
        .out_channels
        .checked_mul(geometry.in_channels)
        .and_then(|n| n.checked_mul(geometry.kernel.0))
        .and_then(|n| n.checked_mul(geometry.kernel.1));
    if expected != Some(weight.len()) {
        return Err(Error::shape_mismatch(
            "2-D convolution weight",
            format!(
                "[{}, {}, {}, {}]",
                geometry.out_channels, geometry.in_channels, geometry.kernel.0, geometry.kernel.1
            ),
            format!("{} values", weight.len()),
        ));
    }
    let rows = conv_weights_to_gemm_rows(weight, geometry);
    LinearWeights::upload_with_precision(
        context,
        geometry.out_channels,
        geometry.inner(),
        &rows,
        bias,
        precision,
    )
}

/// The operands of one fused convolution.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOperands<'a> {
    /// The input, NHWC: `batch · height · width` rows of `in_channels`.
    pub input: &'a DeviceMatrix,
    /// W and b, from [`upload_conv_weights`] with the same geometry.
    pub weights: &'a LinearWeights,
    /// The convolution's shape.
    pub geometry: Conv2dGeometry,
    /// Images in the batch.
    pub batch: usize,
    /// R, NHWC like the output, added before the activation when present.
    pub residual: Option<&'a DeviceMatrix>,
    /// The result, NHWC: `batch · out_h · out_w` rows of `out_channels`.
    pub output: &'a DeviceMatrix,
    /// The activation applied last.
    pub activation: Activation,
}

impl Conv2dOperands<'_> {
    /// Checks every shape against the geometry, that the output aliases no input and that every
    /// matrix has the weights' precision; returns the output size.
    fn validate(&self) -> Result<(usize, usize)> {
        let geometry = &self.geometry;
        let (out_h, out_w) = geometry.output_size()?;
        if self.batch == 0 {
            return Err(Error::zero_sized("2-D convolution", "batch"));
        }
        let (in_h, in_w) = geometry.input_size;
        let input_rows = self.batch * in_h * in_w;
        if (self.input.rows(), self.input.cols()) != (input_rows, geometry.in_channels) {
            return Err(Error::shape_mismatch(
                "2-D convolution input",
                format!(
                    "[{input_rows}, {}] (batch {} of {in_h}x{in_w} NHWC)",
                    geometry.in_channels, self.batch
                ),
                format!("[{}, {}]", self.input.rows(), self.input.cols()),
            ));
        }
        if (self.weights.out_features(), self.weights.in_features())
            != (geometry.out_channels, geometry.inner())
        {
            return Err(Error::shape_mismatch(
                "2-D convolution weights",
                format!(
                    "weights uploaded for this geometry ({} inner)",
                    geometry.inner()
                ),
                format!(
                    "{} x {}",
                    self.weights.out_features(),
                    self.weights.in_features()
                ),
            ));
        }
        let output_rows = self.batch * out_h * out_w;
        let expected = format!("[{output_rows}, {}]", geometry.out_channels);
        for (role, matrix) in [
            ("2-D convolution output", Some(self.output)),
            ("2-D convolution residual", self.residual),
        ] {
            if let Some(matrix) = matrix
                && (matrix.rows(), matrix.cols()) != (output_rows, geometry.out_channels)
            {
                return Err(Error::shape_mismatch(
                    role,
                    &expected,
                    format!("[{}, {}]", matrix.rows(), matrix.cols()),
                ));
            }
        }
        check_operands(
            "2-D convolution operands",
            self.weights.precision(),
            &[("input", Some(self.input)), ("residual", self.residual)],
            self.output,
        )?;
        Ok((out_h, out_w))
    }
}

/// The uniform block of the shader, `ConvParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    rows: u32,
    cols: u32,
    inner: u32,
    inner_padded: u32,
    in_h: u32,
    in_w: u32,
    in_channels: u32,
    channels4: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
}

/// The convolution's parameter block and grid. Its rows are images: a dispatch over `images`
/// images covers their `images · out_h · out_w` output pixels.
#[derive(Debug)]
struct ConvLaunch {
    params: ConvParams,
    column_groups: u32,
}

impl ConvLaunch {
    fn pixels(&self, images: u32) -> u32 {
        images * self.params.out_h * self.params.out_w
    }
}

impl LaunchShape for ConvLaunch {
    fn params(&self, images: u32) -> Vec<u8> {
        param_bytes(&ConvParams {
            rows: self.pixels(images),
            ..self.params
        })
    }

    fn workgroups(&self, images: u32) -> [u32; 3] {
        [
            self.pixels(images).div_ceil(ROWS_PER_WORKGROUP),
            self.column_groups,
            1,
        ]
    }
}

/// Validates the operands and prepares one fused convolution with `variant` for
/// `operands.batch` images (re-aimed at fewer images with `set_rows`/`record_rows`, whose rows
/// are images): a [`MissingFeature`](Error::MissingFeature) error when the device cannot run
/// the variant.
pub fn prepare_conv2d(
    context: &GpuContext,
    operands: &Conv2dOperands<'_>,
    variant: Conv2dVariant,
) -> Result<PreparedKernel> {
    let (out_h, out_w) = operands.validate()?;
    let geometry = &operands.geometry;
    let precision = operands.weights.precision();
    if !variant.supported_by(context, precision) {
        return Err(Error::MissingFeature {
            what: format!("the {variant:?} 2-D convolution variant with {precision} storage"),
            feature: variant.requirement(),
            adapter: context.adapter_info().name.clone(),
        });
    }
    let kernel = variant.kernel();
    let u32_of = |what: &str, value: usize| to_u32(kernel.name, what, value);
    let pixels = operands.batch * out_h * out_w;
    // Every input index must fit the shader's u32, as must every output pixel.
    u32_of("2-D convolution input values", operands.input.len())?;
    u32_of("2-D convolution output values", operands.output.len())?;
    workgroup_count(
        "2-D convolution pixels",
        pixels,
        ROWS_PER_WORKGROUP as usize,
        context,
    )?;
    let column_groups = workgroup_count(
        "2-D convolution channels",
        geometry.out_channels,
        COLUMN_BLOCK,
        context,
    )?;
    let (top, left, _, _) = geometry.padding;
    let params = ConvParams {
        rows: u32_of("2-D convolution pixels", pixels)?,
        cols: u32_of("out_channels", geometry.out_channels)?,
        inner: u32_of("kernel taps x channels", geometry.inner())?,
        inner_padded: u32_of(
            "kernel taps x channels",
            geometry.inner().next_multiple_of(INNER_CHUNK),
        )?,
        in_h: u32_of("input height", geometry.input_size.0)?,
        in_w: u32_of("input width", geometry.input_size.1)?,
        in_channels: u32_of("in_channels", geometry.in_channels)?,
        channels4: u32_of("in_channels", geometry.channels4())?,
        out_h: u32_of("output height", out_h)?,
        out_w: u32_of("output width", out_w)?,
        kernel_h: u32_of("kernel height", geometry.kernel.0)?,
        kernel_w: u32_of("kernel width", geometry.kernel.1)?,
        stride_h: u32_of("stride", geometry.stride.0)?,
        stride_w: u32_of("stride", geometry.stride.1)?,
        pad_top: u32_of("padding", top)?,
        pad_left: u32_of("padding", left)?,
    };
    let vec4_activations = geometry.in_channels.is_multiple_of(4);
    let activations4 = if vec4_activations {
        operands.input.binding()
    } else {
        context.placeholder_storage().as_entire_binding()
    };
    let residual = operands.residual.map_or_else(
        || context.placeholder_storage().as_entire_binding(),
        DeviceMatrix::binding,
    );
    let mut constants = vec![
        ("ADD_RESIDUAL", u32::from(operands.residual.is_some())),
        (
            "APPLY_RELU",
            u32::from(operands.activation == Activation::Relu),
        ),
        ("WORKGROUP_SIZE", crate::kernels::gemm::WORKGROUP_SIZE),
    ];
    if vec4_activations {
        constants.push(("VEC4_ACTIVATIONS", 1));
    }
    // Every chunk of 8 k's lies in one tap: the subgroup kernel then follows one tap cursor
    // instead of one per half-chunk.
    if variant == Conv2dVariant::Subgroup && geometry.channels4().is_multiple_of(INNER_CHUNK) {
        constants.push(("CHUNKS_WITHIN_TAPS", 1));
    }
    PreparedKernel::new(
        context,
        LaunchDescriptor {
            label: kernel.name,
            kernel,
            precision,
            constants,
            resources: &[
                operands.input.binding(),
                operands.weights.weights_buffer().as_entire_binding(),
                operands.weights.bias_buffer().as_entire_binding(),
                residual,
                operands.output.binding(),
                activations4,
            ],
            max_rows: operands.batch,
            shape: Box::new(ConvLaunch {
                params,
                column_groups,
            }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(
        input_size: (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize, usize, usize),
    ) -> Conv2dGeometry {
        Conv2dGeometry {
            input_size,
            in_channels: 3,
            out_channels: 5,
            kernel,
            stride,
            padding,
        }
    }

    #[test]
    fn output_sizes_follow_pytorchs_floor_rule() {
        // ResNet's stem: 224x224, 7x7, stride 2, padding 3 -> 112x112.
        let stem = geometry((224, 224), (7, 7), (2, 2), (3, 3, 3, 3));
        assert_eq!(stem.output_size().expect("fits"), (112, 112));
        // An odd size with asymmetric padding: (97 + 0 + 1 - 3) / 2 + 1 = 48, (61 + 1 + 0 - 3) / 2
        // + 1 = 30.
        let odd = geometry((97, 61), (3, 3), (2, 2), (0, 1, 1, 0));
        assert_eq!(odd.output_size().expect("fits"), (48, 30));
        let projection = geometry((56, 56), (1, 1), (2, 2), (0, 0, 0, 0));
        assert_eq!(projection.output_size().expect("fits"), (28, 28));
    }

    #[test]
    fn kernels_larger_than_the_padded_input_and_zero_sizes_are_refused() {
        let too_big = geometry((2, 2), (5, 5), (1, 1), (1, 1, 1, 1));
        assert!(matches!(
            too_big.output_size(),
            Err(Error::ShapeMismatch { .. })
        ));
        let zero_stride = geometry((8, 8), (3, 3), (0, 1), (1, 1, 1, 1));
        assert!(matches!(
            zero_stride.output_size(),
            Err(Error::ZeroSized { .. })
        ));
    }

    #[test]
    fn weights_are_reordered_to_kernel_taps_then_padded_channels() {
        let geometry = Conv2dGeometry {
            input_size: (4, 4),
            in_channels: 3,
            out_channels: 2,
            kernel: (2, 2),
            stride: (1, 1),
            padding: (0, 0, 0, 0),
        };
        // weight[oc][c][kh][kw] = 1000 oc + 100 c + 10 kh + kw + 1 (never zero).
        let mut weight = Vec::new();
        for oc in 0..2 {
            for c in 0..3 {
                for kh in 0..2 {
                    for kw in 0..2 {
                        weight.push((1000 * oc + 100 * c + 10 * kh + kw + 1) as f32);
                    }
                }
            }
        }
        let rows = conv_weights_to_gemm_rows(&weight, &geometry);
        assert_eq!(geometry.channels4(), 4);
        assert_eq!(rows.len(), 2 * 2 * 2 * 4);
        for oc in 0..2 {
            for kh in 0..2 {
                for kw in 0..2 {
                    for c in 0..4 {
                        let value = rows[oc * 16 + (kh * 2 + kw) * 4 + c];
                        let expected = if c < 3 {
                            (1000 * oc + 100 * c + 10 * kh + kw + 1) as f32
                        } else {
                            0.0
                        };
                        assert_eq!(value, expected, "oc {oc} kh {kh} kw {kw} c {c}");
                    }
                }
            }
        }
    }
}
