//! Embedding: a host application creates its own device and queue, hands them to resgraph, and
//! records resgraph's inference into its own command encoder between two of its own compute
//! passes; the result never leaves the GPU until the host reads it.

mod common;

use std::sync::Arc;

use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::{AdapterIdentity, AdapterOptions, GpuContext, choose_adapter};
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::reference::forward_f64;

/// The host's own shader: `data[i] = data[i] * scale + shift`.
const HOST_SHADER: &str = r#"
struct Affine { scale: f32, shift: f32, len: u32, unused: u32 }
@group(0) @binding(0) var<uniform> affine: Affine;
@group(0) @binding(1) var<storage, read_write> data: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < affine.len) {
        data[id.x] = data[id.x] * affine.scale + affine.shift;
    }
}
"#;

fn host_device() -> (wgpu::Device, wgpu::Queue) {
    let options = AdapterOptions::from_env().expect("options");
    let instance = resgraph::gpu::context::create_instance(options.backends);
    let adapters = resgraph::gpu::context::enumerate_adapters(&instance, options.backends);
    let identities: Vec<AdapterIdentity> = adapters
        .iter()
        .map(|adapter| AdapterIdentity::from(&adapter.get_info()))
        .collect();
    let index = choose_adapter(&identities, &options).expect("the host needs an adapter");
    let adapter = &adapters[index];
    // The host asks for the adapter's limits but no optional feature: resgraph must cope.
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host application device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("host device")
}

#[test]
fn a_host_records_the_inference_into_its_own_encoder() {
    let (device, queue) = host_device();
    let (width, batch) = (24, 6);
    let len = (width * batch) as u32;
    let storage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let make_buffer = |label: &str, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: u64::from(len) * 4,
            usage,
            mapped_at_creation: false,
        })
    };
    let host_input = make_buffer("host input", storage);
    let host_output = make_buffer("host output", storage);
    let host_readback = make_buffer(
        "host readback",
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    let input = random_input(width * batch, 4);
    queue.write_buffer(&host_input, 0, bytemuck::cast_slice(&input));

    // The host's own pipeline, run before (x * 2 - 0.5) and after (y * 1 + 3) the inference.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("host affine"),
        source: wgpu::ShaderSource::Wgsl(HOST_SHADER.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("host affine"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let affine = |scale: f32, shift: f32, target: &wgpu::Buffer| {
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("affine"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&scale.to_le_bytes());
        bytes.extend_from_slice(&shift.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        queue.write_buffer(&uniform, 0, &bytes);
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("affine"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: target.as_entire_binding(),
                },
            ],
        })
    };
    let before = affine(2.0, -0.5, &host_input);
    let after = affine(1.0, 3.0, &host_output);

    let context = Arc::new(GpuContext::from_device(device.clone(), queue.clone()));
    let graph = mlp(MlpShape::square(width, 3), 1.0, 12).expect("graph");
    let model =
        CompiledModel::compile(context, &graph, &CompileOptions::new(batch)).expect("compile");

    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("host frame"),
    });
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &before, &[]);
        pass.dispatch_workgroups(len.div_ceil(64), 1, 1);
    }
    model
        .encode(&mut encoder, &host_input, &host_output, batch)
        .expect("encode");
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &after, &[]);
        pass.dispatch_workgroups(len.div_ceil(64), 1, 1);
    }
    encoder.copy_buffer_to_buffer(&host_output, 0, &host_readback, 0, u64::from(len) * 4);
    queue.submit([encoder.finish()]);

    host_readback
        .slice(..)
        .map_async(wgpu::MapMode::Read, |result| {
            result.expect("map");
        });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let output: Vec<f32> =
        bytemuck::cast_slice(&host_readback.slice(..).get_mapped_range().expect("view")).to_vec();

    let transformed: Vec<f32> = input.iter().map(|v| v * 2.0 - 0.5).collect();
    let expected: Vec<f64> = forward_f64(&graph, &transformed, batch)
        .iter()
        .map(|v| v + 3.0)
        .collect();
    common::assert_close(&output, &expected, 1e-5, "embedded inference");
}

#[test]
fn encode_checks_the_host_buffers() {
    let (device, queue) = host_device();
    let context = Arc::new(GpuContext::from_device(device.clone(), queue));
    let graph = mlp(MlpShape::square(8, 1), 1.0, 1).expect("graph");
    let model = CompiledModel::compile(context, &graph, &CompileOptions::new(2)).expect("compile");
    let small = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("too small"),
        size: 16,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    let error = model.encode(&mut encoder, &small, &small, 2).unwrap_err();
    assert!(
        matches!(error, resgraph::Error::BufferUsage { .. }),
        "{error}"
    );
    let error = model.encode(&mut encoder, &small, &small, 3).unwrap_err();
    assert!(matches!(error, resgraph::Error::BadInput { .. }), "{error}");
}
