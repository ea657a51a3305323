//! Host-side glue of the WGSL kernels in `shaders/`: how each is keyed, bound and dispatched.

pub mod elementwise;
pub mod gemm;
pub mod gemv;
pub mod residual_block;

use crate::error::Result;
use crate::gpu::buffers;
use crate::gpu::context::GpuContext;

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
