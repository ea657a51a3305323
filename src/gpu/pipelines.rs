//! Shader modules, bind group layouts and compute pipelines, each built once per device and
//! reused: building a pipeline costs milliseconds to seconds (the driver compiles the shader),
//! so nothing on a per-run path may build one.
//!
//! The cache knows a `wgpu::Device` and nothing of the context that owns it, so that
//! `gpu::context` can hold a cache without the two modules importing each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::gpu::scope;
use crate::precision::Precision;

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

/// Identifies one generated WGSL source: a shader and the storage precision it was generated
/// for. It keys the shader-module cache, as [`KernelKey`] keys the pipeline cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The shader's name, unique among resgraph's shaders.
    pub shader: &'static str,
    /// The storage precision the source was generated for.
    pub precision: Precision,
}

/// Identifies one compute pipeline: a generated source, its entry point and the values of its
/// WGSL `override` constants (booleans as 0 or 1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    /// The generated source.
    pub source: SourceKey,
    /// The entry point.
    pub entry_point: &'static str,
    /// Pipeline-overridable constants, sorted by name so that equal keys hash equally.
    pub constants: Vec<(&'static str, u32)>,
}

impl KernelKey {
    /// A key with `constants` sorted by name.
    pub fn new(
        source: SourceKey,
        entry_point: &'static str,
        mut constants: Vec<(&'static str, u32)>,
    ) -> Self {
        constants.sort_unstable();
        KernelKey {
            source,
            entry_point,
            constants,
        }
    }
}

/// What the cache needs to build a pipeline it does not have yet.
pub struct PipelineDescriptor<'a> {
    /// The pipeline's identity.
    pub key: &'a KernelKey,
    /// The WGSL of `key.source`, generated only when its module is not cached yet.
    pub source: &'a dyn Fn() -> String,
    /// The bindings of group 0, in binding-number order.
    pub bindings: &'a [BindingKind],
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

/// Caches shader modules by [`SourceKey`] and pipelines by [`KernelKey`].
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<SourceKey, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<KernelKey, Arc<CachedPipeline>>>,
}

impl PipelineCache {
    /// Returns the pipeline `descriptor.key` names, building it (and its shader module) on
    /// `device` on first use, inside error scopes.
    pub fn get_or_create(
        &self,
        device: &wgpu::Device,
        descriptor: &PipelineDescriptor<'_>,
    ) -> Result<Arc<CachedPipeline>> {
        // Holding the lock while building means two threads asking for the same new pipeline
        // build it once; builds of different pipelines are rare enough to serialise.
        let mut pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = pipelines.get(descriptor.key) {
            return Ok(Arc::clone(cached));
        }
        let module = self.module(device, descriptor)?;
        let name = descriptor.key.source.shader;
        let built = scope::capture(device, &format!("building the {name} pipeline"), || {
            build_pipeline(device, descriptor, &module)
        })?;
        let built = Arc::new(built);
        pipelines.insert(descriptor.key.clone(), Arc::clone(&built));
        Ok(built)
    }

    fn module(
        &self,
        device: &wgpu::Device,
        descriptor: &PipelineDescriptor<'_>,
    ) -> Result<wgpu::ShaderModule> {
        let mut modules = self
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let source_key = descriptor.key.source;
        if let Some(module) = modules.get(&source_key) {
            return Ok(module.clone());
        }
        let label = format!("{} ({})", source_key.shader, source_key.precision);
        let wgsl = (descriptor.source)();
        let module = scope::capture(device, &format!("compiling shader {label}"), || {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            })
        })?;
        modules.insert(source_key, module.clone());
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
    descriptor: &PipelineDescriptor<'_>,
    module: &wgpu::ShaderModule,
) -> CachedPipeline {
    let name = descriptor.key.source.shader;
    let entries: Vec<wgpu::BindGroupLayoutEntry> = descriptor
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
        label: Some(name),
        entries: &entries,
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(&bind_group_layout)],
        immediate_size: 0,
    });
    let constants: Vec<(&str, f64)> = descriptor
        .key
        .constants
        .iter()
        .map(|(name, value)| (*name, f64::from(*value)))
        .collect();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&layout),
        module,
        entry_point: Some(descriptor.key.entry_point),
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
