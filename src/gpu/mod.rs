//! Everything that talks to wgpu directly: the device context, buffers, and the pipeline cache.
//! Other modules reach the GPU only through these types.

pub mod buffers;
pub mod context;
pub mod pipelines;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod poller;
pub(crate) mod scope;
