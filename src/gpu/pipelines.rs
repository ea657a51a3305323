//! Shader modules, bind group layouts and compute pipelines, each built once per device and
//! reused: building a pipeline costs milliseconds to seconds (the driver compiles the shader),
//! so nothing on a per-run path may build one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::gpu::context::GpuContext;

/// How a kernel binds one of its buffers, in binding order within group 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// A small uniform block of parameters.
    Uniform,
    /// A storage buffer the kernel only reads.
    StorageRead,
    /// A storage buffer the kernel writes.
    StorageReadWrite,
    /// A 2-D array texture of unfilterable floats (`rgba32float`), read with `textureLoad`.
    FloatTexture2dArray,
}

/// A WGSL shader and the shape of its one bind group.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// A name unique among resgraph's shaders; it keys the shader module cache.
    pub name: &'static str,
    /// The WGSL text (from `shaders/`, included at compile time).
    pub wgsl: &'static str,
    /// The compute entry point.
    pub entry_point: &'static str,
    /// The bindings of group 0, in binding-number order.
    pub bindings: &'static [BindingKind],
}

/// The line every shader declares its storage type with; [`specialize`] rewrites it.
pub const STORAGE_ALIAS_F32: &str = "alias Scalar = f32;";

/// `kernel` with its storage type set to `precision`: the shader itself for f32; for f16 a
/// variant named `{name}.f16` whose `Scalar` alias is `f16`, with `enable f16;` added. Variants
/// are generated once per process and kept, so that sources stay `&'static`.
pub fn specialize(kernel: &KernelSource, precision: crate::precision::Precision) -> KernelSource {
    use crate::precision::Precision;
    static VARIANTS: Mutex<Option<HashMap<&'static str, (&'static str, &'static str)>>> =
        Mutex::new(None);
    if precision == Precision::F32 {
        return *kernel;
    }
    let mut variants = VARIANTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (name, wgsl) = *variants
        .get_or_insert_with(HashMap::new)
        .entry(kernel.name)
        .or_insert_with(|| {
            let name: &'static str = Box::leak(format!("{}.f16", kernel.name).into_boxed_str());
            let wgsl: &'static str = Box::leak(specialize_source(kernel.wgsl).into_boxed_str());
            (name, wgsl)
        });
    KernelSource {
        name,
        wgsl,
        ..*kernel
    }
}

/// The f16 form of a shader's source: `enable f16;` first, and the `Scalar` alias set to f16.
///
/// A cooperative-matrix shader (one that enables `wgpu_cooperative_matrix`) also moves from 8×8
/// to 16×16 tiles: drivers offer f16 tensor-core tiles at 16×16 and f32 ones at 8×8, so its
/// `coop_mat8x8` types and its `const TILE` line change with the storage type.
pub fn specialize_source(wgsl: &str) -> String {
    let mut source = wgsl.replace(STORAGE_ALIAS_F32, "alias Scalar = f16;");
    if source.contains(COOPERATIVE_MATRIX_ENABLE) {
        source = source
            .replace("coop_mat8x8<", "coop_mat16x16<")
            .replace(COOPERATIVE_TILE_F32, "const TILE: u32 = 16u;");
    }
    format!("enable f16;\n{source}")
}

/// The directive that marks a cooperative-matrix shader.
pub const COOPERATIVE_MATRIX_ENABLE: &str = "enable wgpu_cooperative_matrix;";
/// A cooperative-matrix shader's tile side in its f32 form.
pub const COOPERATIVE_TILE_F32: &str = "const TILE: u32 = 8u;";

/// Identifies one compute pipeline: a shader, its entry point and the values of its WGSL
/// `override` constants (booleans as 0 or 1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    /// The shader's [`KernelSource::name`].
    pub shader: &'static str,
    /// The entry point.
    pub entry_point: &'static str,
    /// Pipeline-overridable constants, sorted by name so that equal keys hash equally.
    pub constants: Vec<(&'static str, u32)>,
}

/// A built compute pipeline and the layout of its bind group.
#[derive(Debug)]
pub struct CachedPipeline {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// The layout its group 0 bind groups must be created with.
    pub bind_group_layout: wgpu::BindGroupLayout,
}

impl CachedPipeline {
    /// A bind group of this pipeline's group 0 with `resources` in binding order.
    pub fn bind(
        &self,
        device: &wgpu::Device,
        label: &str,
        resources: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(binding, resource)| wgpu::BindGroupEntry {
                binding: binding as u32,
                resource: resource.clone(),
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &self.bind_group_layout,
            entries: &entries,
        })
    }
}

/// A kernel's small uniform parameter block, holding `bytes` and rewritable (`COPY_DST`) when a
/// run changes its row count. Call inside [`GpuContext::scoped`].
pub fn create_params_buffer(context: &GpuContext, label: &str, bytes: &[u8]) -> wgpu::Buffer {
    let buffer = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    context.queue().write_buffer(&buffer, 0, bytes);
    buffer
}

/// Caches shader modules by shader name and pipelines by [`KernelKey`].
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<KernelKey, Arc<CachedPipeline>>>,
}

impl PipelineCache {
    /// Returns the pipeline for `key`, building it (and its shader module) on first use.
    pub fn get_or_create(
        &self,
        context: &GpuContext,
        kernel: &KernelSource,
        key: &KernelKey,
    ) -> Result<Arc<CachedPipeline>> {
        // Holding the lock while building means two threads asking for the same new pipeline
        // build it once; builds of different pipelines are rare enough to serialise.
        let mut pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = pipelines.get(key) {
            return Ok(Arc::clone(cached));
        }
        let module = self.module(context, kernel)?;
        let built = context.scoped(&format!("building the {} pipeline", kernel.name), || {
            build_pipeline(context.device(), kernel, key, &module)
        })?;
        let built = Arc::new(built);
        pipelines.insert(key.clone(), Arc::clone(&built));
        Ok(built)
    }

    /// How many distinct pipelines have been built on this device.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines
            .lock()
            .map(|pipelines| pipelines.len())
            .unwrap_or(0)
    }

    fn module(&self, context: &GpuContext, kernel: &KernelSource) -> Result<wgpu::ShaderModule> {
        let mut modules = self
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(module) = modules.get(kernel.name) {
            return Ok(module.clone());
        }
        let module = context.scoped(&format!("compiling shader {}", kernel.name), || {
            context
                .device()
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name),
                    source: wgpu::ShaderSource::Wgsl(kernel.wgsl.into()),
                })
        })?;
        modules.insert(kernel.name, module.clone());
        Ok(module)
    }
}

fn binding_type(kind: BindingKind) -> wgpu::BindingType {
    let buffer = |ty| wgpu::BindingType::Buffer {
        ty,
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    match kind {
        BindingKind::Uniform => buffer(wgpu::BufferBindingType::Uniform),
        BindingKind::StorageRead => buffer(wgpu::BufferBindingType::Storage { read_only: true }),
        BindingKind::StorageReadWrite => {
            buffer(wgpu::BufferBindingType::Storage { read_only: false })
        }
        BindingKind::FloatTexture2dArray => wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2Array,
            multisampled: false,
        },
    }
}

fn build_pipeline(
    device: &wgpu::Device,
    kernel: &KernelSource,
    key: &KernelKey,
    module: &wgpu::ShaderModule,
) -> CachedPipeline {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings
        .iter()
        .enumerate()
        .map(|(binding, kind)| wgpu::BindGroupLayoutEntry {
            binding: binding as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: binding_type(*kind),
            count: None,
        })
        .collect();
    let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(kernel.name),
        entries: &entries,
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(kernel.name),
        bind_group_layouts: &[Some(&bind_group_layout)],
        immediate_size: 0,
    });
    let constants: Vec<(&str, f64)> = key
        .constants
        .iter()
        .map(|(name, value)| (*name, f64::from(*value)))
        .collect();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.name),
        layout: Some(&layout),
        module,
        entry_point: Some(key.entry_point),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            // Every kernel writes the workgroup memory it reads, so zero-filling it first would
            // only cost time.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    CachedPipeline {
        pipeline,
        bind_group_layout,
    }
}
