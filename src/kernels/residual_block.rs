//! Host side of `shaders/residual_block.wgsl`: a whole residual block,
//! `relu(W2·relu(W1·a + b1) + b2 + a)`, in one dispatch with the hidden activation kept in
//! workgroup memory.
//!
//! The block reads both layers' weights in the GEMM's blocked layout ([`LinearWeights`]), so a
//! model can switch between the fused block and two GEMM dispatches without another upload. The
//! planner offers every `linear → relu → linear → add(input) → relu` pair
//! ([`crate::plan::Plan::residual_blocks`]); the executor uses this kernel for the pairs where it
//! measured faster, or where the caller asked for it.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{
    BindingKind, CachedPipeline, KernelKey, KernelSource, create_params_buffer, specialize,
};
use crate::kernels::gemm::{INNER_CHUNK, LinearWeights};
use crate::kernels::{to_u32, workgroup_count};
use crate::precision::Precision;

/// The bindings of the block kernel, in binding order.
const BLOCK_BINDINGS: &[BindingKind] = &[
    BindingKind::Uniform,          // 0: params
    BindingKind::StorageRead,      // 1: the block input a (also the shortcut)
    BindingKind::StorageRead,      // 2: W1, 16-column blocks
    BindingKind::StorageRead,      // 3: b1, padded to 16
    BindingKind::StorageRead,      // 4: W2, 16-column blocks
    BindingKind::StorageRead,      // 5: b2, padded to 16
    BindingKind::StorageReadWrite, // 6: output
];

/// The whole-block kernel.
pub const RESIDUAL_BLOCK_KERNEL: KernelSource = KernelSource {
    name: "residual_block",
    wgsl: concat!(
        include_str!("../../shaders/residual_block.wgsl"),
        include_str!("../../shaders/fused_epilogue.wgsl")
    ),
    entry_point: "residual_block",
    bindings: BLOCK_BINDINGS,
};

/// Batch rows one workgroup computes (`BLOCK_ROWS` in the shader).
pub const BLOCK_ROWS: usize = 8;
/// The widest hidden layer the kernel keeps in workgroup memory (`MAX_HIDDEN`).
pub const MAX_HIDDEN: usize = 512;
/// Workgroup memory the kernel declares: the hidden activation of its rows in f32.
pub const WORKGROUP_MEMORY_BYTES: u32 = (BLOCK_ROWS * MAX_HIDDEN * 4) as u32;
/// Invocations per workgroup (`WORKGROUP_SIZE`).
const WORKGROUP_SIZE: u32 = 64;

/// The uniform block of the shader, `BlockParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct BlockParams {
    rows: u32,
    cols: u32,
    hidden: u32,
    cols_padded: u32,
    hidden_padded: u32,
    padding: [u32; 3],
}

/// Why the device cannot run the block kernel for `rows` of a block of `width` with a `hidden`
/// layer, or `None` when it can.
pub fn unsupported_reason(
    context: &GpuContext,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
) -> Option<String> {
    let limits = context.limits();
    if !context.features().contains(wgpu::Features::SUBGROUP)
        || context.adapter_info().subgroup_min_size < INNER_CHUNK as u32
    {
        return Some("the device has no subgroups of at least 8 invocations".to_string());
    }
    if precision == Precision::F16 && !context.features().contains(wgpu::Features::SHADER_F16) {
        return Some("the device has no shader-f16".to_string());
    }
    if limits.max_compute_workgroup_storage_size < WORKGROUP_MEMORY_BYTES
        || limits.max_compute_invocations_per_workgroup < WORKGROUP_SIZE
    {
        return Some(format!(
            "the device offers {} bytes of workgroup memory and {} invocations per workgroup; \
             the block kernel needs {WORKGROUP_MEMORY_BYTES} and {WORKGROUP_SIZE}",
            limits.max_compute_workgroup_storage_size, limits.max_compute_invocations_per_workgroup
        ));
    }
    if hidden > MAX_HIDDEN {
        return Some(format!(
            "the hidden width {hidden} is over the {MAX_HIDDEN} the block kernel keeps on chip"
        ));
    }
    if width == 0 || hidden == 0 || rows == 0 {
        return Some("a zero-sized dimension".to_string());
    }
    workgroup_count("residual block rows", rows, BLOCK_ROWS, context)
        .err()
        .map(|error| error.to_string())
}

/// Whether the device can run the block kernel for `rows` of a block of `width` with a `hidden`
/// layer.
pub fn supported(
    context: &GpuContext,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
) -> bool {
    unsupported_reason(context, precision, (rows, width, hidden)).is_none()
}

/// The operands of one whole residual block.
#[derive(Clone, Copy, Debug)]
pub struct ResidualBlockOperands<'a> {
    /// a, `[rows, width]`: the block input and its shortcut.
    pub input: &'a DeviceMatrix,
    /// W1 and b1, `width → hidden`.
    pub first: &'a LinearWeights,
    /// W2 and b2, `hidden → width`.
    pub second: &'a LinearWeights,
    /// The result, `[rows, width]`; must not be the input.
    pub output: &'a DeviceMatrix,
}

impl ResidualBlockOperands<'_> {
    fn validate(&self) -> Result<(usize, usize)> {
        let width = self.input.cols();
        let hidden = self.first.out_features();
        let expect = |what: &str, expected: String, actual: String| -> Result<()> {
            if expected == actual {
                Ok(())
            } else {
                Err(Error::shape_mismatch(what, expected, actual))
            }
        };
        expect(
            "residual block first layer",
            format!("{width} inputs"),
            format!("{} inputs", self.first.in_features()),
        )?;
        expect(
            "residual block second layer",
            format!("{hidden} -> {width}"),
            format!(
                "{} -> {}",
                self.second.in_features(),
                self.second.out_features()
            ),
        )?;
        expect(
            "residual block output",
            format!("[{}, {width}]", self.input.rows()),
            format!("[{}, {}]", self.output.rows(), self.output.cols()),
        )?;
        if self.input.buffer() == self.output.buffer() {
            return Err(Error::shape_mismatch(
                "residual block output",
                "a buffer distinct from the input",
                "the input's buffer",
            ));
        }
        let precision = self.first.precision();
        let mixed = self.second.precision() != precision
            || self.input.precision() != precision
            || self.output.precision() != precision;
        if mixed {
            return Err(Error::shape_mismatch(
                "residual block operands",
                format!("every matrix stored in {precision}, like the first layer's weights"),
                "matrices of another precision",
            ));
        }
        Ok((width, hidden))
    }
}

/// A whole-block dispatch with its pipeline, parameters and bind group ready.
#[derive(Debug)]
pub struct PreparedResidualBlock {
    pipeline: Arc<CachedPipeline>,
    bind_group: wgpu::BindGroup,
    params_buffer: wgpu::Buffer,
    params: BlockParams,
}

impl PreparedResidualBlock {
    /// Validates the operands and builds (or fetches from the cache) everything the dispatch
    /// needs. A hidden width over [`MAX_HIDDEN`] is a shape mismatch, a device without what the
    /// kernel needs `Error::MissingFeature`, and more rows than the device's workgroup limit
    /// allows `Error::DispatchTooLarge`.
    pub fn new(context: &GpuContext, operands: &ResidualBlockOperands<'_>) -> Result<Self> {
        let (width, hidden) = operands.validate()?;
        let precision = operands.first.precision();
        if hidden > MAX_HIDDEN {
            return Err(Error::shape_mismatch(
                "residual block hidden width",
                format!("at most {MAX_HIDDEN} (the whole-block kernel keeps it on chip)"),
                hidden,
            ));
        }
        let rows = operands.input.rows();
        if let Some(reason) = unsupported_reason(context, precision, (1, width, hidden)) {
            return Err(Error::MissingFeature {
                what: format!("the whole-block kernel for a {width}x{hidden} block ({reason})"),
                feature: "SUBGROUP (subgroups of at least 8) and 16 KiB of workgroup memory",
                adapter: context.adapter_info().name.clone(),
            });
        }
        workgroup_count("residual block rows", rows, BLOCK_ROWS, context)?;
        let params = BlockParams {
            rows: to_u32("residual block rows", rows)?,
            cols: to_u32("residual block width", width)?,
            hidden: to_u32("residual block hidden width", hidden)?,
            cols_padded: to_u32("residual block width", width.next_multiple_of(INNER_CHUNK))?,
            hidden_padded: to_u32(
                "residual block hidden width",
                hidden.next_multiple_of(INNER_CHUNK),
            )?,
            padding: [0; 3],
        };
        let kernel = specialize(&RESIDUAL_BLOCK_KERNEL, precision);
        let key = KernelKey {
            shader: kernel.name,
            entry_point: kernel.entry_point,
            constants: Vec::new(),
        };
        let pipeline = context.pipelines().get_or_create(context, &kernel, &key)?;
        let (bind_group, params_buffer) =
            context.scoped("binding the residual block operands", || {
                let params_buffer = create_params_buffer(
                    context,
                    "residual block params",
                    bytemuck::bytes_of(&params),
                );
                let bind_group = pipeline.bind(
                    context.device(),
                    "residual block operands",
                    &[
                        params_buffer.as_entire_binding(),
                        operands.input.buffer().as_entire_binding(),
                        operands.first.weights_buffer().as_entire_binding(),
                        operands.first.bias_buffer().as_entire_binding(),
                        operands.second.weights_buffer().as_entire_binding(),
                        operands.second.bias_buffer().as_entire_binding(),
                        operands.output.buffer().as_entire_binding(),
                    ],
                );
                (bind_group, params_buffer)
            })?;
        Ok(PreparedResidualBlock {
            pipeline,
            bind_group,
            params_buffer,
            params,
        })
    }

    /// The row count the dispatch was prepared for (the most it can run).
    pub fn max_rows(&self) -> usize {
        self.params.rows as usize
    }

    /// Makes later submissions compute only the first `rows` rows (at most [`Self::max_rows`]).
    pub fn set_rows(&self, context: &GpuContext, rows: usize) -> Result<()> {
        if rows == 0 || rows > self.max_rows() {
            return Err(Error::shape_mismatch(
                "residual block rows",
                format!("1..={}", self.max_rows()),
                rows,
            ));
        }
        let params = BlockParams {
            rows: rows as u32,
            ..self.params
        };
        context.scoped("updating residual block rows", || {
            context
                .queue()
                .write_buffer(&self.params_buffer, 0, bytemuck::bytes_of(&params));
        })
    }

    /// Records the dispatch for the first `rows` rows (as last set with [`Self::set_rows`]).
    pub fn record_rows(&self, pass: &mut wgpu::ComputePass<'_>, rows: usize) {
        let rows = rows.clamp(1, self.max_rows());
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(rows.div_ceil(BLOCK_ROWS) as u32, 1, 1);
    }

    /// Submits the dispatch for all prepared rows on the context's queue (without waiting).
    pub fn submit(&self, context: &GpuContext) -> Result<()> {
        context.submit_pass("resgraph residual block", |pass| {
            self.record_rows(pass, self.max_rows());
        })
    }
}
