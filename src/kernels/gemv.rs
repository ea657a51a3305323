//! Host side of `shaders/gemv_texture.wgsl`: the fused GEMM for small batches, with a layer's
//! weights in an `rgba32float` 2-D array texture (`rgba16float` for f16 models).
//!
//! With one or a few rows a GEMM has no weight reuse across rows, and the tiled GEMM kernels
//! waste most of their 256-row workgroups; this kernel assigns one invocation to 4 output columns
//! and loads weights as texels, the fastest load path on CPU adapters (see the shader).
//!
//! Two shaders share the layout, bindings, parameters and grid ([`GemvVariant`]): one shares the
//! activations with subgroup broadcasts (subgroups of at least 8), the other stages them in
//! workgroup memory, for adapters without such subgroups (a browser, GL). [`prepare_gemv`] takes
//! the first the device supports.

use crate::epilogue::Activation;
use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::BindingKind;
use crate::kernels::gemm::INNER_CHUNK;
use crate::kernels::launch::{
    LaunchDescriptor, LaunchShape, PreparedKernel, check_operands, param_bytes, to_u32,
};
use crate::kernels::source::{ACTIVATION, FUSED_EPILOGUE, KernelSource, no_declarations};
use crate::precision::Precision;
use crate::shape::check_linear_shape;

/// `shaders/gemv_bindings.wgsl`: the parameter block, bindings and overrides both variants share.
const GEMV_BINDINGS: &str = include_str!("../../shaders/gemv_bindings.wgsl");

/// The texture GEMV shader and its binding table.
pub const GEMV_TEXTURE_KERNEL: KernelSource = KernelSource {
    name: "gemv_texture",
    body: include_str!("../../shaders/gemv_texture.wgsl"),
    pieces: &[GEMV_BINDINGS, ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "gemv",
    bindings: &[
        BindingKind::Uniform,             // 0: params
        BindingKind::StorageRead,         // 1: activations X [rows, inner]
        BindingKind::FloatTexture2dArray, // 2: weights, rgba32float [layers][inner_padded][8]
        BindingKind::StorageRead,         // 3: bias, padded
        BindingKind::StorageRead,         // 4: residual R [rows, cols]
        BindingKind::StorageReadWrite,    // 5: output [rows, cols]
    ],
};

/// The staged texture GEMV: the same bindings as [`GEMV_TEXTURE_KERNEL`], no subgroups.
pub const GEMV_TEXTURE_STAGED_KERNEL: KernelSource = KernelSource {
    name: "gemv_texture_staged",
    body: include_str!("../../shaders/gemv_texture_staged.wgsl"),
    ..GEMV_TEXTURE_KERNEL
};

/// Bytes of workgroup memory the staged GEMV uses (4 rows of 256 staged f32 activations).
const STAGED_WORKGROUP_BYTES: u32 = 4 * 256 * 4;

/// How the texture GEMV shares each row's activations among its invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemvVariant {
    /// Subgroup broadcasts (`shaders/gemv_texture.wgsl`): subgroups of at least 8.
    Subgroup,
    /// Staged in workgroup memory (`shaders/gemv_texture_staged.wgsl`): any adapter.
    Staged,
}

impl GemvVariant {
    /// Every variant, in the order [`GemvVariant::for_device`] prefers them.
    pub const ALL: [GemvVariant; 2] = [GemvVariant::Subgroup, GemvVariant::Staged];

    /// The variant's shader.
    pub fn kernel(self) -> &'static KernelSource {
        match self {
            GemvVariant::Subgroup => &GEMV_TEXTURE_KERNEL,
            GemvVariant::Staged => &GEMV_TEXTURE_STAGED_KERNEL,
        }
    }

    /// Whether `context`'s device can run this variant.
    pub fn supported_by(self, context: &GpuContext) -> bool {
        match self {
            GemvVariant::Subgroup => {
                context.features().contains(wgpu::Features::SUBGROUP)
                    && context.adapter_info().subgroup_min_size >= INNER_CHUNK as u32
            }
            GemvVariant::Staged => {
                let limits = context.limits();
                limits.max_compute_workgroup_storage_size >= STAGED_WORKGROUP_BYTES
                    && limits.max_compute_invocations_per_workgroup >= GEMV_WORKGROUP_SIZE
            }
        }
    }

    /// The largest batch for which the rules prefer this variant to the tiled GEMM.
    pub fn rule_max_batch(self) -> usize {
        match self {
            GemvVariant::Subgroup => GEMV_MAX_BATCH,
            GemvVariant::Staged => STAGED_GEMV_MAX_BATCH,
        }
    }

    /// The variant the texture GEMV runs on `context`: subgroup broadcasts where the device has
    /// them, else staging; `None` where neither runs.
    pub fn for_device(context: &GpuContext) -> Option<GemvVariant> {
        GemvVariant::ALL
            .into_iter()
            .find(|variant| variant.supported_by(context))
    }
}

/// Invocations per workgroup (`WORKGROUP_SIZE` in the shader).
pub const GEMV_WORKGROUP_SIZE: u32 = 32;
/// Rows per workgroup of the multi-row pipeline (`GEMV_ROWS`).
pub const GEMV_ROWS: u32 = 4;
/// The largest batch for which kernel selection's rules (`Tuning::Heuristic`) prefer this
/// kernel to the tiled GEMM; `Tuning::Measure` times both instead (see BENCHMARKS.md).
pub const GEMV_MAX_BATCH: usize = 16;
/// As [`GEMV_MAX_BATCH`], for the staged variant: on llvmpipe (GL) it is 6.6×, 3× and 1.7×
/// faster than the portable GEMM at 1, 4 and 8 rows of width 512, and no faster at 16.
pub const STAGED_GEMV_MAX_BATCH: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GemvParams {
    rows: u32,
    cols: u32,
    inner: u32,
    cols4: u32,
}

/// The GEMV's parameter block and grid: workgroups of 32 invocations, 4 columns each, along x;
/// `rows_per_workgroup` rows along y.
#[derive(Debug)]
struct GemvLaunch {
    params: GemvParams,
    rows_per_workgroup: u32,
}

impl LaunchShape for GemvLaunch {
    fn params(&self, rows: u32) -> Vec<u8> {
        param_bytes(&GemvParams {
            rows,
            ..self.params
        })
    }

    fn workgroups(&self, rows: u32) -> [u32; 3] {
        [
            self.params.cols4.div_ceil(GEMV_WORKGROUP_SIZE),
            rows.div_ceil(self.rows_per_workgroup),
            1,
        ]
    }
}

/// Whether `context` can run the texture GEMV at all, in some variant.
pub fn supported_by(context: &GpuContext) -> bool {
    GemvVariant::for_device(context).is_some()
}

/// Texels per texture row: one per invocation of a group of 8 (one SIMD chunk on lavapipe), so
/// that each group streams through one contiguous layer.
const LAYER_TEXELS: usize = 8;

/// The fewest layers a weight texture is allocated with (see `upload_with_precision`).
const MIN_TEXTURE_LAYERS: u32 = 2;

/// Layers of the weight texture of a layer with `out_features` columns.
fn texture_layers(out_features: usize) -> usize {
    out_features.div_ceil(4).div_ceil(LAYER_TEXELS)
}

/// Converts a PyTorch `[out, in]` weight into the texture's layout,
/// `[layers][in_padded][8 texels][4]`: texel `(x, k, layer)` holds columns `4c..4c+3` at `k`
/// with `c = 8 * layer + x`, zero-padded.
pub(crate) fn weights_to_texture_layout(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
) -> Vec<f32> {
    let inner_padded = in_features.next_multiple_of(INNER_CHUNK);
    let row_floats = LAYER_TEXELS * 4;
    let layer_floats = inner_padded * row_floats;
    let mut texels = vec![0.0f32; texture_layers(out_features) * layer_floats];
    for (col, row) in weight.chunks_exact(in_features).enumerate() {
        let (layer, within) = (col / row_floats, col % row_floats);
        for (k, &value) in row.iter().enumerate() {
            texels[layer * layer_floats + k * row_floats + within] = value;
        }
    }
    texels
}

/// A linear layer's weight as a texture and its bias as a buffer.
#[derive(Debug)]
pub struct TextureWeights {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    bias: wgpu::Buffer,
    in_features: usize,
    out_features: usize,
    precision: Precision,
}

impl TextureWeights {
    /// Whether an `out` × `in` layer fits the device's largest 2-D array texture.
    pub fn fits(context: &GpuContext, out_features: usize, in_features: usize) -> bool {
        let limits = context.limits();
        in_features.next_multiple_of(INNER_CHUNK) <= limits.max_texture_dimension_2d as usize
            && texture_layers(out_features).max(MIN_TEXTURE_LAYERS as usize)
                <= limits.max_texture_array_layers as usize
    }

    /// Uploads a layer given in PyTorch's layout (`weight` `[out, in]`, `bias` `[out]`) in f32.
    pub fn upload(
        context: &GpuContext,
        out_features: usize,
        in_features: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        Self::upload_with_precision(
            context,
            out_features,
            in_features,
            weight,
            bias,
            Precision::F32,
        )
    }

    /// As [`Self::upload`], with the weights stored in `precision` (`rgba16float` for f16).
    pub fn upload_with_precision(
        context: &GpuContext,
        out_features: usize,
        in_features: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
        precision: Precision,
    ) -> Result<Self> {
        precision.check_supported(context.features(), &context.adapter_info().name)?;
        check_linear_shape(
            out_features,
            in_features,
            weight.len(),
            bias.map(<[f32]>::len),
        )?;
        let what = format!("linear layer {out_features}x{in_features}");
        if !Self::fits(context, out_features, in_features) {
            return Err(Error::BufferTooLarge {
                what: format!("{what} weights as a texture"),
                requested: in_features as u64,
                limit_name: "max_texture_dimension_2d / max_texture_array_layers",
                limit: u64::from(context.limits().max_texture_dimension_2d),
                adapter: context.adapter_info().name.clone(),
            });
        }
        let inner_padded = in_features.next_multiple_of(INNER_CHUNK) as u32;
        let texels = weights_to_texture_layout(weight, out_features, in_features);
        let size = wgpu::Extent3d {
            width: LAYER_TEXELS as u32,
            height: inner_padded,
            depth_or_array_layers: texture_layers(out_features) as u32,
        };
        // wgpu's GL backend makes a texture of one layer a plain 2-D texture, which the shader's
        // `texture_2d_array` then reads as garbage; a second, zero layer keeps it an array on
        // every backend (the kernels never read it).
        let allocated = wgpu::Extent3d {
            depth_or_array_layers: size.depth_or_array_layers.max(MIN_TEXTURE_LAYERS),
            ..size
        };
        let (texture, view) = context.scoped(&format!("uploading {what} as a texture"), || {
            let texture = context.device().create_texture(&wgpu::TextureDescriptor {
                label: Some(&what),
                size: allocated,
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: match precision {
                    Precision::F32 => wgpu::TextureFormat::Rgba32Float,
                    Precision::F16 => wgpu::TextureFormat::Rgba16Float,
                },
                usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                view_formats: &[],
            });
            context.queue().write_texture(
                wgpu::TexelCopyTextureInfo {
                    texture: &texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                },
                &precision.encode(&texels),
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(LAYER_TEXELS as u32 * 4 * precision.element_bytes() as u32),
                    rows_per_image: Some(inner_padded),
                },
                size,
            );
            let view = texture.create_view(&wgpu::TextureViewDescriptor {
                dimension: Some(wgpu::TextureViewDimension::D2Array),
                ..Default::default()
            });
            (texture, view)
        })?;
        let bias = super::upload_padded_bias(context, &what, bias, out_features)?;
        Ok(TextureWeights {
            texture,
            view,
            bias,
            in_features,
            out_features,
            precision,
        })
    }

    /// The input width K.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The output width N.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// How the weights are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes on the device (texture and bias, padded).
    pub fn device_bytes(&self) -> u64 {
        let size = self.texture.size();
        u64::from(size.width)
            * u64::from(size.height)
            * u64::from(size.depth_or_array_layers)
            * 4
            * self.precision.element_bytes()
            + self.bias.size()
    }
}

/// The operands of one texture GEMV.
#[derive(Clone, Copy, Debug)]
pub struct GemvOperands<'a> {
    /// X, `[rows, in_features]`.
    pub input: &'a DeviceMatrix,
    /// W and b.
    pub weights: &'a TextureWeights,
    /// R, `[rows, out_features]`, when present.
    pub residual: Option<&'a DeviceMatrix>,
    /// The result; must not alias the input or the residual.
    pub output: &'a DeviceMatrix,
    /// The activation applied last.
    pub activation: Activation,
}

/// Validates the operands and prepares one texture GEMV for `input.rows()` rows, in the variant
/// [`GemvVariant::for_device`] picks: a [`MissingFeature`](Error::MissingFeature) error on a
/// device that runs neither.
pub fn prepare_gemv(context: &GpuContext, operands: &GemvOperands<'_>) -> Result<PreparedKernel> {
    let variant = GemvVariant::for_device(context).unwrap_or(GemvVariant::Staged);
    prepare_gemv_variant(context, operands, variant)
}

/// As [`prepare_gemv`], in `variant`: a [`MissingFeature`](Error::MissingFeature) error on a
/// device that cannot run it (subgroups narrower than 8 for [`GemvVariant::Subgroup`]).
pub fn prepare_gemv_variant(
    context: &GpuContext,
    operands: &GemvOperands<'_>,
    variant: GemvVariant,
) -> Result<PreparedKernel> {
    if !variant.supported_by(context) {
        let feature = match variant {
            GemvVariant::Subgroup => "SUBGROUP (with subgroups of at least 8 invocations)",
            GemvVariant::Staged => "4 KiB of workgroup memory and 32 invocations per workgroup",
        };
        return Err(Error::MissingFeature {
            what: format!("the texture gemv kernel ({variant:?})"),
            feature,
            adapter: context.adapter_info().name.clone(),
        });
    }
    let (rows, k, n) = (
        operands.input.rows(),
        operands.weights.in_features(),
        operands.weights.out_features(),
    );
    let shapes_agree = operands.input.cols() == k
        && (operands.output.rows(), operands.output.cols()) == (rows, n)
        && operands
            .residual
            .is_none_or(|residual| (residual.rows(), residual.cols()) == (rows, n));
    if !shapes_agree {
        return Err(Error::shape_mismatch(
            "gemv operands",
            format!("input [{rows}, {k}], residual and output [{rows}, {n}]"),
            format!(
                "input [{}, {}], output [{}, {}]",
                operands.input.rows(),
                operands.input.cols(),
                operands.output.rows(),
                operands.output.cols()
            ),
        ));
    }
    let precision = operands.weights.precision();
    check_operands(
        "gemv operands",
        precision,
        &[
            ("input", Some(operands.input)),
            ("residual", operands.residual),
        ],
        operands.output,
    )?;
    let kernel = variant.kernel();
    let rows_per_workgroup = if rows == 1 { 1 } else { GEMV_ROWS };
    let params = GemvParams {
        rows: to_u32(kernel.name, "gemv rows", rows)?,
        cols: to_u32(kernel.name, "gemv columns", n)?,
        inner: to_u32(kernel.name, "gemv inner dimension", k)?,
        cols4: to_u32(kernel.name, "gemv columns", n.div_ceil(4))?,
    };
    let residual = operands.residual.map_or_else(
        || context.placeholder_storage().as_entire_binding(),
        DeviceMatrix::binding,
    );
    PreparedKernel::new(
        context,
        LaunchDescriptor {
            label: "gemv",
            kernel,
            precision,
            constants: vec![
                ("ADD_RESIDUAL", u32::from(operands.residual.is_some())),
                (
                    "APPLY_RELU",
                    u32::from(operands.activation == Activation::Relu),
                ),
                ("GEMV_ROWS", rows_per_workgroup),
                ("WORKGROUP_SIZE", GEMV_WORKGROUP_SIZE),
            ],
            resources: &[
                operands.input.binding(),
                wgpu::BindingResource::TextureView(&operands.weights.view),
                operands.weights.bias.as_entire_binding(),
                residual,
                operands.output.binding(),
            ],
            max_rows: rows,
            shape: Box::new(GemvLaunch {
                params,
                rows_per_workgroup,
            }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_texture_layout_is_transposed_into_layers_of_texels_and_zero_padded() {
        // 37 columns: 10 texels, so 2 layers of 8 texels (32 columns) each; inner 3 pads to 8.
        let (out_features, in_features) = (37, 3);
        let weight: Vec<f32> = (0..out_features * in_features)
            .map(|i| i as f32 + 1.0)
            .collect();
        let texels = weights_to_texture_layout(&weight, out_features, in_features);
        let (row_floats, layer_floats) = (8 * 4, 8 * 8 * 4);
        assert_eq!(texels.len(), 2 * layer_floats);
        for col in 0..out_features {
            for k in 0..in_features {
                let index = (col / row_floats) * layer_floats + k * row_floats + col % row_floats;
                assert_eq!(
                    texels[index],
                    weight[col * in_features + k],
                    "col {col} k {k}"
                );
            }
        }
        assert_eq!(
            texels.iter().filter(|&&v| v != 0.0).count(),
            out_features * in_features
        );
    }
}
