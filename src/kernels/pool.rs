//! Host side of `shaders/pool2d.wgsl` (max and average pooling over windows) and
//! `shaders/global_avg_pool.wgsl` (the mean of each channel over each image).
//!
//! Activations are NHWC matrices, as in [`crate::kernels::conv2d`]: a batch of `height × width`
//! images with `channels` values per pixel is a [`DeviceMatrix`] of `batch · height · width` rows
//! and `channels` columns. Pooling keeps that form; global average pooling gives one row per
//! image. The rows of the [`PreparedKernel`]s prepared here are images: `max_rows` is the batch,
//! and `set_rows`/`record_rows` take a number of images.

use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::BindingKind;
use crate::kernels::launch::{
    LaunchDescriptor, LaunchShape, PreparedKernel, check_operands, param_bytes, to_u32,
};
use crate::kernels::source::{ACTIVATION, KernelSource, no_declarations};
use crate::shape::window_output_size;

/// `shaders/pool_load.wgsl`: the NHWC load of 4 channels both pooling kernels use.
const POOL_LOAD: &str = include_str!("../../shaders/pool_load.wgsl");

/// The max and average pooling shader and its binding table.
pub const POOL2D_KERNEL: KernelSource = KernelSource {
    name: "pool2d",
    body: include_str!("../../shaders/pool2d.wgsl"),
    pieces: &[ACTIVATION, POOL_LOAD],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "pool2d",
    bindings: &[
        BindingKind::Uniform,          // 0: params
        BindingKind::StorageRead,      // 1: input, NHWC
        BindingKind::StorageReadWrite, // 2: output, NHWC
        BindingKind::StorageRead,      // 3: input again, as vec4 when channels % 4 == 0
    ],
};

/// The global average pooling shader and its binding table.
pub const GLOBAL_AVG_POOL_KERNEL: KernelSource = KernelSource {
    name: "global_avg_pool",
    body: include_str!("../../shaders/global_avg_pool.wgsl"),
    pieces: &[ACTIVATION, POOL_LOAD],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "global_avg_pool",
    bindings: &[
        BindingKind::Uniform,          // 0: params
        BindingKind::StorageRead,      // 1: input, NHWC
        BindingKind::StorageReadWrite, // 2: output, one row per image
        BindingKind::StorageRead,      // 3: input again, as vec4 when channels % 4 == 0
    ],
};

/// Invocations per workgroup (`WORKGROUP_SIZE` in both shaders).
const WORKGROUP_SIZE: u32 = 64;

/// Channels one invocation computes (a vec4 of them).
const CHANNELS_PER_INVOCATION: usize = 4;

/// The shape of one 2-D pooling: what it reads and how its window moves. Dilation is 1 and the
/// output size rounds down (no `ceil_mode`), as in PyTorch's `MaxPool2d` / `AvgPool2d` defaults
/// and ONNX's `MaxPool` / `AveragePool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    /// Input height and width.
    pub input_size: (usize, usize),
    /// Channels per pixel, the same in the input and the output.
    pub channels: usize,
    /// Window height and width.
    pub kernel: (usize, usize),
    /// Stride along height and width.
    pub stride: (usize, usize),
    /// Padding `(top, left, bottom, right)`: −∞ for max pooling, zeros for average pooling.
    pub padding: (usize, usize, usize, usize),
}

impl Pool2dGeometry {
    /// The output height and width, `(in + before + after − kernel) / stride + 1` along each
    /// axis, or an error naming what does not fit: a zero-sized dimension or stride
    /// ([`Error::ZeroSized`]), a window larger than the padded input ([`Error::ShapeMismatch`]),
    /// or a window that lies wholly in the padding ([`Error::UnsupportedShape`]; PyTorch refuses
    /// those too, by requiring the padding to be at most half the window).
    pub fn output_size(&self) -> Result<(usize, usize)> {
        let what = "2-D pooling";
        for (dimension, value) in [
            ("input height", self.input_size.0),
            ("input width", self.input_size.1),
            ("channels", self.channels),
            ("kernel height", self.kernel.0),
            ("kernel width", self.kernel.1),
            ("stride height", self.stride.0),
            ("stride width", self.stride.1),
        ] {
            if value == 0 {
                return Err(Error::zero_sized(what, dimension));
            }
        }
        let (top, left, _, _) = self.padding;
        let output = window_output_size(self.input_size, self.kernel, self.stride, self.padding)
            .ok_or_else(|| {
                Error::shape_mismatch(
                    what,
                    format!(
                        "a window that fits the input {}x{} padded by {:?}",
                        self.input_size.0, self.input_size.1, self.padding
                    ),
                    format!("a {}x{} window", self.kernel.0, self.kernel.1),
                )
            })?;
        // The first window starts `before` cells into the padding and the last one at
        // (out - 1) * stride; both must reach the image, and then so do the windows between them.
        // A window with no tap inside the image would pool to −∞ (max) or 0 / 0 (average without
        // count_include_pad), values no model relies on.
        for (axis, before, input, kernel, stride, out) in [
            (
                "rows",
                top,
                self.input_size.0,
                self.kernel.0,
                self.stride.0,
                output.0,
            ),
            (
                "columns",
                left,
                self.input_size.1,
                self.kernel.1,
                self.stride.1,
                output.1,
            ),
        ] {
            if before >= kernel || (out - 1) * stride >= input.saturating_add(before) {
                return Err(Error::UnsupportedShape {
                    kernel: POOL2D_KERNEL.name,
                    what: format!("{self:?}"),
                    reason: format!(
                        "a window lies wholly in the padding along the {axis}; pooling needs \
                         every window to cover at least one input value"
                    ),
                });
            }
        }
        Ok(output)
    }
}

/// The operands of one max or average pooling.
#[derive(Clone, Copy, Debug)]
pub struct Pool2dOperands<'a> {
    /// The input, NHWC: `batch · height · width` rows of `channels`.
    pub input: &'a DeviceMatrix,
    /// The pooling's shape.
    pub geometry: Pool2dGeometry,
    /// Images in the batch: the most the prepared dispatch can run.
    pub batch: usize,
    /// The result, NHWC: `batch · out_h · out_w` rows of `channels`; must not be the input.
    pub output: &'a DeviceMatrix,
}

impl Pool2dOperands<'_> {
    /// Checks both shapes against the geometry, that the output is not the input and that both
    /// are stored in the same precision; returns the output size.
    fn validate(&self) -> Result<(usize, usize)> {
        let geometry = &self.geometry;
        let (out_h, out_w) = geometry.output_size()?;
        if self.batch == 0 {
            return Err(Error::zero_sized("2-D pooling", "batch"));
        }
        let (in_h, in_w) = geometry.input_size;
        check_nhwc_shape(
            "2-D pooling input",
            self.input,
            (self.batch, in_h, in_w, geometry.channels),
        )?;
        check_nhwc_shape(
            "2-D pooling output",
            self.output,
            (self.batch, out_h, out_w, geometry.channels),
        )?;
        check_operands(
            "2-D pooling operands",
            self.input.precision(),
            &[("input", Some(self.input))],
            self.output,
        )?;
        Ok((out_h, out_w))
    }
}

/// The operands of one global average pooling.
#[derive(Clone, Copy, Debug)]
pub struct GlobalAvgPoolOperands<'a> {
    /// The input, NHWC: `batch · height · width` rows of `channels`.
    pub input: &'a DeviceMatrix,
    /// Input height and width.
    pub input_size: (usize, usize),
    /// Channels per pixel.
    pub channels: usize,
    /// Images in the batch: the most the prepared dispatch can run.
    pub batch: usize,
    /// The result: `batch` rows of `channels`, each image's per-channel mean; must not be the
    /// input.
    pub output: &'a DeviceMatrix,
}

impl GlobalAvgPoolOperands<'_> {
    /// Checks both shapes, that the output is not the input and that both are stored in the
    /// same precision.
    fn validate(&self) -> Result<()> {
        let what = "global average pooling";
        for (dimension, value) in [
            ("input height", self.input_size.0),
            ("input width", self.input_size.1),
            ("channels", self.channels),
            ("batch", self.batch),
        ] {
            if value == 0 {
                return Err(Error::zero_sized(what, dimension));
            }
        }
        let (height, width) = self.input_size;
        check_nhwc_shape(
            "global average pooling input",
            self.input,
            (self.batch, height, width, self.channels),
        )?;
        check_nhwc_shape(
            "global average pooling output",
            self.output,
            (self.batch, 1, 1, self.channels),
        )?;
        check_operands(
            "global average pooling operands",
            self.input.precision(),
            &[("input", Some(self.input))],
            self.output,
        )
    }
}

/// Checks that `matrix` is the NHWC form of `batch` images of `height × width` pixels with
/// `channels` values each: `batch · height · width` rows of `channels`.
fn check_nhwc_shape(
    what: &str,
    matrix: &DeviceMatrix,
    (batch, height, width, channels): (usize, usize, usize, usize),
) -> Result<()> {
    let rows = batch
        .checked_mul(height)
        .and_then(|rows| rows.checked_mul(width));
    if rows != Some(matrix.rows()) || matrix.cols() != channels {
        let expected_rows = rows.map_or_else(|| "more than usize".to_string(), |r| r.to_string());
        return Err(Error::shape_mismatch(
            what,
            format!("[{expected_rows}, {channels}] (batch {batch} of {height}x{width} NHWC)"),
            format!("[{}, {}]", matrix.rows(), matrix.cols()),
        ));
    }
    Ok(())
}

/// One invocation per item of a flat index that grows with the images dispatched, the
/// workgroups folded into two dimensions so that large outputs stay within the per-dimension
/// workgroup limit (as in `elementwise.rs`).
#[derive(Clone, Copy, Debug)]
struct FoldedGrid {
    invocations_per_image: u32,
    max_groups_x: u32,
}

impl FoldedGrid {
    /// (invocations, workgroups along x, workgroups along y) for `images` images.
    fn grid(&self, images: u32) -> (u32, u32, u32) {
        let invocations = images * self.invocations_per_image;
        let groups = invocations.div_ceil(WORKGROUP_SIZE).max(1);
        let groups_x = groups.min(self.max_groups_x);
        (invocations, groups_x, groups.div_ceil(groups_x))
    }

    /// The grid for `batch` images, checked so that every flat index the shader computes from
    /// it, `(y · groups_x + x) · WORKGROUP_SIZE + local`, fits its u32; a grid too tall for the
    /// device is left to the launch path, which refuses it with [`Error::DispatchTooLarge`].
    fn checked(
        kernel: &'static str,
        what: &str,
        invocations_per_image: usize,
        batch: usize,
        context: &GpuContext,
    ) -> Result<Self> {
        let max_groups_x = context.limits().max_compute_workgroups_per_dimension.max(1);
        let invocations = invocations_per_image.saturating_mul(batch);
        // The folded grid launches fewer than groups + groups_x workgroups, so this bounds every
        // index, for the prepared batch and for every smaller one.
        let launched = invocations
            .div_ceil(WORKGROUP_SIZE as usize)
            .saturating_add(max_groups_x as usize)
            .saturating_mul(WORKGROUP_SIZE as usize);
        to_u32(kernel, &format!("{what} invocations launched"), launched)?;
        Ok(FoldedGrid {
            invocations_per_image: to_u32(
                kernel,
                &format!("{what} invocations per image"),
                invocations_per_image,
            )?,
            max_groups_x,
        })
    }
}

/// The uniform block of `pool2d.wgsl`, `PoolParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct PoolParams {
    invocations: u32,
    groups_x: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    channel_groups: u32,
    out_h: u32,
    out_w: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    unused0: u32,
    unused1: u32,
}

/// The pooling's parameter block and grid: one invocation per 4 channels of an output pixel.
#[derive(Debug)]
struct PoolLaunch {
    params: PoolParams,
    grid: FoldedGrid,
}

impl LaunchShape for PoolLaunch {
    fn params(&self, images: u32) -> Vec<u8> {
        let (invocations, groups_x, _) = self.grid.grid(images);
        param_bytes(&PoolParams {
            invocations,
            groups_x,
            ..self.params
        })
    }

    fn workgroups(&self, images: u32) -> [u32; 3] {
        let (_, groups_x, groups_y) = self.grid.grid(images);
        [groups_x, groups_y, 1]
    }
}

/// The uniform block of `global_avg_pool.wgsl`, `GlobalPoolParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GlobalPoolParams {
    invocations: u32,
    groups_x: u32,
    pixels: u32,
    channels: u32,
    channel_groups: u32,
    unused0: u32,
    unused1: u32,
    unused2: u32,
}

/// The global pooling's parameter block and grid: one invocation per 4 channels of an image.
#[derive(Debug)]
struct GlobalPoolLaunch {
    params: GlobalPoolParams,
    grid: FoldedGrid,
}

impl LaunchShape for GlobalPoolLaunch {
    fn params(&self, images: u32) -> Vec<u8> {
        let (invocations, groups_x, _) = self.grid.grid(images);
        param_bytes(&GlobalPoolParams {
            invocations,
            groups_x,
            ..self.params
        })
    }

    fn workgroups(&self, images: u32) -> [u32; 3] {
        let (_, groups_x, groups_y) = self.grid.grid(images);
        [groups_x, groups_y, 1]
    }
}

/// Validates the operands and prepares one max pooling for `operands.batch` images (re-aimed at
/// fewer images with `set_rows`/`record_rows`, whose rows are images). The padding counts as −∞;
/// a window holding a NaN gives NaN, as in PyTorch.
pub fn prepare_max_pool2d(
    context: &GpuContext,
    operands: &Pool2dOperands<'_>,
) -> Result<PreparedKernel> {
    prepare_pool2d(context, operands, "max_pool2d", None)
}

/// Validates the operands and prepares one average pooling for `operands.batch` images
/// (re-aimed at fewer images with `set_rows`/`record_rows`, whose rows are images). The padding
/// counts as zeros; the divisor is the whole window with `count_include_pad` (PyTorch's
/// default) and the taps inside the image without it. A window holding a NaN gives NaN.
pub fn prepare_avg_pool2d(
    context: &GpuContext,
    operands: &Pool2dOperands<'_>,
    count_include_pad: bool,
) -> Result<PreparedKernel> {
    prepare_pool2d(context, operands, "avg_pool2d", Some(count_include_pad))
}

/// Prepares max pooling (`average` is `None`) or average pooling (`Some(count_include_pad)`).
fn prepare_pool2d(
    context: &GpuContext,
    operands: &Pool2dOperands<'_>,
    label: &str,
    average: Option<bool>,
) -> Result<PreparedKernel> {
    let (out_h, out_w) = operands.validate()?;
    let geometry = &operands.geometry;
    let kernel = &POOL2D_KERNEL;
    let u32_of = |what: &str, value: usize| to_u32(kernel.name, what, value);
    // Every input and output index must fit the shader's u32, as must the window's far edge in
    // padded coordinates (the input size plus both paddings).
    u32_of("2-D pooling input values", operands.input.len())?;
    u32_of("2-D pooling output values", operands.output.len())?;
    let (top, left, bottom, right) = geometry.padding;
    let (in_h, in_w) = geometry.input_size;
    u32_of(
        "padded input height",
        in_h.saturating_add(top).saturating_add(bottom),
    )?;
    u32_of(
        "padded input width",
        in_w.saturating_add(left).saturating_add(right),
    )?;
    let channel_groups = geometry.channels.div_ceil(CHANNELS_PER_INVOCATION);
    let grid = FoldedGrid::checked(
        kernel.name,
        "2-D pooling",
        out_h * out_w * channel_groups,
        operands.batch,
        context,
    )?;
    let params = PoolParams {
        invocations: 0,
        groups_x: 0,
        in_h: u32_of("input height", in_h)?,
        in_w: u32_of("input width", in_w)?,
        channels: u32_of("channels", geometry.channels)?,
        channel_groups: u32_of("channel groups", channel_groups)?,
        out_h: u32_of("output height", out_h)?,
        out_w: u32_of("output width", out_w)?,
        kernel_h: u32_of("kernel height", geometry.kernel.0)?,
        kernel_w: u32_of("kernel width", geometry.kernel.1)?,
        stride_h: u32_of("stride", geometry.stride.0)?,
        stride_w: u32_of("stride", geometry.stride.1)?,
        pad_top: u32_of("padding", top)?,
        pad_left: u32_of("padding", left)?,
        unused0: 0,
        unused1: 0,
    };
    let vec4_channels = geometry.channels.is_multiple_of(CHANNELS_PER_INVOCATION);
    let mut constants = vec![
        ("AVERAGE", u32::from(average.is_some())),
        ("VEC4_CHANNELS", u32::from(vec4_channels)),
    ];
    if let Some(count_include_pad) = average {
        constants.push(("COUNT_INCLUDE_PAD", u32::from(count_include_pad)));
    }
    let input4 = if vec4_channels {
        operands.input.binding()
    } else {
        context.placeholder_storage().as_entire_binding()
    };
    PreparedKernel::new(
        context,
        LaunchDescriptor {
            label,
            kernel,
            precision: operands.input.precision(),
            constants,
            resources: &[operands.input.binding(), operands.output.binding(), input4],
            max_rows: operands.batch,
            shape: Box::new(PoolLaunch { params, grid }),
        },
    )
}

/// Validates the operands and prepares one global average pooling for `operands.batch` images
/// (re-aimed at fewer images with `set_rows`/`record_rows`, whose rows are images): each
/// image's channels averaged over its pixels in f32, one output row per image. A NaN anywhere in
/// a channel gives NaN.
pub fn prepare_global_avg_pool(
    context: &GpuContext,
    operands: &GlobalAvgPoolOperands<'_>,
) -> Result<PreparedKernel> {
    operands.validate()?;
    let kernel = &GLOBAL_AVG_POOL_KERNEL;
    let u32_of = |what: &str, value: usize| to_u32(kernel.name, what, value);
    // Every input index must fit the shader's u32 (the output is smaller).
    u32_of("global average pooling input values", operands.input.len())?;
    let channel_groups = operands.channels.div_ceil(CHANNELS_PER_INVOCATION);
    let grid = FoldedGrid::checked(
        kernel.name,
        "global average pooling",
        channel_groups,
        operands.batch,
        context,
    )?;
    let (height, width) = operands.input_size;
    let params = GlobalPoolParams {
        invocations: 0,
        groups_x: 0,
        pixels: u32_of("pixels per image", height * width)?,
        channels: u32_of("channels", operands.channels)?,
        channel_groups: u32_of("channel groups", channel_groups)?,
        unused0: 0,
        unused1: 0,
        unused2: 0,
    };
    let vec4_channels = operands.channels.is_multiple_of(CHANNELS_PER_INVOCATION);
    let input4 = if vec4_channels {
        operands.input.binding()
    } else {
        context.placeholder_storage().as_entire_binding()
    };
    PreparedKernel::new(
        context,
        LaunchDescriptor {
            label: "global_avg_pool",
            kernel,
            precision: operands.input.precision(),
            constants: vec![("VEC4_CHANNELS", u32::from(vec4_channels))],
            resources: &[operands.input.binding(), operands.output.binding(), input4],
            max_rows: operands.batch,
            shape: Box::new(GlobalPoolLaunch { params, grid }),
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
    ) -> Pool2dGeometry {
        Pool2dGeometry {
            input_size,
            channels: 3,
            kernel,
            stride,
            padding,
        }
    }

    #[test]
    fn output_sizes_follow_pytorchs_floor_rule() {
        // ResNet's max pooling: 112x112, 3x3, stride 2, padding 1 -> 56x56.
        let resnet = geometry((112, 112), (3, 3), (2, 2), (1, 1, 1, 1));
        assert_eq!(resnet.output_size().expect("fits"), (56, 56));
        // An odd size: (23 + 2 - 3) / 2 + 1 = 12, (17 + 2 - 3) / 2 + 1 = 9.
        let odd = geometry((23, 17), (3, 3), (2, 2), (1, 1, 1, 1));
        assert_eq!(odd.output_size().expect("fits"), (12, 9));
        // Asymmetric padding: (7 + 0 + 1 - 2) / 2 + 1 = 4, (5 + 1 + 0 - 2) / 2 + 1 = 3.
        let asymmetric = geometry((7, 5), (2, 2), (2, 2), (0, 1, 1, 0));
        assert_eq!(asymmetric.output_size().expect("fits"), (4, 3));
        // A window as large as the image, as an average pooling to 1x1.
        let whole = geometry((7, 7), (7, 7), (1, 1), (0, 0, 0, 0));
        assert_eq!(whole.output_size().expect("fits"), (1, 1));
    }

    #[test]
    fn zero_sizes_and_windows_larger_than_the_padded_input_are_refused() {
        let too_big = geometry((2, 2), (5, 5), (1, 1), (1, 1, 1, 1));
        assert!(matches!(
            too_big.output_size(),
            Err(Error::ShapeMismatch { .. })
        ));
        let zero_stride = geometry((8, 8), (3, 3), (1, 0), (1, 1, 1, 1));
        assert!(matches!(
            zero_stride.output_size(),
            Err(Error::ZeroSized { .. })
        ));
        let no_channels = Pool2dGeometry {
            channels: 0,
            ..geometry((8, 8), (3, 3), (1, 1), (0, 0, 0, 0))
        };
        assert!(matches!(
            no_channels.output_size(),
            Err(Error::ZeroSized {
                dimension: "channels",
                ..
            })
        ));
    }

    #[test]
    fn windows_wholly_in_the_padding_are_refused_and_windows_touching_the_image_are_not() {
        // The first window covers only the top padding.
        let top = geometry((4, 4), (2, 2), (1, 1), (2, 0, 0, 0));
        assert!(matches!(
            top.output_size(),
            Err(Error::UnsupportedShape { .. })
        ));
        // The last window covers only the right padding: (3 + 3 - 2) / 1 + 1 = 5 windows, the
        // last starting at column 4, past the image's 3 columns.
        let right = geometry((3, 3), (2, 2), (1, 1), (0, 0, 0, 3));
        assert!(matches!(
            right.output_size(),
            Err(Error::UnsupportedShape { .. })
        ));
        // A large bottom padding that the stride steps over is fine: (1 + 3 - 3) / 2 + 1 = 1
        // window, which covers the image's only row.
        let stepped_over = geometry((1, 3), (3, 3), (2, 1), (0, 1, 3, 1));
        assert_eq!(stepped_over.output_size().expect("fits"), (1, 3));
        // Padding one less than the kernel still leaves a tap inside the image.
        let edge = geometry((1, 1), (3, 3), (1, 1), (2, 2, 2, 2));
        assert_eq!(edge.output_size().expect("fits"), (3, 3));
    }

    #[test]
    fn the_folded_grid_covers_every_invocation_within_the_per_dimension_limit() {
        let grid = FoldedGrid {
            invocations_per_image: 1000,
            max_groups_x: 7,
        };
        for images in [1, 2, 3, 50] {
            let (invocations, groups_x, groups_y) = grid.grid(images);
            assert_eq!(invocations, images * 1000);
            assert!(groups_x <= 7);
            assert!(groups_x * groups_y * WORKGROUP_SIZE >= invocations);
            assert!((groups_y - 1) * groups_x * WORKGROUP_SIZE < invocations);
        }
    }
}
