//! Host side of `shaders/gemm.wgsl`: the fused `act(X·Wᵀ + b [+ R])` kernel.
//!
//! A layer's weights are converted once, at upload, from PyTorch's `[out, in]` layout to the
//! kernel's `[in, ceil(out/4)]` vec4 layout; after that a dispatch is prepared once (pipeline,
//! parameters, bind group) and can be recorded into any number of compute passes.
//!
//! Two shader variants share the weight layout and work split: a portable one and a faster one
//! that shares weights across a subgroup. [`GemmVariant::best_for`] picks per device.

use crate::epilogue::{Activation, Epilogue};
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, DeviceMatrix};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{
    BindingKind, CachedPipeline, KernelKey, KernelSource, create_params_buffer, specialize,
};
use crate::precision::Precision;
use crate::shape::check_linear_shape;

/// The bindings both GEMM variants declare, in binding order.
const GEMM_BINDINGS: &[BindingKind] = &[
    BindingKind::Uniform,          // 0: params
    BindingKind::StorageRead,      // 1: activations X [rows, inner]
    BindingKind::StorageRead,      // 2: weights, 16-column blocks
    BindingKind::StorageRead,      // 3: bias, padded to 16
    BindingKind::StorageRead,      // 4: residual R [rows, cols]
    BindingKind::StorageReadWrite, // 5: output [rows, cols]
];

/// The portable GEMM: register blocking only, runs on every adapter.
pub const GEMM_PORTABLE_KERNEL: KernelSource = KernelSource {
    name: "gemm",
    wgsl: concat!(
        include_str!("../../shaders/gemm.wgsl"),
        include_str!("../../shaders/fused_epilogue.wgsl")
    ),
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// The subgroup GEMM: weights shared across 8 invocations with `subgroupBroadcast`.
pub const GEMM_SUBGROUP_KERNEL: KernelSource = KernelSource {
    name: "gemm_subgroup",
    wgsl: concat!(
        include_str!("../../shaders/gemm_subgroup.wgsl"),
        include_str!("../../shaders/fused_epilogue.wgsl")
    ),
    entry_point: "gemm",
    bindings: GEMM_BINDINGS,
};

/// Output rows each invocation keeps in registers.
pub const ROWS_PER_INVOCATION: u32 = 4;
/// Output columns per workgroup: one block of the weight layout.
pub const COLUMN_BLOCK: usize = 16;
/// The weight layout pads the inner dimension to a multiple of this (the subgroup chunk).
pub const INNER_CHUNK: usize = 8;
/// Invocations per workgroup (`WORKGROUP_SIZE` in the shaders).
pub const WORKGROUP_SIZE: u32 = 64;
/// Rows one workgroup covers.
pub const ROWS_PER_WORKGROUP: u32 = WORKGROUP_SIZE * ROWS_PER_INVOCATION;

/// Which GEMM shader runs a dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmVariant {
    /// `shaders/gemm.wgsl`: register blocking, no optional features.
    Portable,
    /// `shaders/gemm_subgroup.wgsl`: register blocking plus weights shared through subgroup
    /// broadcasts; measured 2-4x faster than the portable variant on lavapipe.
    Subgroup,
}

impl GemmVariant {
    /// Every variant, for tests and benchmarks.
    pub const ALL: [GemmVariant; 2] = [GemmVariant::Portable, GemmVariant::Subgroup];

    /// The fastest variant the context's device supports.
    pub fn best_for(context: &GpuContext) -> GemmVariant {
        if Self::Subgroup.supported_by(context) {
            GemmVariant::Subgroup
        } else {
            GemmVariant::Portable
        }
    }

    /// Whether the device can run this variant: the subgroup variant needs the `SUBGROUP`
    /// feature and subgroups of at least 8 invocations.
    pub fn supported_by(self, context: &GpuContext) -> bool {
        match self {
            GemmVariant::Portable => true,
            GemmVariant::Subgroup => {
                context.features().contains(wgpu::Features::SUBGROUP)
                    && context.adapter_info().subgroup_min_size >= INNER_CHUNK as u32
            }
        }
    }

    /// The shader of this variant.
    pub fn kernel(self) -> &'static KernelSource {
        match self {
            GemmVariant::Portable => &GEMM_PORTABLE_KERNEL,
            GemmVariant::Subgroup => &GEMM_SUBGROUP_KERNEL,
        }
    }
}

/// The uniform block of the shaders, `GemmParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    rows: u32,
    cols: u32,
    inner: u32,
    inner_padded: u32,
}

/// The pipeline key of one variant, epilogue and storage precision.
pub fn kernel_key(variant: GemmVariant, epilogue: Epilogue, precision: Precision) -> KernelKey {
    let kernel = specialize(variant.kernel(), precision);
    KernelKey {
        shader: kernel.name,
        entry_point: kernel.entry_point,
        constants: vec![
            ("ADD_RESIDUAL", u32::from(epilogue.add_residual)),
            (
                "APPLY_RELU",
                u32::from(epilogue.activation == Activation::Relu),
            ),
            ("WORKGROUP_SIZE", WORKGROUP_SIZE),
        ],
    }
}

/// Converts a PyTorch `[out_features, in_features]` weight to the kernels' layout:
/// `[ceil(out/16)][in_padded][16]` with `in_padded` the next multiple of 8, zero-padded.
pub fn weights_to_kernel_layout(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
) -> Vec<f32> {
    let blocks = out_features.div_ceil(COLUMN_BLOCK);
    let inner_padded = in_features.next_multiple_of(INNER_CHUNK);
    let mut converted = vec![0.0f32; blocks * inner_padded * COLUMN_BLOCK];
    for (col, row) in weight.chunks_exact(in_features).enumerate() {
        let (block, lane) = (col / COLUMN_BLOCK, col % COLUMN_BLOCK);
        let block_start = block * inner_padded * COLUMN_BLOCK;
        for (k, &value) in row.iter().enumerate() {
            converted[block_start + k * COLUMN_BLOCK + lane] = value;
        }
    }
    converted
}

/// Bytes of the kernel-layout weights of an `out_features` × `in_features` layer.
pub fn kernel_layout_bytes(out_features: usize, in_features: usize, precision: Precision) -> u64 {
    (out_features.div_ceil(COLUMN_BLOCK) * COLUMN_BLOCK) as u64
        * in_features.next_multiple_of(INNER_CHUNK) as u64
        * precision.element_bytes()
}

/// A linear layer's weight and bias on the device, in the GEMM kernel's layout.
#[derive(Debug)]
pub struct LinearWeights {
    weights: wgpu::Buffer,
    bias: wgpu::Buffer,
    in_features: usize,
    out_features: usize,
    precision: Precision,
}

impl LinearWeights {
    /// Uploads a linear layer given as PyTorch stores it: `weight` row-major
    /// `[out_features, in_features]`, `bias` `[out_features]` (zeros when `None`), in f32.
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

    /// As [`Self::upload`], with the weights stored in `precision` (the bias stays f32).
    pub fn upload_with_precision(
        context: &GpuContext,
        out_features: usize,
        in_features: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
        precision: Precision,
    ) -> Result<Self> {
        check_linear_shape(
            out_features,
            in_features,
            weight.len(),
            bias.map(<[f32]>::len),
        )?;
        let what = format!("linear layer {out_features}x{in_features}");
        // Check before converting, so that a layer too large for the device fails fast and
        // without a large host allocation.
        precision.check_supported(context.features(), &context.adapter_info().name)?;
        let weight_bytes = kernel_layout_bytes(out_features, in_features, precision);
        buffers::check_storage_size(context, &format!("{what} weights"), weight_bytes)?;

        let converted = weights_to_kernel_layout(weight, out_features, in_features);
        let weights = buffers::upload_storage_buffer(
            context,
            &format!("{what} weights"),
            &precision.encode(&converted),
        )?;
        let bias = super::upload_padded_bias(context, &what, bias, out_features)?;
        Ok(LinearWeights {
            weights,
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

    /// Bytes the layer occupies on the device (weights and bias, padded).
    pub fn device_bytes(&self) -> u64 {
        self.weights.size() + self.bias.size()
    }
}

/// The operands of one fused GEMM.
#[derive(Clone, Copy, Debug)]
pub struct GemmOperands<'a> {
    /// X, `[rows, in_features]`.
    pub input: &'a DeviceMatrix,
    /// W and b.
    pub weights: &'a LinearWeights,
    /// R, `[rows, out_features]`, added before the activation when present.
    pub residual: Option<&'a DeviceMatrix>,
    /// The result, `[rows, out_features]`; must not be the input or the residual.
    pub output: &'a DeviceMatrix,
    /// The activation applied last.
    pub activation: Activation,
}

impl GemmOperands<'_> {
    /// The epilogue these operands ask for.
    pub fn epilogue(&self) -> Epilogue {
        Epilogue {
            activation: self.activation,
            add_residual: self.residual.is_some(),
        }
    }

    /// Checks every shape against the others and that the output aliases no input.
    fn validate(&self) -> Result<()> {
        let (rows, k, n) = (
            self.input.rows(),
            self.weights.in_features(),
            self.weights.out_features(),
        );
        if self.input.cols() != k {
            return Err(Error::shape_mismatch(
                "gemm input",
                format!("{k} columns (the layer's in_features)"),
                format!("{} columns", self.input.cols()),
            ));
        }
        if (self.output.rows(), self.output.cols()) != (rows, n) {
            return Err(Error::shape_mismatch(
                "gemm output",
                format!("[{rows}, {n}]"),
                format!("[{}, {}]", self.output.rows(), self.output.cols()),
            ));
        }
        if let Some(residual) = self.residual {
            if (residual.rows(), residual.cols()) != (rows, n) {
                return Err(Error::shape_mismatch(
                    "gemm residual",
                    format!("[{rows}, {n}]"),
                    format!("[{}, {}]", residual.rows(), residual.cols()),
                ));
            }
            if residual.buffer() == self.output.buffer() {
                return Err(Error::shape_mismatch(
                    "gemm output",
                    "a buffer distinct from the residual",
                    "the residual's buffer",
                ));
            }
        }
        if self.input.buffer() == self.output.buffer() {
            return Err(Error::shape_mismatch(
                "gemm output",
                "a buffer distinct from the input",
                "the input's buffer",
            ));
        }
        let precision = self.weights.precision();
        let mixed = [Some(self.input), self.residual, Some(self.output)]
            .into_iter()
            .flatten()
            .any(|matrix| matrix.precision() != precision);
        if mixed {
            return Err(Error::shape_mismatch(
                "gemm operands",
                format!("every matrix stored in {precision}, like the weights"),
                "matrices of another precision",
            ));
        }
        Ok(())
    }
}

/// A GEMM with its pipeline, parameters and bind group ready: recording it allocates nothing.
///
/// It is prepared for the operands' full row count; [`PreparedGemm::set_rows`] and
/// [`PreparedGemm::record_rows`] run it on fewer rows (a smaller batch) without rebuilding.
#[derive(Debug)]
pub struct PreparedGemm {
    variant: GemmVariant,
    pipeline: std::sync::Arc<CachedPipeline>,
    bind_group: wgpu::BindGroup,
    params_buffer: wgpu::Buffer,
    params: GemmParams,
    column_blocks: u32,
}

impl PreparedGemm {
    /// Validates the operands and builds (or fetches from the cache) everything one dispatch
    /// needs, with the fastest variant the device supports.
    pub fn new(context: &GpuContext, operands: &GemmOperands<'_>) -> Result<Self> {
        Self::with_variant(context, operands, GemmVariant::best_for(context))
    }

    /// As [`PreparedGemm::new`], with the variant chosen by the caller.
    pub fn with_variant(
        context: &GpuContext,
        operands: &GemmOperands<'_>,
        variant: GemmVariant,
    ) -> Result<Self> {
        operands.validate()?;
        if !variant.supported_by(context) {
            return Err(Error::MissingFeature {
                what: format!("the {variant:?} gemm variant"),
                feature: "SUBGROUP (with subgroups of at least 8 invocations)",
                adapter: context.adapter_info().name.clone(),
            });
        }
        let rows = operands.input.rows();
        let (k, n) = (
            operands.weights.in_features(),
            operands.weights.out_features(),
        );
        dispatch_size("gemm rows", rows, ROWS_PER_WORKGROUP as usize, context)?;
        let column_blocks = dispatch_size("gemm columns", n, COLUMN_BLOCK, context)?;
        let params = GemmParams {
            rows: to_u32("gemm rows", rows)?,
            cols: to_u32("gemm columns", n)?,
            inner: to_u32("gemm inner dimension", k)?,
            inner_padded: to_u32("gemm inner dimension", k.next_multiple_of(INNER_CHUNK))?,
        };
        let precision = operands.weights.precision();
        let pipeline = context.pipelines().get_or_create(
            context,
            &specialize(variant.kernel(), precision),
            &kernel_key(variant, operands.epilogue(), precision),
        )?;
        let residual = operands
            .residual
            .map_or(context.placeholder_storage(), DeviceMatrix::buffer);
        let (bind_group, params_buffer) = context.scoped("binding the gemm operands", || {
            let params_buffer =
                create_params_buffer(context, "gemm params", bytemuck::bytes_of(&params));
            let bind_group = pipeline.bind(
                context.device(),
                "gemm operands",
                &[
                    params_buffer.as_entire_binding(),
                    operands.input.buffer().as_entire_binding(),
                    operands.weights.weights.as_entire_binding(),
                    operands.weights.bias.as_entire_binding(),
                    residual.as_entire_binding(),
                    operands.output.buffer().as_entire_binding(),
                ],
            );
            (bind_group, params_buffer)
        })?;
        Ok(PreparedGemm {
            variant,
            pipeline,
            bind_group,
            params_buffer,
            params,
            column_blocks,
        })
    }

    /// The row count the dispatch was prepared for (the most it can run).
    pub fn max_rows(&self) -> usize {
        self.params.rows as usize
    }

    /// The shader variant the dispatch runs.
    pub fn variant(&self) -> GemmVariant {
        self.variant
    }

    /// Makes later submissions compute only the first `rows` rows (at most [`Self::max_rows`]).
    /// The write is queued, so it takes effect for command buffers submitted after this call.
    pub fn set_rows(&self, context: &GpuContext, rows: usize) -> Result<()> {
        let rows = self.checked_rows(rows)?;
        let params = GemmParams {
            rows,
            ..self.params
        };
        context.scoped("updating gemm rows", || {
            context
                .queue()
                .write_buffer(&self.params_buffer, 0, bytemuck::bytes_of(&params));
        })
    }

    /// Records the dispatch for all prepared rows into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.record_rows(pass, self.max_rows());
    }

    /// Records the dispatch for the first `rows` rows, which must match the last
    /// [`Self::set_rows`] (or the prepared count): only the workgroups those rows need are
    /// launched. `rows` is clamped to [`Self::max_rows`].
    pub fn record_rows(&self, pass: &mut wgpu::ComputePass<'_>, rows: usize) {
        let rows = rows.clamp(1, self.max_rows());
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let row_groups = rows.div_ceil(ROWS_PER_WORKGROUP as usize) as u32;
        pass.dispatch_workgroups(row_groups, self.column_blocks, 1);
    }

    fn checked_rows(&self, rows: usize) -> Result<u32> {
        if rows == 0 || rows > self.max_rows() {
            return Err(Error::shape_mismatch(
                "gemm rows",
                format!("1..={}", self.max_rows()),
                rows,
            ));
        }
        Ok(rows as u32)
    }

    /// Records the dispatch in a compute pass of its own, into `encoder`.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("resgraph gemm"),
            timestamp_writes: None,
        });
        self.record(&mut pass);
    }

    /// Submits the dispatch on the context's queue (without waiting for it).
    pub fn submit(&self, context: &GpuContext) -> Result<()> {
        context.scoped("running the gemm", || {
            let mut encoder =
                context
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("resgraph gemm"),
                    });
            self.encode(&mut encoder);
            context.queue().submit([encoder.finish()]);
        })
    }

    /// Floating-point operations of one dispatch over all prepared rows (`2·M·N·K`).
    pub fn flops(&self) -> u64 {
        2 * u64::from(self.params.rows) * u64::from(self.params.cols) * u64::from(self.params.inner)
    }
}

/// Runs one fused GEMM with the device's best variant and waits for it: the simplest way to use
/// the kernel.
pub fn run_gemm(context: &GpuContext, operands: &GemmOperands<'_>) -> Result<()> {
    let prepared = PreparedGemm::new(context, operands)?;
    prepared.submit(context)?;
    context.wait_idle()
}

fn dispatch_size(
    what: &str,
    items: usize,
    per_workgroup: usize,
    context: &GpuContext,
) -> Result<u32> {
    let groups = (items as u64).div_ceil(per_workgroup as u64);
    let limit = context.limits().max_compute_workgroups_per_dimension;
    if groups > u64::from(limit) {
        return Err(Error::DispatchTooLarge {
            what: what.to_string(),
            requested: groups,
            limit,
        });
    }
    Ok(groups as u32)
}

fn to_u32(what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::shape_mismatch(what, format!("at most {}", u32::MAX), value.to_string())
    })
}
