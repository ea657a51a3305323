//! Everything that talks to wgpu directly: the device context, buffers, and the pipeline cache.
//! Other modules reach the GPU only through these types.

pub mod buffers;
pub mod context;
pub mod pipelines;
pub(crate) mod scope;
