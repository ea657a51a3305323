//! The one launch path every kernel goes through.
//!
//! A kernel's host glue describes a dispatch with a `LaunchDescriptor`: its [`KernelSource`],
//! the storage precision, its `override` constants, the resources of bindings 1.. and a
//! `LaunchShape` (its parameter block and workgroup count as functions of the row count).
//! `PreparedKernel::new` does the rest the same way for every kernel: the precision check, the
//! pipeline (generated source and cache), the parameter buffer at binding 0, the bind group and
//! the workgroup-limit check. A prepared kernel is re-aimed at fewer rows (a smaller batch) with
//! [`PreparedKernel::set_rows`] and [`PreparedKernel::record_rows`] without rebuilding anything.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::{CachedPipeline, KernelKey, PipelineDescriptor};
use crate::kernels::source::{KernelSource, generate};
use crate::precision::Precision;

/// How one kernel's parameter block and workgroup grid follow from the rows a dispatch covers:
/// with its WGSL, its binding table and its constants, all a kernel has to say.
pub(crate) trait LaunchShape: std::fmt::Debug + Send + Sync {
    /// The bytes of the uniform parameter block (binding 0) for `rows` rows.
    fn params(&self, rows: u32) -> Vec<u8>;
    /// The workgroups of a dispatch over `rows` rows, along x, y and z.
    fn workgroups(&self, rows: u32) -> [u32; 3];
}

/// Everything [`PreparedKernel::new`] needs to prepare one dispatch.
pub(crate) struct LaunchDescriptor<'a> {
    /// Names the dispatch in labels and errors, e.g. `gemm`.
    pub label: &'a str,
    /// The kernel's WGSL and binding table.
    pub kernel: &'static KernelSource,
    /// The storage precision; the source is generated for it.
    pub precision: Precision,
    /// The kernel's `override` constants (any order).
    pub constants: Vec<(&'static str, u32)>,
    /// The resources of bindings 1.. in order; binding 0 is the parameter block.
    pub resources: &'a [wgpu::BindingResource<'a>],
    /// The rows the dispatch is prepared for: the most it can run.
    pub max_rows: usize,
    /// The kernel's parameter block and grid.
    pub shape: Box<dyn LaunchShape>,
}

/// One kernel dispatch with its pipeline, parameter buffer and bind group ready: recording it
/// allocates nothing.
#[derive(Debug)]
pub struct PreparedKernel {
    kernel_name: &'static str,
    pipeline: Arc<CachedPipeline>,
    bind_group: wgpu::BindGroup,
    params_buffer: wgpu::Buffer,
    /// Where in `params_buffer` the block is bound: 0 for its own buffer, a slot's offset after
    /// [`Self::use_params_slot`].
    params_offset: u64,
    /// The resources of bindings 1.., kept so that the parameter block can be moved into a
    /// slot of a buffer shared by many dispatches ([`Self::use_params_slot`]).
    resources: Vec<KeptResource>,
    max_rows: u32,
    shape: Box<dyn LaunchShape>,
}

/// A binding's resource, owned (the handles are reference-counted), to build a bind group again.
#[derive(Clone, Debug)]
enum KeptResource {
    Buffer {
        buffer: wgpu::Buffer,
        offset: u64,
        size: Option<std::num::NonZeroU64>,
    },
    TextureView(wgpu::TextureView),
}

impl KeptResource {
    /// The owned form of `resource`, for the kinds resgraph's kernels bind.
    fn keep(resource: &wgpu::BindingResource<'_>) -> Option<Self> {
        match resource {
            wgpu::BindingResource::Buffer(binding) => Some(KeptResource::Buffer {
                buffer: binding.buffer.clone(),
                offset: binding.offset,
                size: binding.size,
            }),
            wgpu::BindingResource::TextureView(view) => {
                Some(KeptResource::TextureView((*view).clone()))
            }
            _ => None,
        }
    }

    fn resource(&self) -> wgpu::BindingResource<'_> {
        match self {
            KeptResource::Buffer {
                buffer,
                offset,
                size,
            } => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset: *offset,
                size: *size,
            }),
            KeptResource::TextureView(view) => wgpu::BindingResource::TextureView(view),
        }
    }
}

impl PreparedKernel {
    /// Prepares the dispatch `descriptor` describes for `descriptor.max_rows` rows.
    pub(crate) fn new(context: &GpuContext, descriptor: LaunchDescriptor<'_>) -> Result<Self> {
        let LaunchDescriptor {
            label,
            kernel,
            precision,
            constants,
            resources,
            max_rows,
            shape,
        } = descriptor;
        precision.check_supported(context.features(), &context.adapter_info().name)?;
        if max_rows == 0 {
            return Err(Error::zero_sized(label, "rows"));
        }
        let max_rows = to_u32(kernel.name, &format!("{label} rows"), max_rows)?;
        let limit = context.limits().max_compute_workgroups_per_dimension;
        let grid = shape.workgroups(max_rows);
        if let Some((axis, &requested)) = ["x", "y", "z"]
            .iter()
            .zip(&grid)
            .find(|(_, groups)| **groups > limit)
        {
            return Err(Error::DispatchTooLarge {
                what: format!("{label} of {max_rows} rows (workgroups along {axis})"),
                requested: u64::from(requested),
                limit,
            });
        }
        // The binding table and the resources are written side by side in each kernel's glue;
        // a mismatch is a bug in that glue, which wgpu would report less clearly.
        debug_assert_eq!(
            resources.len() + 1,
            kernel.bindings.len(),
            "{}: resources for bindings 1.. and the binding table differ",
            kernel.name
        );
        let key = KernelKey::new(kernel.source_key(precision), kernel.entry_point, constants);
        let pipeline = context.pipelines().get_or_create(
            context.device(),
            &PipelineDescriptor {
                key: &key,
                source: &|| generate(kernel, precision),
                bindings: kernel.bindings,
            },
        )?;
        let (bind_group, params_buffer) =
            context.scoped(&format!("binding the {label} operands"), || {
                let params = shape.params(max_rows);
                let params_buffer = context.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{label} params")),
                    size: params.len() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                context.queue().write_buffer(&params_buffer, 0, &params);
                let mut bound = Vec::with_capacity(resources.len() + 1);
                bound.push(params_buffer.as_entire_binding());
                bound.extend(resources.iter().cloned());
                let bind_group = pipeline.bind(context.device(), label, &bound);
                (bind_group, params_buffer)
            })?;
        let resources = resources
            .iter()
            .map(KeptResource::keep)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::UnsupportedShape {
                kernel: kernel.name,
                what: format!("the {label} operands"),
                reason: "a binding is neither a buffer nor a texture view".to_string(),
            })?;
        Ok(PreparedKernel {
            kernel_name: kernel.name,
            pipeline,
            bind_group,
            params_buffer,
            params_offset: 0,
            resources,
            max_rows,
            shape,
        })
    }

    /// Binds the dispatch's parameter block to `buffer` at `offset` (a multiple of the device's
    /// `min_uniform_buffer_offset_alignment`) instead of its own buffer, so that one copy can
    /// give every step of a pass its parameters. Whoever calls this writes the block there.
    pub(crate) fn use_params_slot(
        &mut self,
        context: &GpuContext,
        buffer: &wgpu::Buffer,
        offset: u64,
    ) -> Result<()> {
        let size = std::num::NonZeroU64::new(self.params_bytes(1).len() as u64);
        let bind_group = context.scoped(
            &format!("binding the {} parameters", self.kernel_name),
            || {
                let mut bound = Vec::with_capacity(self.resources.len() + 1);
                bound.push(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset,
                    size,
                }));
                bound.extend(self.resources.iter().map(KeptResource::resource));
                self.pipeline
                    .bind(context.device(), self.kernel_name, &bound)
            },
        )?;
        self.bind_group = bind_group;
        self.params_buffer = buffer.clone();
        self.params_offset = offset;
        Ok(())
    }

    /// The shader the dispatch runs (e.g. `gemm_subgroup`, `gemv_texture`).
    pub fn kernel_name(&self) -> &'static str {
        self.kernel_name
    }

    /// The bytes of the dispatch's parameter block (binding 0) for `rows` rows.
    pub(crate) fn params_bytes(&self, rows: u32) -> Vec<u8> {
        self.shape.params(rows)
    }

    /// The row count the dispatch was prepared for (the most it can run).
    pub fn max_rows(&self) -> usize {
        self.max_rows as usize
    }

    /// Makes later submissions compute only the first `rows` rows (at most [`Self::max_rows`]).
    /// The write is queued, so it takes effect for command buffers submitted after this call.
    pub fn set_rows(&self, context: &GpuContext, rows: usize) -> Result<()> {
        if rows == 0 || rows > self.max_rows() {
            return Err(Error::shape_mismatch(
                format!("{} rows", self.kernel_name),
                format!("1..={}", self.max_rows),
                rows,
            ));
        }
        let params = self.shape.params(rows as u32);
        context.scoped(&format!("updating {} rows", self.kernel_name), || {
            context
                .queue()
                .write_buffer(&self.params_buffer, self.params_offset, &params);
        })
    }

    /// Records the dispatch for the first `rows` rows, which must match the last
    /// [`Self::set_rows`] (or the prepared count): only the workgroups those rows need are
    /// launched. `rows` is clamped to `1..=max_rows`.
    pub fn record_rows(&self, pass: &mut wgpu::ComputePass<'_>, rows: usize) {
        let rows = rows.clamp(1, self.max_rows()) as u32;
        let [x, y, z] = self.shape.workgroups(rows);
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }

    /// Records the dispatch for all prepared rows.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        self.record_rows(pass, self.max_rows());
    }

    /// Submits the dispatch for all prepared rows on the context's queue (without waiting).
    pub fn submit(&self, context: &GpuContext) -> Result<()> {
        context.submit_pass(self.kernel_name, |pass| self.record(pass))
    }
}

/// Checks what every kernel asks of the matrices it reads and writes: none of the `inputs` (each
/// named) is the output's buffer, and all are stored in `precision` (the weights' precision).
pub(crate) fn check_operands(
    what: &str,
    precision: Precision,
    inputs: &[(&'static str, Option<&DeviceMatrix>)],
    output: &DeviceMatrix,
) -> Result<()> {
    for &(operand, matrix) in inputs {
        if matrix.is_some_and(|matrix| matrix.buffer() == output.buffer()) {
            return Err(Error::AliasedOutput {
                what: what.to_string(),
                operand,
            });
        }
    }
    let named = inputs
        .iter()
        .filter_map(|&(operand, matrix)| matrix.map(|matrix| (operand, matrix)))
        .chain([("output", output)]);
    for (operand, matrix) in named {
        if matrix.precision() != precision {
            return Err(Error::PrecisionMismatch {
                what: what.to_string(),
                operand,
                expected: precision,
                actual: matrix.precision(),
            });
        }
    }
    Ok(())
}

/// `value` as a shader's u32 parameter, or [`Error::UnsupportedShape`] when the kernel's 32-bit
/// indices cannot reach it.
pub(crate) fn to_u32(kernel: &'static str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::UnsupportedShape {
        kernel,
        what: format!("{what} = {value}"),
        reason: format!("the kernel indexes with 32 bits (at most {})", u32::MAX),
    })
}

/// A parameter block's bytes.
pub(crate) fn param_bytes<T: bytemuck::Pod>(params: &T) -> Vec<u8> {
    bytemuck::bytes_of(params).to_vec()
}
