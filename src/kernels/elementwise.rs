//! Host side of `shaders/elementwise.wgsl`: `act(left [+ right])` over whole matrices, for the
//! ReLUs and adds the planner could not fuse into a GEMM.

use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::BindingKind;
use crate::kernels::launch::{
    LaunchDescriptor, LaunchShape, PreparedKernel, check_operands, param_bytes, to_u32,
};
use crate::kernels::source::{ACTIVATION, KernelSource, no_declarations};

/// The elementwise shader and its binding table.
pub const ELEMENTWISE_KERNEL: KernelSource = KernelSource {
    name: "elementwise",
    body: include_str!("../../shaders/elementwise.wgsl"),
    pieces: &[ACTIVATION],
    extensions: &[],
    declarations: no_declarations,
    entry_point: "elementwise",
    bindings: &[
        BindingKind::Uniform,          // 0: params
        BindingKind::StorageRead,      // 1: left
        BindingKind::StorageRead,      // 2: right
        BindingKind::StorageReadWrite, // 3: output
    ],
};

/// Invocations per workgroup (`WORKGROUP_SIZE` in the shader).
const WORKGROUP_SIZE: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    len: u32,
    groups_x: u32,
    unused0: u32,
    unused1: u32,
}

/// The elementwise kernel's parameter block and grid: one invocation per element, the
/// workgroups folded into two dimensions so that large matrices stay within the per-dimension
/// limit.
#[derive(Debug)]
struct ElementwiseLaunch {
    cols: u32,
    max_groups_x: u32,
}

impl ElementwiseLaunch {
    /// (elements, workgroups along x, workgroups along y) for `rows` rows.
    fn grid(&self, rows: u32) -> (u32, u32, u32) {
        let len = rows * self.cols;
        let groups = len.div_ceil(WORKGROUP_SIZE).max(1);
        let groups_x = groups.min(self.max_groups_x);
        (len, groups_x, groups.div_ceil(groups_x))
    }
}

impl LaunchShape for ElementwiseLaunch {
    fn params(&self, rows: u32) -> Vec<u8> {
        let (len, groups_x, _) = self.grid(rows);
        param_bytes(&ElementwiseParams {
            len,
            groups_x,
            unused0: 0,
            unused1: 0,
        })
    }

    fn workgroups(&self, rows: u32) -> [u32; 3] {
        let (_, groups_x, groups_y) = self.grid(rows);
        [groups_x, groups_y, 1]
    }
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

/// Validates shapes and prepares one elementwise dispatch.
pub fn prepare_elementwise(
    context: &GpuContext,
    operands: &ElementwiseOperands<'_>,
) -> Result<PreparedKernel> {
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
    let precision = operands.left.precision();
    check_operands(
        "elementwise operands",
        precision,
        &[("left", Some(operands.left)), ("right", operands.right)],
        operands.output,
    )?;
    let kernel = &ELEMENTWISE_KERNEL;
    // Every element's index must fit the shader's u32.
    to_u32(kernel.name, "elementwise elements", shape.0 * shape.1)?;
    let right = operands.right.map_or_else(
        || context.placeholder_storage().as_entire_binding(),
        DeviceMatrix::binding,
    );
    PreparedKernel::new(
        context,
        LaunchDescriptor {
            label: "elementwise",
            kernel,
            precision,
            constants: vec![
                ("ADD_RIGHT", u32::from(operands.right.is_some())),
                ("APPLY_RELU", u32::from(operands.relu)),
            ],
            resources: &[operands.left.binding(), right, operands.output.binding()],
            max_rows: shape.0,
            shape: Box::new(ElementwiseLaunch {
                cols: to_u32(kernel.name, "elementwise columns", shape.1)?,
                max_groups_x: context.limits().max_compute_workgroups_per_dimension,
            }),
        },
    )
}
