//! The encode API a renderer lives with: a model bound to the host's own buffers and recorded in
//! place, encodes of different batch sizes in one submission, a `run` on another thread while a
//! host's encode is pending, a context built from the host's adapter, and a `run_async` that is
//! woken by the readback rather than spinning. Every output is checked against the f64
//! reference, on every test backend.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use resgraph::exec::{CompileOptions, CompiledModel};
use resgraph::gpu::context::GpuContext;
use resgraph::graph::Graph;
use resgraph::graph::synthetic::{MlpShape, mlp, random_input};
use resgraph::reference::forward_f64;

const F32_TOLERANCE: f64 = 1e-5;

/// A residual MLP whose input and output widths differ (so that a mixed-up buffer shows).
fn model_graph() -> Graph {
    let shape = MlpShape {
        input_width: 7,
        width: 24,
        hidden_width: 40,
        depth: 2,
        output_width: 5,
        residual: true,
    };
    mlp(shape, 1.0, 31).expect("graph")
}

fn compile(context: &GpuContext, graph: &Graph, max_batch: usize) -> Arc<CompiledModel> {
    Arc::new(
        CompiledModel::compile(
            common::shared(context),
            graph,
            &CompileOptions::new(max_batch),
        )
        .expect("compile"),
    )
}

fn host_buffer(context: &GpuContext, label: &str, values: usize) -> wgpu::Buffer {
    context.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (values * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Reads the first `values` f32 of `buffer` back (waiting for the GPU).
fn read_back(context: &GpuContext, buffer: &wgpu::Buffer, values: usize) -> Vec<f32> {
    let bytes = resgraph::gpu::buffers::read_bytes(context, buffer, (values * 4) as u64)
        .expect("read back");
    bytemuck::cast_slice(&bytes).to_vec()
}

/// Fills a host buffer with NaN, so that rows a kernel never writes show up.
fn poison(context: &GpuContext, buffer: &wgpu::Buffer) {
    let nan = vec![f32::NAN; (buffer.size() / 4) as usize];
    context
        .queue()
        .write_buffer(buffer, 0, bytemuck::cast_slice(&nan));
}

#[test]
fn two_bindings_of_different_batch_sizes_share_one_submission_in_place() {
    let graph = model_graph();
    for (backend, context) in common::contexts() {
        let model = compile(context, &graph, 40);
        // The larger batch first: were the batch size a queue write, the second would apply to
        // both passes, and the first would compute only 5 of its 33 rows.
        let batches = [33, 5];
        let mut bound = Vec::new();
        for (index, &batch) in batches.iter().enumerate() {
            let input_values = random_input(batch * graph.input_width(), 40 + index as u64);
            let input = host_buffer(context, "host input", 40 * graph.input_width());
            let output = host_buffer(context, "host output", 40 * graph.output_width());
            context
                .queue()
                .write_buffer(&input, 0, bytemuck::cast_slice(&input_values));
            poison(context, &output);
            let binding = model.bind(input.slice(..), output.slice(..)).expect("bind");
            bound.push((batch, input_values, output, binding));
        }
        // Both recorded into one encoder, one submission: each pass must see its own batch.
        let mut encoder = context.device().create_command_encoder(&Default::default());
        for (batch, _, _, binding) in &bound {
            binding.encode(&mut encoder, *batch).expect("encode");
        }
        context.queue().submit([encoder.finish()]);
        for (batch, input, output, _) in &bound {
            let values = read_back(context, output, 40 * graph.output_width());
            let rows = batch * graph.output_width();
            let expected = forward_f64(&graph, input, *batch);
            common::assert_close(
                &values[..rows],
                &expected,
                F32_TOLERANCE,
                &format!("{backend}: bound batch {batch}"),
            );
            // Nothing past the batch was written: the pass ran for exactly `batch` rows.
            assert!(
                values[rows..].iter().all(|value| value.is_nan()),
                "{backend}: rows past batch {batch} were written"
            );
        }
    }
}

#[test]
fn two_copying_encodes_of_different_batch_sizes_share_one_submission() {
    let graph = model_graph();
    for (backend, context) in common::contexts() {
        let model = compile(context, &graph, 40);
        let mut encoder = context.device().create_command_encoder(&Default::default());
        let mut recorded = Vec::new();
        for (index, batch) in [17usize, 2].into_iter().enumerate() {
            let values = random_input(batch * graph.input_width(), 60 + index as u64);
            let input = host_buffer(context, "host input", values.len());
            let output = host_buffer(context, "host output", batch * graph.output_width());
            context
                .queue()
                .write_buffer(&input, 0, bytemuck::cast_slice(&values));
            model
                .encode(&mut encoder, &input, &output, batch)
                .expect("encode");
            recorded.push((batch, values, output));
        }
        context.queue().submit([encoder.finish()]);
        for (batch, input, output) in recorded {
            let values = read_back(context, &output, batch * graph.output_width());
            common::assert_close(
                &values,
                &forward_f64(&graph, &input, batch),
                F32_TOLERANCE,
                &format!("{backend}: copying encode of batch {batch}"),
            );
        }
    }
}

#[test]
fn bindings_to_ranges_of_shared_buffers_read_and_write_only_their_ranges() {
    // A renderer sub-allocates: two bindings into one input buffer and one output buffer, each
    // at an aligned offset, with poisoned gaps around them that must stay untouched.
    let graph = model_graph();
    for (backend, context) in common::contexts() {
        let model = compile(context, &graph, 20);
        let alignment = context.limits().min_storage_buffer_offset_alignment as usize / 4;
        let input_range = (20 * graph.input_width()).next_multiple_of(alignment);
        let output_range = (20 * graph.output_width()).next_multiple_of(alignment);
        // Range i starts at (2i + 1) aligned units: a gap before each.
        let input = host_buffer(context, "shared input", 4 * input_range);
        let output = host_buffer(context, "shared output", 4 * output_range);
        poison(context, &output);
        let batches = [20, 9];
        let mut encoder = context.device().create_command_encoder(&Default::default());
        let mut inputs = Vec::new();
        for (index, &batch) in batches.iter().enumerate() {
            let values = random_input(batch * graph.input_width(), 50 + index as u64);
            let input_offset = ((2 * index + 1) * input_range * 4) as u64;
            let output_offset = ((2 * index + 1) * output_range * 4) as u64;
            context
                .queue()
                .write_buffer(&input, input_offset, bytemuck::cast_slice(&values));
            let binding = model
                .bind(
                    input.slice(input_offset..input_offset + (input_range * 4) as u64),
                    output.slice(output_offset..output_offset + (output_range * 4) as u64),
                )
                .expect("bind a range");
            binding.encode(&mut encoder, batch).expect("encode");
            inputs.push(values);
        }
        context.queue().submit([encoder.finish()]);
        let values = read_back(context, &output, 4 * output_range);
        for (index, &batch) in batches.iter().enumerate() {
            let start = (2 * index + 1) * output_range;
            let rows = batch * graph.output_width();
            common::assert_close(
                &values[start..start + rows],
                &forward_f64(&graph, &inputs[index], batch),
                F32_TOLERANCE,
                &format!("{backend}: range {index}, batch {batch}"),
            );
        }
        // Everything outside the written rows is still poison.
        let written: Vec<std::ops::Range<usize>> = batches
            .iter()
            .enumerate()
            .map(|(index, &batch)| {
                let start = (2 * index + 1) * output_range;
                start..start + batch * graph.output_width()
            })
            .collect();
        for (position, value) in values.iter().enumerate() {
            if !written.iter().any(|range| range.contains(&position)) {
                assert!(
                    value.is_nan(),
                    "{backend}: value {position} outside the ranges was written"
                );
            }
        }

        // An offset that is not aligned, and a range past the end, are typed errors.
        // Half the device's alignment (which WebGPU makes at least 4 bytes).
        let misaligned = input.slice((alignment * 2) as u64..);
        let error = model
            .bind(misaligned, output.slice(..(output_range * 4) as u64))
            .unwrap_err();
        assert!(
            matches!(&error, resgraph::Error::BufferUsage { expected, .. } if expected.contains("min_storage_buffer_offset_alignment")),
            "{backend}: {error}"
        );
        let short = (20 * graph.input_width() * 4 - 4) as u64;
        let error = model
            .bind(
                input.slice(..short),
                output.slice(..(output_range * 4) as u64),
            )
            .unwrap_err();
        assert!(
            matches!(error, resgraph::Error::BufferUsage { .. }),
            "{backend}: {error}"
        );
        // Overlapping ranges of one buffer are refused; disjoint ones are not.
        let both = host_buffer(context, "both", 4 * input_range);
        let error = model
            .bind(both.slice(..), both.slice(..(output_range * 4) as u64))
            .unwrap_err();
        assert!(
            matches!(error, resgraph::Error::AliasedOutput { .. }),
            "{backend}: {error}"
        );
    }
}

#[test]
fn a_run_on_another_thread_never_corrupts_a_pending_encode() {
    let graph = model_graph();
    for (backend, context) in common::contexts() {
        let model = compile(context, &graph, 40);
        let batch = 30;
        let values = random_input(batch * graph.input_width(), 71);
        let input = host_buffer(context, "host input", 40 * graph.input_width());
        let output = host_buffer(context, "host output", 40 * graph.output_width());
        context
            .queue()
            .write_buffer(&input, 0, bytemuck::cast_slice(&values));
        poison(context, &output);
        let binding = model.bind(input.slice(..), output.slice(..)).expect("bind");
        let mut encoder = context.device().create_command_encoder(&Default::default());
        binding.encode(&mut encoder, batch).expect("encode");
        // Between the host's encode and its submit, another thread runs the same model at a
        // smaller batch size (and so rewrites the shared activations and parameters): were the
        // batch size a queue write, the host's pass would compute only 7 of its 30 rows.
        let other = random_input(7 * graph.input_width(), 72);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let result = model.run(&other).expect("run on another thread");
                    common::assert_close(
                        &result,
                        &forward_f64(&graph, &other, 7),
                        F32_TOLERANCE,
                        &format!("{backend}: the other thread's run"),
                    );
                })
                .join()
                .expect("thread");
        });
        context.queue().submit([encoder.finish()]);
        let result = read_back(context, &output, 40 * graph.output_width());
        let rows = batch * graph.output_width();
        common::assert_close(
            &result[..rows],
            &forward_f64(&graph, &values, batch),
            F32_TOLERANCE,
            &format!("{backend}: the host's encode submitted after another run"),
        );
        assert!(
            result[rows..].iter().all(|value| value.is_nan()),
            "{backend}: rows past the host's batch were written"
        );
    }
}

#[test]
fn a_binding_checks_the_host_buffers_up_front() {
    let context = common::primary_context();
    let graph = model_graph();
    let model = compile(context, &graph, 10);
    let input = host_buffer(context, "input", 10 * graph.input_width());
    let output = host_buffer(context, "output", 10 * graph.output_width());
    let small = host_buffer(context, "small", 10 * graph.output_width() - 1);
    let not_storage = context.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("not storage"),
        size: 4096,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    for (input, output, what) in [
        (&input, &small, "an output for fewer rows than max_batch"),
        (&not_storage, &output, "an input without STORAGE"),
        (&input, &not_storage, "an output without STORAGE"),
    ] {
        let error = model.bind(input.slice(..), output.slice(..)).unwrap_err();
        assert!(
            matches!(error, resgraph::Error::BufferUsage { .. }),
            "{what}: {error}"
        );
    }
    let same = host_buffer(context, "both", 4096);
    let error = model.bind(same.slice(..), same.slice(..)).unwrap_err();
    assert!(
        matches!(error, resgraph::Error::AliasedOutput { .. }),
        "{error}"
    );
    let binding = model.bind(input.slice(..), output.slice(..)).expect("bind");
    let mut encoder = context.device().create_command_encoder(&Default::default());
    for batch in [0, 11] {
        let error = binding.encode(&mut encoder, batch).unwrap_err();
        assert!(
            matches!(error, resgraph::Error::BadInput { .. }),
            "batch {batch}: {error}"
        );
    }
}

#[test]
fn a_context_from_the_hosts_adapter_reads_what_that_adapter_is() {
    for (backend, context) in common::contexts() {
        // The host's own instance, adapter, device and queue, matched to the test adapter.
        let backends = match context.adapter_info().backend {
            wgpu::Backend::Gl => wgpu::Backends::GL,
            _ => wgpu::Backends::VULKAN,
        };
        let instance = resgraph::gpu::context::create_instance(backends);
        let adapter = resgraph::gpu::context::enumerate_adapters(&instance, backends)
            .into_iter()
            .find(|adapter| adapter.get_info().name == context.adapter_info().name)
            .expect("the test adapter again");
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("host device"),
            required_features: adapter.features() & wgpu::Features::SUBGROUP,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .expect("host device");
        let host = Arc::new(GpuContext::from_adapter(&adapter, device, queue));
        let info = host.adapter_info();
        assert_eq!(info.name, adapter.get_info().name, "{backend}");
        assert_eq!(
            info.subgroup_min_size,
            adapter.get_info().subgroup_min_size,
            "{backend}"
        );
        assert_eq!(
            host.features().contains(wgpu::Features::SUBGROUP),
            adapter.features().contains(wgpu::Features::SUBGROUP),
            "{backend}: the device's features, as the host enabled them"
        );
        // No cooperative matrices without the feature, whatever the adapter has.
        assert!(host.cooperative_matrix_configs().is_empty(), "{backend}");
        let graph = model_graph();
        let model = CompiledModel::compile(host, &graph, &CompileOptions::new(3)).expect("compile");
        let input = random_input(3 * graph.input_width(), 80);
        common::assert_close(
            &model.run(&input).expect("run"),
            &forward_f64(&graph, &input, 3),
            F32_TOLERANCE,
            &backend,
        );
    }
}

/// A waker that counts how often it is woken.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn run_async_is_woken_by_its_readback_not_by_spinning() {
    let graph = model_graph();
    for (backend, context) in common::contexts() {
        let model = compile(context, &graph, 40);
        let input = random_input(25 * graph.input_width(), 90);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut task = Context::from_waker(&waker);
        let mut future = std::pin::pin!(model.run_async(&input));
        let mut polls = 0;
        let output = loop {
            polls += 1;
            match future.as_mut().poll(&mut task) {
                Poll::Ready(result) => break result.expect("run_async"),
                Poll::Pending => {
                    // Poll again only once woken, as an executor would.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    while counter.0.load(Ordering::SeqCst) < polls {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "{backend}: never woken"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
        };
        common::assert_close(
            &output,
            &forward_f64(&graph, &input, 25),
            F32_TOLERANCE,
            &backend,
        );
        // A spinning future wakes itself on every poll and is polled hundreds of times while the
        // GPU works; this one is polled once, then once more when the readback is mapped.
        assert!(polls <= 3, "{backend}: polled {polls} times");
    }
}
