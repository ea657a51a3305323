//! resgraph: residual networks on any GPU.
//!
//! WGSL compute kernels fuse GEMM + bias, ReLU and residual-add; the Rust host runs them on any
//! wgpu adapter (Vulkan, Metal, DX12, GL).
//!
//! ```no_run
//! use resgraph::epilogue::Activation;
//! use resgraph::gpu::buffers::DeviceMatrix;
//! use resgraph::gpu::context::{AdapterOptions, GpuContext};
//! use resgraph::kernels::gemm::{run_gemm, GemmOperands, LinearWeights};
//!
//! # fn main() -> resgraph::Result<()> {
//! let context = GpuContext::new(&AdapterOptions::from_env()?)?;
//! // A 3 -> 2 linear layer, weight in PyTorch's [out, in] layout.
//! let weights = LinearWeights::upload(&context, 2, 3, &[1., 0., 0., 0., 1., 0.], Some(&[0.5, -9.]))?;
//! let input = DeviceMatrix::from_host(&context, "x", 1, 3, &[1., 2., 3.])?;
//! let output = DeviceMatrix::new(&context, "y", 1, 2)?;
//! run_gemm(&context, &GemmOperands {
//!     input: &input, weights: &weights, residual: None, output: &output,
//!     activation: Activation::Relu,
//! })?;
//! assert_eq!(output.read(&context)?, vec![1.5, 0.0]);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod bench;
pub mod epilogue;
pub mod error;
pub mod exec;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod model;
pub mod plan;
pub mod precision;
pub mod reference;
pub mod shape;
pub mod tune;

pub use error::{Error, Result};

/// The README's Rust examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
