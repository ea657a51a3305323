//! Host side of `shaders/residual_block.wgsl`: a whole residual block,
//! `relu(W2·relu(W1·a + b1) + b2 + a)`, in one dispatch with the hidden activation kept in
//! workgroup memory.
//!
//! The block reads both layers' weights in the GEMM's blocked layout ([`LinearWeights`]), so a
//! model can switch between the fused block and two GEMM dispatches without another upload. The
//! planner offers every `linear → relu → linear → add(input) → relu` pair
//! (`Plan::residual_blocks`); kernel selection (`crate::select`) runs a pair with this kernel
//! where the tuner measured it faster, or where the caller asked for it.

use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::BindingKind;
use crate::kernels::gemm::{INNER_CHUNK, LinearWeights};
use crate::kernels::launch::{
    LaunchDescriptor, LaunchShape, PreparedKernel, check_operands, param_bytes, to_u32,
};
use crate::kernels::source::{ACTIVATION, FUSED_EPILOGUE, KernelSource, no_declarations};
use crate::kernels::workgroup_count;
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
    body: include_str!("../../shaders/residual_block.wgsl"),
    pieces: &[ACTIVATION, FUSED_EPILOGUE],
    extensions: &[],
    declarations: no_declarations,
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

/// The block kernel's parameter block and grid: one workgroup per [`BLOCK_ROWS`] rows.
#[derive(Debug)]
struct BlockLaunch {
    params: BlockParams,
}

impl LaunchShape for BlockLaunch {
    fn params(&self, rows: u32) -> Vec<u8> {
        param_bytes(&BlockParams {
            rows,
            ..self.params
        })
    }

    fn workgroups(&self, rows: u32) -> [u32; 3] {
        [rows.div_ceil(BLOCK_ROWS as u32), 1, 1]
    }
}

/// Checks that the device can run the block kernel for `rows` of a block of `width` with a
/// `hidden` layer: [`Error::MissingFeature`] for a device without subgroups of at least 8, f16
/// or the kernel's workgroup memory, [`Error::UnsupportedShape`] for a hidden layer wider than
/// [`MAX_HIDDEN`], and the typed errors of a zero-sized or too-large dispatch.
pub fn check_supported(
    context: &GpuContext,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
) -> Result<()> {
    let limits = context.limits();
    let adapter = || context.adapter_info().name.clone();
    let what = format!("the whole-block kernel for a {width}x{hidden} block");
    if !context.features().contains(wgpu::Features::SUBGROUP)
        || context.adapter_info().subgroup_min_size < INNER_CHUNK as u32
    {
        return Err(Error::MissingFeature {
            what,
            feature: "SUBGROUP (with subgroups of at least 8 invocations)",
            adapter: adapter(),
        });
    }
    if precision == Precision::F16 && !context.features().contains(wgpu::Features::SHADER_F16) {
        return Err(Error::MissingFeature {
            what,
            feature: "SHADER_F16",
            adapter: adapter(),
        });
    }
    if limits.max_compute_workgroup_storage_size < WORKGROUP_MEMORY_BYTES
        || limits.max_compute_invocations_per_workgroup < WORKGROUP_SIZE
    {
        return Err(Error::MissingFeature {
            what,
            feature: "16 KiB of workgroup memory and 64 invocations per workgroup",
            adapter: adapter(),
        });
    }
    if hidden > MAX_HIDDEN {
        return Err(Error::UnsupportedShape {
            kernel: RESIDUAL_BLOCK_KERNEL.name,
            what: format!("a block of width {width} with a hidden layer of {hidden}"),
            reason: format!("it keeps at most {MAX_HIDDEN} hidden values per row on chip"),
        });
    }
    for (dimension, value) in [("rows", rows), ("width", width), ("hidden", hidden)] {
        if value == 0 {
            return Err(Error::zero_sized("residual block", dimension));
        }
    }
    workgroup_count("residual block rows", rows, BLOCK_ROWS, context).map(|_| ())
}

/// Whether the device can run the block kernel for `rows` of a block of `width` with a `hidden`
/// layer (see [`check_supported`] for why not).
pub fn supported(
    context: &GpuContext,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
) -> bool {
    check_supported(context, precision, (rows, width, hidden)).is_ok()
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
        check_operands(
            "residual block operands",
            self.first.precision(),
            &[("input", Some(self.input))],
            self.output,
        )?;
        if self.second.precision() != self.first.precision() {
            return Err(Error::PrecisionMismatch {
                what: "residual block operands".to_string(),
                operand: "second layer",
                expected: self.first.precision(),
                actual: self.second.precision(),
            });
        }
        Ok((width, hidden))
    }
}

/// Validates the operands and prepares the whole block as one dispatch: a hidden width over
/// [`MAX_HIDDEN`] is [`Error::UnsupportedShape`], a device without what the kernel needs
/// [`Error::MissingFeature`], and more rows than the device's workgroup limit allows
/// [`Error::DispatchTooLarge`].
pub fn prepare_residual_block(
    context: &GpuContext,
    operands: &ResidualBlockOperands<'_>,
) -> Result<PreparedKernel> {
    let (width, hidden) = operands.validate()?;
    let precision = operands.first.precision();
    let rows = operands.input.rows();
    check_supported(context, precision, (rows, width, hidden))?;
    let kernel = &RESIDUAL_BLOCK_KERNEL;
    let params = BlockParams {
        rows: to_u32(kernel.name, "residual block rows", rows)?,
        cols: to_u32(kernel.name, "residual block width", width)?,
        hidden: to_u32(kernel.name, "residual block hidden width", hidden)?,
        cols_padded: to_u32(
            kernel.name,
            "residual block width",
            width.next_multiple_of(INNER_CHUNK),
        )?,
        hidden_padded: to_u32(
            kernel.name,
            "residual block hidden width",
            hidden.next_multiple_of(INNER_CHUNK),
        )?,
        padding: [0; 3],
    };
    PreparedKernel::new(
        context,
        LaunchDescriptor {
            label: "residual block",
            kernel,
            precision,
            constants: Vec::new(),
            resources: &[
                operands.input.binding(),
                operands.first.weights_buffer().as_entire_binding(),
                operands.first.bias_buffer().as_entire_binding(),
                operands.second.weights_buffer().as_entire_binding(),
                operands.second.bias_buffer().as_entire_binding(),
                operands.output.binding(),
            ],
            max_rows: rows,
            shape: Box::new(BlockLaunch { params }),
        },
    )
}
