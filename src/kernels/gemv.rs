//! Host side of `shaders/gemv_texture.wgsl`: the fused GEMM for small batches, with a layer's
//! weights in an `rgba32float` texture.
//!
//! With one or a few rows a GEMM has no weight reuse across rows, and the tiled GEMM kernels
//! waste most of their 256-row workgroups; this kernel assigns one invocation to 4 output columns
//! and loads weights as texels, the fastest load path on CPU adapters (see the shader).

use std::sync::Arc;

use crate::epilogue::{Activation, Epilogue};
use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{
    BindingKind, CachedPipeline, KernelKey, KernelSource, create_params_buffer, specialize,
};
use crate::kernels::gemm::INNER_CHUNK;
use crate::precision::Precision;
use crate::shape::check_linear_shape;

/// The texture GEMV shader and its binding table.
pub const GEMV_TEXTURE_KERNEL: KernelSource = KernelSource {
    name: "gemv_texture",
    wgsl: concat!(
        include_str!("../../shaders/gemv_texture.wgsl"),
        include_str!("../../shaders/fused_epilogue.wgsl")
    ),
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

/// Invocations per workgroup (`WORKGROUP_SIZE` in the shader).
pub const GEMV_WORKGROUP_SIZE: u32 = 32;
/// Rows per workgroup of the multi-row pipeline (`GEMV_ROWS`).
pub const GEMV_ROWS: u32 = 4;
/// The largest batch for which the executor's fixed rules (`Tuning::Heuristic`) prefer this
/// kernel to the tiled GEMM; `Tuning::Measure` times both instead (see BENCHMARKS.md).
pub const GEMV_MAX_BATCH: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GemvParams {
    rows: u32,
    cols: u32,
    inner: u32,
    cols4: u32,
}

/// Whether `context` can run the texture GEMV at all (subgroups of at least 8 invocations).
pub fn supported_by(context: &GpuContext) -> bool {
    context.features().contains(wgpu::Features::SUBGROUP)
        && context.adapter_info().subgroup_min_size >= INNER_CHUNK as u32
}

/// Texels per texture row: one per invocation of a group of 8 (one SIMD chunk on lavapipe), so
/// that each group streams through one contiguous layer.
const LAYER_TEXELS: usize = 8;

/// Layers of the weight texture of a layer with `out_features` columns.
fn texture_layers(out_features: usize) -> usize {
    out_features.div_ceil(4).div_ceil(LAYER_TEXELS)
}

/// Converts a PyTorch `[out, in]` weight into the texture's layout,
/// `[layers][in_padded][8 texels][4]`: texel `(x, k, layer)` holds columns `4c..4c+3` at `k`
/// with `c = 8 * layer + x`, zero-padded.
pub fn weights_to_texture_layout(
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
            && texture_layers(out_features) <= limits.max_texture_array_layers as usize
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
        let (texture, view) = context.scoped(&format!("uploading {what} as a texture"), || {
            let texture = context.device().create_texture(&wgpu::TextureDescriptor {
                label: Some(&what),
                size,
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

/// A texture GEMV with its pipeline, parameters and bind group ready.
#[derive(Debug)]
pub struct PreparedGemv {
    pipeline: Arc<CachedPipeline>,
    bind_group: wgpu::BindGroup,
    params_buffer: wgpu::Buffer,
    params: GemvParams,
    rows_per_workgroup: u32,
}

impl PreparedGemv {
    /// Validates the operands and builds the dispatch for `input.rows()` rows.
    pub fn new(context: &GpuContext, operands: &GemvOperands<'_>) -> Result<Self> {
        if !supported_by(context) {
            return Err(Error::MissingFeature {
                what: "the texture gemv kernel".to_string(),
                feature: "SUBGROUP (with subgroups of at least 8 invocations)",
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
        let aliased = operands.input.buffer() == operands.output.buffer()
            || operands
                .residual
                .is_some_and(|residual| residual.buffer() == operands.output.buffer());
        if aliased {
            return Err(Error::shape_mismatch(
                "gemv output",
                "a buffer distinct from the input and residual",
                "an operand's buffer",
            ));
        }
        let precision = operands.weights.precision();
        let mixed = [
            Some(operands.input),
            operands.residual,
            Some(operands.output),
        ]
        .into_iter()
        .flatten()
        .any(|matrix| matrix.precision() != precision);
        if mixed {
            return Err(Error::shape_mismatch(
                "gemv operands",
                format!("every matrix stored in {precision}, like the weights"),
                "matrices of another precision",
            ));
        }
        let kernel = specialize(&GEMV_TEXTURE_KERNEL, precision);
        let rows_per_workgroup = if rows == 1 { 1 } else { GEMV_ROWS };
        let epilogue = Epilogue {
            activation: operands.activation,
            add_residual: operands.residual.is_some(),
        };
        let key = KernelKey {
            shader: kernel.name,
            entry_point: kernel.entry_point,
            constants: vec![
                ("ADD_RESIDUAL", u32::from(epilogue.add_residual)),
                (
                    "APPLY_RELU",
                    u32::from(epilogue.activation == Activation::Relu),
                ),
                ("GEMV_ROWS", rows_per_workgroup),
                ("WORKGROUP_SIZE", GEMV_WORKGROUP_SIZE),
            ],
        };
        let pipeline = context.pipelines().get_or_create(context, &kernel, &key)?;
        let params = GemvParams {
            rows: rows as u32,
            cols: n as u32,
            inner: k as u32,
            cols4: n.div_ceil(4) as u32,
        };
        let residual = operands
            .residual
            .map_or(context.placeholder_storage(), DeviceMatrix::buffer);
        let (bind_group, params_buffer) = context.scoped("binding the gemv operands", || {
            let params_buffer =
                create_params_buffer(context, "gemv params", bytemuck::bytes_of(&params));
            let bind_group = pipeline.bind(
                context.device(),
                "gemv operands",
                &[
                    params_buffer.as_entire_binding(),
                    operands.input.buffer().as_entire_binding(),
                    wgpu::BindingResource::TextureView(&operands.weights.view),
                    operands.weights.bias.as_entire_binding(),
                    residual.as_entire_binding(),
                    operands.output.buffer().as_entire_binding(),
                ],
            );
            (bind_group, params_buffer)
        })?;
        Ok(PreparedGemv {
            pipeline,
            bind_group,
            params_buffer,
            params,
            rows_per_workgroup,
        })
    }

    /// The row count the dispatch was prepared for.
    pub fn max_rows(&self) -> usize {
        self.params.rows as usize
    }

    /// Makes later submissions compute only the first `rows` rows.
    pub fn set_rows(&self, context: &GpuContext, rows: usize) -> Result<()> {
        if rows == 0 || rows > self.max_rows() {
            return Err(Error::shape_mismatch(
                "gemv rows",
                format!("1..={}", self.max_rows()),
                rows,
            ));
        }
        let params = GemvParams {
            rows: rows as u32,
            ..self.params
        };
        context.scoped("updating gemv rows", || {
            context
                .queue()
                .write_buffer(&self.params_buffer, 0, bytemuck::bytes_of(&params));
        })
    }

    /// Records the dispatch for the first `rows` rows (as last set).
    pub fn record_rows(&self, pass: &mut wgpu::ComputePass<'_>, rows: usize) {
        let rows = rows.clamp(1, self.max_rows()) as u32;
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(
            self.params.cols4.div_ceil(GEMV_WORKGROUP_SIZE),
            rows.div_ceil(self.rows_per_workgroup),
            1,
        );
    }

    /// Submits the dispatch on the context's queue (without waiting).
    pub fn submit(&self, context: &GpuContext) -> Result<()> {
        context.submit_pass("resgraph gemv", |pass| {
            self.record_rows(pass, self.max_rows());
        })
    }
}
