//! Host-side glue of the WGSL kernels in `shaders/`: how each is keyed, bound and dispatched.

pub mod elementwise;
pub mod gemm;
pub mod gemv;
