//! A neural field drawn every frame: a wgpu application that owns its instance, adapter, device
//! and queue, and records resgraph's inference as one more pass of its frame.
//!
//! Each frame is one submission of one command encoder that
//! 1. writes the frame's uniforms (size, time, each band's first row);
//! 2. runs the application's own compute pass that encodes every pixel's position and the time
//!    as Fourier features into the application's own storage buffer;
//! 3. records resgraph's inference of a coordinate network (a residual MLP compiled from a
//!    safetensors file this example writes) in place over that buffer and a colour buffer the
//!    application owns ([`resgraph::ModelBinding`]);
//! 4. draws a full-screen pass whose fragment shader reads the colour buffer directly.
//!
//! Nothing is read back or copied. A frame too large for one dispatch of the model (a device's
//! storage-binding limit) is cut into bands of rows, each with its own buffers and binding,
//! drawn with a scissor rectangle each.
//!
//! ```text
//! cargo run --release --example neural_field                      # a window, animated
//! cargo run --release --example neural_field -- --headless --frames 30 --size 256x256 --out frames
//! ```
//!
//! Headless, it renders off-screen and writes `frame_000.png`, … into `--out`, with the weights
//! (`neural_field.safetensors`) and `summary.json` (frame times, inference share, submissions per
//! frame). It prints p50/p99 frame time, and the inference's share of the frame's GPU time where
//! the device has timestamp queries. `tests/neural_field.rs` runs it on lavapipe and llvmpipe and
//! checks every pixel against the f64 reference.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use resgraph::graph::synthetic::{MlpShape, mlp};
use resgraph::{CompileOptions, CompiledModel, GpuContext, ModelBinding};

/// Fourier octaves per coordinate: sin and cos of 2^k·π·x and of 2^k·π·y, k = 0..OCTAVES.
const OCTAVES: usize = 4;
/// Features per pixel: x, y, the octaves, and sin/cos of the time.
const FEATURES: usize = 2 + 4 * OCTAVES + 2;
/// Radians of the time features per second: one cycle every four seconds.
const TIME_FREQUENCY: f64 = std::f64::consts::PI / 2.0;
/// The seed of the network's weights.
const SEED: u64 = 2026;
// The draw maps the network's output v to a colour as 1 / (1 + exp(-4·v)) (`CONTRAST` in the
// shader); tests/neural_field.rs computes the same from the f64 reference.

#[derive(Parser, Debug)]
#[command(about = "A neural field drawn every frame with resgraph inside a wgpu renderer")]
struct Args {
    /// Render off-screen and write PNGs instead of opening a window.
    #[arg(long)]
    headless: bool,
    /// Frames to render: headless, how many PNGs (30 if not given); with a window, close it
    /// after this many (never if not given).
    #[arg(long)]
    frames: Option<usize>,
    /// Image size, WIDTHxHEIGHT.
    #[arg(long, default_value = "256x256", value_parser = parse_size)]
    size: (u32, u32),
    /// Folder for the PNGs, the weights and summary.json (headless); created if missing.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Width of the residual MLP (64 to 128).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(64..=128))]
    width: u32,
    /// Residual blocks (4 to 8).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(4..=8))]
    depth: u32,
    /// Seconds between headless frames (a window uses the real clock).
    #[arg(long, default_value_t = 0.25)]
    dt: f64,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (width, height) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT"))?;
    let parse = |value: &str| {
        value
            .parse::<u32>()
            .ok()
            .filter(|value| (1..=8192).contains(value))
            .ok_or_else(|| format!("{value:?} is not a size from 1 to 8192"))
    };
    Ok((parse(width)?, parse(height)?))
}

/// The application's frame uniforms, one block per band.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FrameUniforms {
    width: u32,
    height: u32,
    first_row: u32,
    band_pixels: u32,
    time_sin: f32,
    time_cos: f32,
    padding: [u32; 2],
}

/// The application's own shaders: the feature encoding and the full-screen draw.
const APPLICATION_WGSL: &str = r#"
struct Frame {
    width: u32,
    height: u32,
    first_row: u32,
    band_pixels: u32,
    time_sin: f32,
    time_cos: f32,
}
const OCTAVES: u32 = 4u;
const FEATURES: u32 = 20u;
const PI: f32 = 3.14159265358979;
const CONTRAST: f32 = 4.0;

@group(0) @binding(0) var<uniform> frame: Frame;
@group(0) @binding(1) var<storage, read_write> features: array<f32>;

// Pixel (px, py) of the image: x from -1 (left) to 1, y from 1 (top) to -1, at pixel centres.
@compute @workgroup_size(64)
fn encode_features(@builtin(global_invocation_id) id: vec3<u32>) {
    let local = id.x;
    if (local >= frame.band_pixels) {
        return;
    }
    let pixel = frame.first_row * frame.width + local;
    let px = pixel % frame.width;
    let py = pixel / frame.width;
    let x = (f32(px) + 0.5) / f32(frame.width) * 2.0 - 1.0;
    let y = 1.0 - (f32(py) + 0.5) / f32(frame.height) * 2.0;
    let base = local * FEATURES;
    features[base] = x;
    features[base + 1u] = y;
    var frequency = PI;
    for (var k = 0u; k < OCTAVES; k = k + 1u) {
        features[base + 2u + 4u * k] = sin(frequency * x);
        features[base + 3u + 4u * k] = cos(frequency * x);
        features[base + 4u + 4u * k] = sin(frequency * y);
        features[base + 5u + 4u * k] = cos(frequency * y);
        frequency = frequency * 2.0;
    }
    features[base + 18u] = frame.time_sin;
    features[base + 19u] = frame.time_cos;
}

@group(0) @binding(1) var<storage, read> colours: array<f32>;

@vertex
fn full_screen(@builtin(vertex_index) index: u32) -> @builtin(position) vec4<f32> {
    // One triangle that covers the screen.
    let uv = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    return vec4<f32>(uv * 2.0 - 1.0, 0.0, 1.0);
}

@fragment
fn shade(@builtin(position) position: vec4<f32>) -> @location(0) vec4<f32> {
    let pixel = u32(position.y) * frame.width + u32(position.x);
    let local = min(pixel - frame.first_row * frame.width, frame.band_pixels - 1u);
    let rgb = vec3<f32>(colours[local * 3u], colours[local * 3u + 1u], colours[local * 3u + 2u]);
    // The network's output through a logistic: any value is a colour.
    return vec4<f32>(1.0 / (1.0 + exp(-CONTRAST * rgb)), 1.0);
}
"#;

/// The coordinate network: Fourier features in, a residual MLP of `width` × `depth`, RGB out.
fn network_shape(args: &Args) -> MlpShape {
    MlpShape {
        input_width: FEATURES,
        width: args.width as usize,
        hidden_width: args.width as usize,
        depth: args.depth as usize,
        output_width: 3,
        residual: true,
    }
}

/// Writes the network's weights as a safetensors file and loads it back the ordinary way.
fn network(args: &Args, folder: &Path) -> resgraph::Result<(resgraph::Graph, PathBuf)> {
    let graph = mlp(network_shape(args), 1.0, SEED)?;
    let path = folder.join("neural_field.safetensors");
    let bytes = resgraph::export_safetensors(&graph)?;
    std::fs::write(&path, bytes).map_err(|source| resgraph::Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok((resgraph::load_model(&path)?, path))
}

/// One band of rows: its buffers, its binding of the model, its bind groups.
struct Band {
    first_row: u32,
    rows: u32,
    uniforms: wgpu::Buffer,
    binding: ModelBinding,
    feature_group: wgpu::BindGroup,
    draw_group: wgpu::BindGroup,
}

/// Everything a frame records, created once.
struct Renderer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    size: (u32, u32),
    feature_pipeline: wgpu::ComputePipeline,
    draw_pipeline: wgpu::RenderPipeline,
    bands: Vec<Band>,
    timestamps: Option<Timestamps>,
    /// Submissions made through [`Renderer::submit`], the only way this renderer submits.
    submissions: std::cell::Cell<usize>,
}

/// Four timestamps per frame: the feature pass's beginning and end, the draw's beginning and
/// end. The inference lies between the feature pass's end and the draw's beginning.
struct Timestamps {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

/// What one frame took.
#[derive(Clone, Copy, Debug, Default)]
struct FrameTime {
    wall: Duration,
    gpu: Option<Duration>,
    inference: Option<Duration>,
}

impl Renderer {
    fn new(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        graph: &resgraph::Graph,
        size: (u32, u32),
        target_format: wgpu::TextureFormat,
    ) -> resgraph::Result<Self> {
        let (width, height) = size;
        // The largest band whose widest activation fits one storage binding.
        let widest = graph.input_width().max(128) as u64 * 4;
        let limits = device.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let rows_per_band =
            ((limit / widest) / u64::from(width)).clamp(1, u64::from(height)) as u32;
        let band_pixels = (rows_per_band * width) as usize;
        let context = Arc::new(GpuContext::from_adapter(
            adapter,
            device.clone(),
            queue.clone(),
        ));
        let model = Arc::new(CompiledModel::compile(
            context,
            graph,
            &CompileOptions::new(band_pixels),
        )?);

        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("neural field application"),
            source: wgpu::ShaderSource::Wgsl(APPLICATION_WGSL.into()),
        });
        let feature_pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("encode features"),
            layout: None,
            module: &module,
            entry_point: Some("encode_features"),
            compilation_options: Default::default(),
            cache: None,
        });
        let draw_pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("draw the field"),
            layout: None,
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("full_screen"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("shade"),
                compilation_options: Default::default(),
                targets: &[Some(target_format.into())],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });

        let mut bands = Vec::new();
        let mut first_row = 0;
        while first_row < height {
            let rows = rows_per_band.min(height - first_row);
            let pixels = (rows_per_band * width) as u64;
            let storage = |label: &str, values: u64| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: values * 4,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            };
            let features = storage("pixel features", pixels * FEATURES as u64);
            let colours = storage("pixel colours", pixels * 3);
            let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("frame uniforms"),
                size: std::mem::size_of::<FrameUniforms>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let binding = model.bind(features.slice(..), colours.slice(..))?;
            let group = |layout: &wgpu::BindGroupLayout, data: &wgpu::Buffer| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("neural field band"),
                    layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: uniforms.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: data.as_entire_binding(),
                        },
                    ],
                })
            };
            let feature_group = group(&feature_pipeline.get_bind_group_layout(0), &features);
            let draw_group = group(&draw_pipeline.get_bind_group_layout(0), &colours);
            bands.push(Band {
                first_row,
                rows,
                uniforms,
                binding,
                feature_group,
                draw_group,
            });
            first_row += rows;
        }
        let timestamps = device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then(|| Timestamps::new(&device, &queue));
        Ok(Renderer {
            device,
            queue,
            size,
            feature_pipeline,
            draw_pipeline,
            bands,
            timestamps,
            submissions: std::cell::Cell::new(0),
        })
    }

    /// Submits `commands`, counting the submission.
    fn submit(&self, commands: wgpu::CommandBuffer) {
        self.submissions.set(self.submissions.get() + 1);
        self.queue.submit([commands]);
    }

    /// Records and submits one frame at `time` seconds into `target`. Returns how many
    /// submissions it made (counted by [`Self::submit`]; one: a single encoder).
    fn frame(&self, target: &wgpu::TextureView, time: f64) -> resgraph::Result<usize> {
        let submitted_before = self.submissions.get();
        let (width, height) = self.size;
        // 1. The frame's uniforms.
        let angle = time * TIME_FREQUENCY;
        for band in &self.bands {
            let uniforms = FrameUniforms {
                width,
                height,
                first_row: band.first_row,
                band_pixels: band.rows * width,
                time_sin: angle.sin() as f32,
                time_cos: angle.cos() as f32,
                padding: [0; 2],
            };
            self.queue
                .write_buffer(&band.uniforms, 0, bytemuck::bytes_of(&uniforms));
        }
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("neural field frame"),
            });
        // 2. The application's feature pass.
        {
            let timestamp_writes =
                self.timestamps
                    .as_ref()
                    .map(|stamps| wgpu::ComputePassTimestampWrites {
                        query_set: &stamps.queries,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("encode features"),
                timestamp_writes,
            });
            pass.set_pipeline(&self.feature_pipeline);
            for band in &self.bands {
                pass.set_bind_group(0, &band.feature_group, &[]);
                pass.dispatch_workgroups((band.rows * width).div_ceil(64), 1, 1);
            }
        }
        // 3. resgraph's inference, in place over the application's buffers.
        for band in &self.bands {
            band.binding
                .encode(&mut encoder, (band.rows * width) as usize)?;
        }
        // 4. The draw, reading the colour buffers directly.
        {
            let timestamp_writes =
                self.timestamps
                    .as_ref()
                    .map(|stamps| wgpu::RenderPassTimestampWrites {
                        query_set: &stamps.queries,
                        beginning_of_pass_write_index: Some(2),
                        end_of_pass_write_index: Some(3),
                    });
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("draw the field"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: target,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                depth_stencil_attachment: None,
                timestamp_writes,
                occlusion_query_set: None,
                multiview_mask: None,
            });
            pass.set_pipeline(&self.draw_pipeline);
            for band in &self.bands {
                pass.set_bind_group(0, &band.draw_group, &[]);
                pass.set_scissor_rect(0, band.first_row, width, band.rows);
                pass.draw(0..3, 0..1);
            }
        }
        if let Some(stamps) = &self.timestamps {
            encoder.resolve_query_set(&stamps.queries, 0..4, &stamps.resolve, 0);
            encoder.copy_buffer_to_buffer(&stamps.resolve, 0, &stamps.readback, 0, 32);
        }
        self.submit(encoder.finish());
        Ok(self.submissions.get() - submitted_before)
    }

    /// Waits for the GPU and reads the last frame's timestamps, if the device has them.
    fn finish_frame(&self) -> (Option<Duration>, Option<Duration>) {
        let Some(stamps) = &self.timestamps else {
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
            return (None, None);
        };
        stamps
            .readback
            .slice(..)
            .map_async(wgpu::MapMode::Read, |_| {});
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        let ticks: Vec<u64> = match stamps.readback.slice(..).get_mapped_range() {
            Ok(view) => bytemuck::cast_slice(&view).to_vec(),
            Err(_) => return (None, None),
        };
        stamps.readback.unmap();
        let span = |from: u64, to: u64| {
            (to > from)
                .then(|| Duration::from_nanos(((to - from) as f64 * stamps.period_ns) as u64))
        };
        (span(ticks[0], ticks[3]), span(ticks[1], ticks[2]))
    }
}

impl Timestamps {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        Timestamps {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("frame timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 4,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: 32,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp readback"),
                size: 32,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            period_ns: f64::from(queue.get_timestamp_period()),
        }
    }
}

/// The application's own instance and adapter (`WGPU_BACKEND` and `RESGRAPH_ADAPTER` choose, as
/// for the resgraph CLI), and a device with the features resgraph's fast paths use.
fn open_device(
    compatible_surface: Option<&wgpu::Surface<'_>>,
    instance: &wgpu::Instance,
) -> Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue), Box<dyn std::error::Error>> {
    let options = resgraph::AdapterOptions::from_env()?;
    let adapters = resgraph::gpu::context::enumerate_adapters(instance, options.backends);
    let usable: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|adapter| {
            compatible_surface.is_none_or(|surface| adapter.is_surface_supported(surface))
        })
        .collect();
    let identities: Vec<resgraph::gpu::context::AdapterIdentity> = usable
        .iter()
        .map(|adapter| resgraph::gpu::context::AdapterIdentity::from(&adapter.get_info()))
        .collect();
    let adapter = match resgraph::gpu::context::choose_adapter(&identities, &options) {
        Ok(index) => usable[index].clone(),
        // wgpu's GL backend ties an adapter to the surface it was requested for, so an
        // enumerated GL adapter may not present to a window: ask for one that does.
        Err(error) => match compatible_surface {
            Some(surface) => {
                pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                    compatible_surface: Some(surface),
                    ..Default::default()
                }))
                .map_err(|_| error)?
            }
            None => return Err(error.into()),
        },
    };
    let wanted = wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("neural field device"),
        required_features: adapter.features() & wanted,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    Ok((adapter, device, queue))
}

/// The summary `--headless` writes beside the frames.
#[derive(serde::Serialize)]
struct Summary {
    adapter: String,
    backend: String,
    size: [u32; 2],
    width: u32,
    depth: u32,
    frames: usize,
    dt: f64,
    bands: usize,
    submissions_per_frame: Vec<usize>,
    frame_ms_p50: f64,
    frame_ms_p99: f64,
    gpu_frame_ms_p50: Option<f64>,
    inference_ms_p50: Option<f64>,
    inference_share_p50: Option<f64>,
}

fn percentile(values: &[f64], fraction: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Renders `args.frames` frames off-screen and writes them as PNGs with the summary.
fn headless(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("neural-field-frames"));
    std::fs::create_dir_all(&out)?;
    let (graph, _) = network(args, &out)?;
    let options = resgraph::AdapterOptions::from_env()?;
    let instance = resgraph::gpu::context::create_instance(options.backends);
    let (adapter, device, queue) = open_device(None, &instance)?;
    let (width, height) = args.size;
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let renderer = Renderer::new(
        &adapter,
        device.clone(),
        queue.clone(),
        &graph,
        args.size,
        format,
    )?;
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("off-screen frame"),
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let view = target.create_view(&Default::default());
    let row_bytes = (width * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
    let pixels = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("frame readback (for the PNG only)"),
        size: u64::from(row_bytes) * u64::from(height),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut times = Vec::new();
    let mut submissions = Vec::new();
    for index in 0..args.frames.unwrap_or(30) {
        let started = Instant::now();
        submissions.push(renderer.frame(&view, index as f64 * args.dt)?);
        let (gpu, inference) = renderer.finish_frame();
        times.push(FrameTime {
            wall: started.elapsed(),
            gpu,
            inference,
        });
        // Saving the frame is not part of it: a separate submission, after the frame is timed.
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_texture_to_buffer(
            target.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &pixels,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row_bytes),
                    rows_per_image: Some(height),
                },
            },
            wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
        );
        queue.submit([encoder.finish()]);
        pixels.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        device.poll(wgpu::PollType::wait_indefinitely())?;
        let rgba: Vec<u8> = {
            let view = pixels.slice(..).get_mapped_range()?;
            view.chunks(row_bytes as usize)
                .flat_map(|row| row[..(width * 4) as usize].to_vec())
                .collect()
        };
        pixels.unmap();
        write_png(
            &out.join(format!("frame_{index:03}.png")),
            (width, height),
            &rgba,
        )?;
    }
    let info = adapter.get_info();
    let summary = summarise(args, &info, renderer.bands.len(), &times, submissions);
    println!(
        "{} ({:?}), {}x{}, width {} depth {}, {} band(s): frame p50 {:.3} ms, p99 {:.3} ms{}",
        info.name,
        info.backend,
        width,
        height,
        args.width,
        args.depth,
        summary.bands,
        summary.frame_ms_p50,
        summary.frame_ms_p99,
        match (summary.inference_ms_p50, summary.inference_share_p50) {
            (Some(inference), Some(share)) => format!(
                "; inference p50 {inference:.3} ms ({:.0}% of the frame's GPU time)",
                share * 100.0
            ),
            _ => "; no timestamp queries on this device".to_string(),
        }
    );
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(())
}

fn summarise(
    args: &Args,
    info: &wgpu::AdapterInfo,
    bands: usize,
    times: &[FrameTime],
    submissions_per_frame: Vec<usize>,
) -> Summary {
    let wall: Vec<f64> = times.iter().map(|time| millis(time.wall)).collect();
    let gpu: Option<Vec<f64>> = times.iter().map(|time| time.gpu.map(millis)).collect();
    let inference: Option<Vec<f64>> = times
        .iter()
        .map(|time| time.inference.map(millis))
        .collect();
    let share: Option<Vec<f64>> = times
        .iter()
        .map(|time| Some(time.inference?.as_secs_f64() / time.gpu?.as_secs_f64()))
        .collect();
    Summary {
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        size: [args.size.0, args.size.1],
        width: args.width,
        depth: args.depth,
        frames: times.len(),
        dt: args.dt,
        bands,
        submissions_per_frame,
        frame_ms_p50: percentile(&wall, 0.5),
        frame_ms_p99: percentile(&wall, 0.99),
        gpu_frame_ms_p50: gpu.map(|gpu| percentile(&gpu, 0.5)),
        inference_ms_p50: inference.map(|inference| percentile(&inference, 0.5)),
        inference_share_p50: share.map(|share| percentile(&share, 0.5)),
    }
}

fn write_png(
    path: &Path,
    (width, height): (u32, u32),
    rgba: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgba)?;
    writer.finish()?;
    Ok(())
}

/// The windowed application: winit's event loop, a surface, a frame per redraw.
mod window {
    use super::*;
    use winit::application::ApplicationHandler;
    use winit::event::WindowEvent;
    use winit::event_loop::{ActiveEventLoop, EventLoop};
    use winit::window::{Window, WindowId};

    struct Running {
        window: Arc<Window>,
        surface: wgpu::Surface<'static>,
        config: wgpu::SurfaceConfiguration,
        renderer: Renderer,
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    }

    struct App {
        args: Args,
        graph: resgraph::Graph,
        instance: wgpu::Instance,
        running: Option<Running>,
        started: Instant,
        frame_times: Vec<f64>,
        last_report: Instant,
        /// Frames drawn, and each one's submissions.
        drawn: usize,
        submissions: usize,
        all_frame_times: Vec<f64>,
        error: Option<Box<dyn std::error::Error>>,
    }

    impl App {
        fn start(
            &mut self,
            event_loop: &ActiveEventLoop,
        ) -> Result<(), Box<dyn std::error::Error>> {
            let attributes = Window::default_attributes()
                .with_title("resgraph neural field")
                .with_inner_size(winit::dpi::PhysicalSize::new(
                    self.args.size.0,
                    self.args.size.1,
                ));
            let window = Arc::new(event_loop.create_window(attributes)?);
            let surface = self.instance.create_surface(Arc::clone(&window))?;
            let (adapter, device, queue) = open_device(Some(&surface), &self.instance)?;
            let size = window.inner_size();
            let config = surface
                .get_default_config(&adapter, size.width.max(1), size.height.max(1))
                .ok_or("the surface does not work with this adapter")?;
            surface.configure(&device, &config);
            let renderer = Renderer::new(
                &adapter,
                device.clone(),
                queue.clone(),
                &self.graph,
                (config.width, config.height),
                config.format,
            )?;
            self.running = Some(Running {
                window,
                surface,
                config,
                renderer,
                adapter,
                device,
                queue,
            });
            Ok(())
        }

        fn resize(&mut self, width: u32, height: u32) -> Result<(), Box<dyn std::error::Error>> {
            let Some(running) = self.running.as_mut() else {
                return Ok(());
            };
            if width == 0 || height == 0 {
                return Ok(());
            }
            running.config.width = width;
            running.config.height = height;
            running.surface.configure(&running.device, &running.config);
            running.renderer = Renderer::new(
                &running.adapter,
                running.device.clone(),
                running.queue.clone(),
                &self.graph,
                (width, height),
                running.config.format,
            )?;
            Ok(())
        }

        fn redraw(
            &mut self,
            event_loop: &ActiveEventLoop,
        ) -> Result<(), Box<dyn std::error::Error>> {
            let Some(running) = self.running.as_ref() else {
                return Ok(());
            };
            let frame = match running.surface.get_current_texture() {
                wgpu::CurrentSurfaceTexture::Success(frame)
                | wgpu::CurrentSurfaceTexture::Suboptimal(frame) => frame,
                _ => {
                    running.surface.configure(&running.device, &running.config);
                    running.window.request_redraw();
                    return Ok(());
                }
            };
            let view = frame.texture.create_view(&Default::default());
            let started = Instant::now();
            self.submissions += running
                .renderer
                .frame(&view, self.started.elapsed().as_secs_f64())?;
            running.window.pre_present_notify();
            running.queue.present(frame);
            let (gpu, inference) = running.renderer.finish_frame();
            self.frame_times.push(millis(started.elapsed()));
            self.all_frame_times.push(millis(started.elapsed()));
            self.drawn += 1;
            if self.args.frames.is_some_and(|frames| self.drawn >= frames) {
                let info = running.adapter.get_info();
                println!(
                    "window on {} ({:?}): {} frames drawn in {} submissions, frame p50 {:.2} ms, \
                     p99 {:.2} ms",
                    info.name,
                    info.backend,
                    self.drawn,
                    self.submissions,
                    percentile(&self.all_frame_times, 0.5),
                    percentile(&self.all_frame_times, 0.99)
                );
                event_loop.exit();
                return Ok(());
            }
            if self.last_report.elapsed() >= Duration::from_secs(2) {
                let share = match (gpu, inference) {
                    (Some(gpu), Some(inference)) => format!(
                        ", inference {:.0}% of the GPU time",
                        inference.as_secs_f64() / gpu.as_secs_f64() * 100.0
                    ),
                    _ => String::new(),
                };
                println!(
                    "frame p50 {:.2} ms, p99 {:.2} ms over {} frames{share}",
                    percentile(&self.frame_times, 0.5),
                    percentile(&self.frame_times, 0.99),
                    self.frame_times.len()
                );
                self.frame_times.clear();
                self.last_report = Instant::now();
            }
            running.window.request_redraw();
            Ok(())
        }

        fn fail(&mut self, event_loop: &ActiveEventLoop, error: Box<dyn std::error::Error>) {
            self.error = Some(error);
            event_loop.exit();
        }
    }

    impl ApplicationHandler for App {
        fn resumed(&mut self, event_loop: &ActiveEventLoop) {
            if self.running.is_none()
                && let Err(error) = self.start(event_loop)
            {
                self.fail(event_loop, error);
            }
        }

        fn window_event(&mut self, event_loop: &ActiveEventLoop, _: WindowId, event: WindowEvent) {
            let result = match event {
                WindowEvent::CloseRequested => {
                    event_loop.exit();
                    Ok(())
                }
                WindowEvent::Resized(size) => self.resize(size.width, size.height),
                WindowEvent::RedrawRequested => self.redraw(event_loop),
                _ => Ok(()),
            };
            if let Err(error) = result {
                self.fail(event_loop, error);
            }
        }
    }

    /// Opens a window and animates the field until it is closed.
    pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
        let folder = tempfile::tempdir()?;
        let (graph, _) = network(&args, folder.path())?;
        let options = resgraph::AdapterOptions::from_env()?;
        let event_loop = EventLoop::new()?;
        // The application's own instance, connected to the window system's display: wgpu's GL
        // backend presents only through an instance that knows it.
        let mut descriptor = wgpu::InstanceDescriptor::new_with_display_handle_from_env(Box::new(
            event_loop.owned_display_handle(),
        ));
        descriptor.backends = options.backends;
        let mut app = App {
            args,
            graph,
            instance: wgpu::Instance::new(descriptor),
            running: None,
            started: Instant::now(),
            frame_times: Vec::new(),
            last_report: Instant::now(),
            drawn: 0,
            submissions: 0,
            all_frame_times: Vec::new(),
            error: None,
        };
        event_loop.run_app(&mut app)?;
        match app.error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn main() {
    let args = Args::parse();
    let result = if args.headless {
        headless(&args)
    } else {
        window::run(args)
    };
    if let Err(error) = result {
        eprintln!("neural_field: error: {error}");
        std::process::exit(1);
    }
}
