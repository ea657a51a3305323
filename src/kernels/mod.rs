//! Host-side glue of the WGSL kernels in `shaders/`: how each is keyed, bound and dispatched.

use crate::error::{Error, Result};
use crate::gpu::buffers;
use crate::gpu::context::GpuContext;

pub mod conv2d;
pub mod elementwise;
pub mod gemm;
pub mod gemv;
pub mod launch;
pub mod pool;
pub mod residual_block;
pub mod source;

pub use launch::PreparedKernel;

/// Every kernel the host compiles, for the shader tests (which validate each one's generated
/// source for every precision) and for tools that list them.
pub const ALL_KERNELS: &[&source::KernelSource] = &[
    &gemm::GEMM_PORTABLE_KERNEL,
    &gemm::GEMM_SUBGROUP_KERNEL,
    &gemm::GEMM_COOPERATIVE_KERNEL,
    &gemm::GEMM_COOPERATIVE_STAGED_KERNEL,
    &gemm::GEMM_COOPERATIVE_STAGED_VEC4_KERNEL,
    &gemm::GEMM_SMALL_BATCH_KERNEL,
    &gemm::GEMM_TILED_KERNEL,
    &gemv::GEMV_TEXTURE_KERNEL,
    &gemv::GEMV_TEXTURE_STAGED_KERNEL,
    &elementwise::ELEMENTWISE_KERNEL,
    &residual_block::RESIDUAL_BLOCK_KERNEL,
    &conv2d::CONV2D_KERNEL,
    &conv2d::CONV2D_SUBGROUP_KERNEL,
    &pool::POOL2D_KERNEL,
    &pool::GLOBAL_AVG_POOL_KERNEL,
];

/// Workgroups needed for `items` at `per_workgroup` each along one dimension, or
/// `Error::DispatchTooLarge` when that is over the device's per-dimension limit.
pub(crate) fn workgroup_count(
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

/// Uploads a layer's bias as f32, zero-padded to a multiple of 16 values (the GEMM's column
/// block; the GEMV reads it as vec4), with zeros for a layer without bias. Every kernel keeps its
/// bias in f32 whatever the weights' precision.
pub(crate) fn upload_padded_bias(
    context: &GpuContext,
    what: &str,
    bias: Option<&[f32]>,
    out_features: usize,
) -> Result<wgpu::Buffer> {
    let mut padded = vec![0.0f32; out_features.next_multiple_of(gemm::COLUMN_BLOCK)];
    if let Some(bias) = bias {
        padded[..out_features].copy_from_slice(bias);
    }
    buffers::upload_storage_buffer(
        context,
        &format!("{what} bias"),
        bytemuck::cast_slice(&padded),
    )
}
