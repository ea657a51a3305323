//! resgraph: residual networks on any GPU.
//!
//! WGSL compute kernels fuse GEMM + bias, ReLU and residual-add; the Rust host compiles a
//! residual network once onto any wgpu adapter (Vulkan, Metal, DX12, GL) and then runs each
//! inference as one command buffer.
//!
//! ```no_run
//! use std::sync::Arc;
//! use resgraph::{AdapterOptions, CompileOptions, CompiledModel, GpuContext, GraphBuilder, LinearParams};
//!
//! # fn main() -> resgraph::Result<()> {
//! let context = Arc::new(GpuContext::new(&AdapterOptions::from_env()?)?);
//! let mut graph = GraphBuilder::new();
//! let x = graph.input("x", 3)?;
//! // A 3 -> 2 linear layer, weight in PyTorch's [out, in] layout, then a ReLU.
//! let weights = LinearParams::new(2, 3, vec![1., 0., 0., 0., 1., 0.], Some(vec![0.5, -9.]))?;
//! let y = graph.linear("fc", x, weights)?;
//! let y = graph.relu("relu", y)?;
//! let model = CompiledModel::compile(context, &graph.build(y)?, &CompileOptions::new(1))?;
//! assert_eq!(model.run(&[1., 2., 3.])?, vec![1.5, 0.0]);
//! # Ok(()) }
//! ```
//!
//! The types a user needs are re-exported here. The modules are the engine's layers (graph →
//! plan → selection → executor → kernels → gpu, see `ARCHITECTURE.md`); those that are public
//! are hidden from the documentation and kept reachable only for resgraph's own command-line
//! program, tests and benchmarks: they are not a stable API.
#![warn(missing_docs)]

#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod epilogue;
mod error;
#[doc(hidden)]
pub mod exec;
#[doc(hidden)]
pub mod gpu;
#[doc(hidden)]
pub mod graph;
#[doc(hidden)]
pub mod host;
#[doc(hidden)]
pub mod kernels;
#[doc(hidden)]
pub mod model;
#[doc(hidden)]
pub mod plan;
#[doc(hidden)]
pub mod precision;
pub mod preprocess;
#[doc(hidden)]
pub mod reference;
#[doc(hidden)]
pub mod select;
mod shape;
#[doc(hidden)]
pub mod tune;

pub use error::{Error, Result};
pub use exec::{BlockFusion, CompileOptions, CompiledModel, ModelBinding, RunProfile, Tuning};
pub use gpu::context::{AdapterOptions, GpuContext};
pub use graph::{Graph, GraphBuilder, LinearParams, NodeId};
pub use kernels::gemm::GemmVariant;
#[cfg(not(target_arch = "wasm32"))]
pub use model::npy::write_npy_atomically;
pub use model::npy::{NpyArray, read_npy};
pub use model::safetensors::export_safetensors;
pub use model::{load_model, parse_model, parse_model_bytes};
pub use precision::Precision;
pub use tune::TuningReport;

/// The README's Rust examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
