//! Host side of `shaders/elementwise.wgsl`: `act(left [+ right])` over whole matrices, for the
//! ReLUs and adds the planner could not fuse into a GEMM.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{
    BindingKind, CachedPipeline, KernelKey, KernelSource, create_params_buffer, specialize,
};

/// The elementwise shader and its binding table.
pub const ELEMENTWISE_KERNEL: KernelSource = KernelSource {
    name: "elementwise",
    wgsl: include_str!("../../shaders/elementwise.wgsl"),
    entry_point: "elementwise",
    bindings: &[
        BindingKind::Uniform,          // 0: params
        BindingKind::StorageRead,      // 1: left
        BindingKind::StorageRead,      // 2: right
        BindingKind::StorageReadWrite, // 3: output
    ],
};

/// Invocations per workgroup (`WORKGROUP_SIZE` in the shader).
const WORKGROUP_SIZE: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    len: u32,
    groups_x: u32,
    unused0: u32,
    unused1: u32,
}

/// The operands of one elementwise dispatch; all matrices have the same shape.
#[derive(Clone, Copy, Debug)]
pub struct ElementwiseOperands<'a> {
    /// The first operand.
    pub left: &'a DeviceMatrix,
    /// The second operand, added when present.
    pub right: Option<&'a DeviceMatrix>,
    /// The result; must not be an operand.
    pub output: &'a DeviceMatrix,
    /// Whether `max(·, 0)` is applied last.
    pub relu: bool,
}

/// An elementwise dispatch with its pipeline and bind group ready.
#[derive(Debug)]
pub struct PreparedElementwise {
    pipeline: Arc<CachedPipeline>,
    bind_group: wgpu::BindGroup,
    params_buffer: wgpu::Buffer,
    rows: usize,
    cols: usize,
    max_groups_x: u32,
}

impl PreparedElementwise {
    /// Validates shapes and builds the dispatch.
    pub fn new(context: &GpuContext, operands: &ElementwiseOperands<'_>) -> Result<Self> {
        let shape = (operands.left.rows(), operands.left.cols());
        for (role, matrix) in [("right", operands.right), ("output", Some(operands.output))] {
            if let Some(matrix) = matrix
                && (matrix.rows(), matrix.cols()) != shape
            {
                return Err(Error::shape_mismatch(
                    format!("elementwise {role}"),
                    format!("[{}, {}]", shape.0, shape.1),
                    format!("[{}, {}]", matrix.rows(), matrix.cols()),
                ));
            }
        }
        let aliased = operands.left.buffer() == operands.output.buffer()
            || operands
                .right
                .is_some_and(|right| right.buffer() == operands.output.buffer());
        if aliased {
            return Err(Error::shape_mismatch(
                "elementwise output",
                "a buffer distinct from the operands",
                "an operand's buffer",
            ));
        }
        let precision = operands.left.precision();
        let mixed = [operands.right, Some(operands.output)]
            .into_iter()
            .flatten()
            .any(|matrix| matrix.precision() != precision);
        if mixed {
            return Err(Error::shape_mismatch(
                "elementwise operands",
                format!("every matrix stored in {precision}"),
                "matrices of another precision",
            ));
        }
        precision.check_supported(context.features(), &context.adapter_info().name)?;
        let kernel = specialize(&ELEMENTWISE_KERNEL, precision);
        let max_groups_x = context.limits().max_compute_workgroups_per_dimension;
        let key = KernelKey {
            shader: kernel.name,
            entry_point: kernel.entry_point,
            constants: vec![
                ("ADD_RIGHT", u32::from(operands.right.is_some())),
                ("APPLY_RELU", u32::from(operands.relu)),
            ],
        };
        let pipeline = context.pipelines().get_or_create(context, &kernel, &key)?;
        let right = operands
            .right
            .map_or(context.placeholder_storage(), DeviceMatrix::buffer);
        let (bind_group, params_buffer) = context.scoped("binding elementwise operands", || {
            let empty = ElementwiseParams {
                len: 0,
                groups_x: 1,
                unused0: 0,
                unused1: 0,
            };
            let params_buffer =
                create_params_buffer(context, "elementwise params", bytemuck::bytes_of(&empty));
            let bind_group = pipeline.bind(
                context.device(),
                "elementwise operands",
                &[
                    params_buffer.as_entire_binding(),
                    operands.left.buffer().as_entire_binding(),
                    right.as_entire_binding(),
                    operands.output.buffer().as_entire_binding(),
                ],
            );
            (bind_group, params_buffer)
        })?;
        let prepared = PreparedElementwise {
            pipeline,
            bind_group,
            params_buffer,
            rows: shape.0,
            cols: shape.1,
            max_groups_x,
        };
        prepared.set_rows(context, shape.0)?;
        Ok(prepared)
    }

    /// Makes later submissions process only the first `rows` rows.
    pub fn set_rows(&self, context: &GpuContext, rows: usize) -> Result<()> {
        if rows == 0 || rows > self.rows {
            return Err(Error::shape_mismatch(
                "elementwise rows",
                format!("1..={}", self.rows),
                rows,
            ));
        }
        let (len, groups_x, _) = self.grid(rows);
        let params = ElementwiseParams {
            len,
            groups_x,
            unused0: 0,
            unused1: 0,
        };
        context.scoped("updating elementwise rows", || {
            context
                .queue()
                .write_buffer(&self.params_buffer, 0, bytemuck::bytes_of(&params));
        })
    }

    /// Records the dispatch for the first `rows` rows (as last set with [`Self::set_rows`]).
    pub fn record_rows(&self, pass: &mut wgpu::ComputePass<'_>, rows: usize) {
        let (_, groups_x, groups_y) = self.grid(rows.clamp(1, self.rows));
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(groups_x, groups_y, 1);
    }

    /// (elements, workgroups along x, workgroups along y) for `rows` rows.
    fn grid(&self, rows: usize) -> (u32, u32, u32) {
        let len = rows * self.cols;
        let groups = len.div_ceil(WORKGROUP_SIZE).max(1);
        let groups_x = groups.min(self.max_groups_x as usize);
        let groups_y = groups.div_ceil(groups_x);
        (len as u32, groups_x as u32, groups_y as u32)
    }
}
