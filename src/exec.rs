//! The executor: a [`Plan`] compiled onto a device for a maximum batch size.
//!
//! Compiling uploads the weights once and creates every buffer, bind group and pipeline a run
//! needs. A run then writes the input, records every step into **one compute pass**, copies the
//! output to a readback buffer, and submits **once**; nothing is allocated per run.
//!
//! The batch size travels with the recorded commands: each pass is preceded by one copy of the
//! steps' parameter blocks for that batch (kept in one buffer per batch size) into the uniform
//! buffer where every step binds its block, never by a queue write that would apply to whatever
//! is submitted next. A host records the model into its own
//! encoder with [`CompiledModel::encode`] (copying its buffers in and out) or, in place over its
//! own buffers, with a [`ModelBinding`]; neither waits for the GPU or a run, nor opens an error
//! scope (but the first time a batch size is used, when its parameter buffer is made).
//!
//! Runs on one model are serialised by a lock (they share the upload and readback buffers), so a
//! `CompiledModel` can be used from many threads at once; submissions execute in order, so a run
//! and a host's encode that share activation buffers never see each other's values.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use web_time::Instant;

use crate::epilogue::Activation;
use crate::error::{Error, Result};
use crate::gpu::buffers::{self, DeviceMatrix, STORAGE_USAGE};
use crate::gpu::context::GpuContext;
use crate::graph::{Conv2dParams, Graph};
use crate::kernels::PreparedKernel;
use crate::kernels::conv2d::{
    Conv2dGeometry, Conv2dOperands, Conv2dVariant, prepare_conv2d, upload_conv_weights,
};
use crate::kernels::elementwise::{ElementwiseOperands, prepare_elementwise};
use crate::kernels::gemm::{GemmOperands, GemmVariant, LinearWeights, prepare_gemm};
use crate::kernels::gemv::{GemvOperands, TextureWeights, prepare_gemv};
use crate::kernels::pool::{
    GlobalAvgPoolOperands, Pool2dGeometry, Pool2dOperands, prepare_avg_pool2d,
    prepare_global_avg_pool, prepare_max_pool2d,
};
use crate::kernels::residual_block::{ResidualBlockOperands, prepare_residual_block};
use crate::plan::{ElementwiseOp, Plan, PoolOp, Storage, ValueId};
use crate::precision::Precision;
pub use crate::select::BlockFusion;
use crate::select::{self, Schedule, ScheduledStep, SelectionOptions};
use crate::tune::{KernelChoice, TuningCache, TuningReport};

/// How to compile a model.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// The largest batch a run may use; activation buffers are sized for it.
    pub max_batch: usize,
    /// Measure GPU time with timestamp queries, where the device has them.
    pub gpu_timestamps: bool,
    /// Run every layer that runs a tiled GEMM with this variant instead of a chosen one (for
    /// tests and benchmarks). Honoured with [`Tuning::Measure`] too: layers then follow the rules
    /// with this variant, and only the residual blocks' form is measured.
    pub gemm_variant: Option<GemmVariant>,
    /// Let the texture GEMV run the layers of models compiled for at most
    /// [`crate::kernels::gemv::GEMV_MAX_BATCH`] rows (64 when measuring), where the device
    /// supports it. `false` keeps every layer on the tiled GEMM, under the rules and when
    /// measuring.
    pub small_batch_kernel: bool,
    /// How weights and activations are stored; f16 needs the device feature `SHADER_F16`.
    pub precision: Precision,
    /// How each layer's kernel is chosen.
    pub tuning: Tuning,
    /// The tuning cache file; `None` uses [`TuningCache::default_path`].
    pub tuning_cache: Option<std::path::PathBuf>,
    /// When a residual block runs as one dispatch of the whole-block kernel.
    pub block_fusion: BlockFusion,
    /// With [`Tuning::Measure`], how long the tuner may search the points of the tiled GEMM
    /// family per layer shape ([`crate::tune::DEFAULT_TILED_SEARCH`] by default; zero leaves
    /// the family out).
    pub tiled_search: Duration,
}

/// How a compile chooses each layer's kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tuning {
    /// Fixed rules: the texture GEMV for models of at most
    /// [`crate::kernels::gemv::GEMV_MAX_BATCH`] rows where the device supports it, else the
    /// device's best GEMM variant. Deterministic and instant.
    #[default]
    Heuristic,
    /// Time every candidate kernel per layer shape on this device, using and filling the tuning
    /// cache (see [`crate::tune`]).
    Measure,
}

impl CompileOptions {
    /// What kernel selection reads of these options.
    pub(crate) fn selection(&self) -> SelectionOptions {
        SelectionOptions {
            max_batch: self.max_batch,
            precision: self.precision,
            forced_gemm_variant: self.gemm_variant,
            small_batch_kernel: self.small_batch_kernel,
            block_fusion: self.block_fusion,
            tiled_search: self.tiled_search,
        }
    }

    /// Options for batches of up to `max_batch` rows, without GPU timing.
    pub fn new(max_batch: usize) -> Self {
        CompileOptions {
            max_batch,
            gpu_timestamps: false,
            gemm_variant: None,
            small_batch_kernel: true,
            precision: Precision::F32,
            tuning: Tuning::Heuristic,
            tuning_cache: None,
            block_fusion: BlockFusion::WhereFaster,
            tiled_search: crate::tune::DEFAULT_TILED_SEARCH,
        }
    }
}

/// Timing of one run, from [`CompiledModel::run_profiled`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RunProfile {
    /// Host time spent recording the command buffer.
    pub encode: Duration,
    /// GPU time of the compute pass from timestamp queries, when compiled with them and the
    /// device has them.
    pub gpu: Option<Duration>,
}

/// The weights one step reads, in the form its kernel reads, uploaded once at compile time and
/// kept for as long as the model: the model's bind groups and those of every
/// [`ModelBinding`] refer to them.
enum StepWeights {
    /// A step without weights (pooling, elementwise).
    None,
    /// A linear layer or convolution in the blocked buffer layout of the tiled GEMM kernels.
    Blocked(LinearWeights),
    /// A linear layer in the texture of the small-batch GEMV kernel.
    Texture(TextureWeights),
    /// A whole residual block's two layers, in the blocked layout.
    Block(LinearWeights, LinearWeights),
}

impl StepWeights {
    fn device_bytes(&self) -> u64 {
        match self {
            StepWeights::None => 0,
            StepWeights::Blocked(weights) => weights.device_bytes(),
            StepWeights::Texture(weights) => weights.device_bytes(),
            StepWeights::Block(first, second) => first.device_bytes() + second.device_bytes(),
        }
    }
}

struct TimestampQueries {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// What the run lock protects: the upload staging and readback buffers of [`CompiledModel::run`].
struct RunState;

/// A graph compiled onto a device.
pub struct CompiledModel {
    context: Arc<GpuContext>,
    plan: Plan,
    max_batch: usize,
    input_width: usize,
    output_width: usize,
    /// Each step's uploaded weights (by step); the bind groups read them.
    weights: Vec<StepWeights>,
    /// Each step's dispatch and kernel, as selection scheduled it.
    schedule: Vec<ScheduledStep>,
    input: DeviceMatrix,
    /// The activation slots of the plan's memory plan.
    slots: Vec<wgpu::Buffer>,
    output_buffer: wgpu::Buffer,
    steps: Vec<PreparedKernel>,
    /// Every step's parameter block for each batch size used so far, read into the steps'
    /// parameter buffers by copies recorded before each pass.
    batch_parameters: BatchParameters,
    /// The mapped staging buffer each run's input is written into and copied from.
    upload: UploadStaging,
    readback: wgpu::Buffer,
    timestamps: Option<TimestampQueries>,
    run_lock: futures_intrusive::sync::Mutex<RunState>,
    precision: Precision,
    tuning: TuningReport,
}

impl CompiledModel {
    /// Plans `graph`, chooses each step's kernel (see [`crate::select`]), uploads the weights
    /// and prepares every step for batches of up to `options.max_batch` rows.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn compile(
        context: Arc<GpuContext>,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<Self> {
        pollster::block_on(Self::compile_async(context, graph, options))
    }

    /// As [`Self::compile`], awaited: the way to compile on the web, where the tuner's waits for
    /// the GPU must not block. On native it blocks in those waits (the device is polled there).
    pub async fn compile_async(
        context: Arc<GpuContext>,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<Self> {
        let scope = Arc::clone(&context);
        scope
            .scoped_future(
                "compiling the model",
                Self::compile_in_scope(context, graph, options),
            )
            .await
    }

    async fn compile_in_scope(
        context: Arc<GpuContext>,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<Self> {
        let max_batch = options.max_batch;
        if max_batch == 0 {
            return Err(Error::zero_sized("compiled model", "max_batch"));
        }
        let precision = options.precision;
        precision.check_supported(context.features(), &context.adapter_info().name)?;
        let plan = Plan::new(graph)?;
        let schedule = select_kernels(&context, &plan, options).await?;
        let activations = Activations::create(&context, &plan, max_batch, precision)?;
        let mut steps = Vec::with_capacity(schedule.steps.len());
        let mut weights = Vec::with_capacity(schedule.steps.len());
        for step in &schedule.steps {
            let step_weights = upload_step_weights(&context, &plan, step, precision)?;
            steps.push(prepare_step(
                &context,
                &plan,
                &activations,
                step,
                &step_weights,
            )?);
            weights.push(step_weights);
        }
        let output_width = graph.output_width();
        let output_buffer = activations.matrix(&plan, plan.output)?.buffer().clone();
        let readback_bytes = (max_batch as u64 * output_width as u64 * precision.element_bytes())
            .next_multiple_of(4);
        let readback = create_map_read_buffer(&context, "model readback", readback_bytes)?;
        let upload = UploadStaging::create(&context, activations.input.buffer().size())?;
        let timestamps = if options.gpu_timestamps
            && context.features().contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            Some(TimestampQueries::create(&context)?)
        } else {
            None
        };
        let batch_parameters = BatchParameters::new(&context, &mut steps)?;
        Ok(CompiledModel {
            input_width: graph.input_width(),
            output_width,
            weights,
            schedule: schedule.steps,
            input: activations.input,
            slots: activations.slots,
            output_buffer,
            steps,
            batch_parameters,
            upload,
            readback,
            timestamps,
            run_lock: futures_intrusive::sync::Mutex::new(RunState, true),
            precision,
            tuning: schedule.tuning,
            context,
            plan,
            max_batch,
        })
    }

    /// Runs the model on `input` (`batch × input_width` values, row-major, any batch from 1 to
    /// the compiled maximum) and returns `batch × output_width` values. One submit, one readback.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>> {
        self.run_profiled(input).map(|(output, _)| output)
    }

    /// As [`Self::run`], also returning the host encode time and, when compiled with
    /// `gpu_timestamps` on a device that has them, the GPU time of the pass.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_profiled(&self, input: &[f32]) -> Result<(Vec<f32>, RunProfile)> {
        let batch = self.batch_of(input)?;
        let mut state = pollster::block_on(self.run_lock.lock());
        pollster::block_on(self.upload.wait_until_mapped(&self.context))?;
        // One error scope around everything the run asks of wgpu.
        let encode = self.context.scoped("running the model", || {
            self.submit_run(&mut state, input, batch)
        })??;
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        self.request_maps(Arc::new(sender));
        self.context.wait_idle()?;
        let mapped = pollster::block_on(receiver.receive());
        let (output, gpu) = self.finish_run(mapped, batch)?;
        Ok((output, RunProfile { encode, gpu }))
    }

    /// As [`Self::run`], as a future that any executor can await. It does not spin: the
    /// readback's map callback wakes it. wgpu runs map callbacks only while the device is
    /// polled, so one thread per context polls it while async runs wait (on the web the browser
    /// does that). The error scopes are awaited, not blocked on.
    pub async fn run_async(&self, input: &[f32]) -> Result<Vec<f32>> {
        self.run_profiled_async(input)
            .await
            .map(|(output, _)| output)
    }

    /// As [`Self::run_profiled`], awaited as [`Self::run_async`] is.
    pub async fn run_profiled_async(&self, input: &[f32]) -> Result<(Vec<f32>, RunProfile)> {
        let batch = self.batch_of(input)?;
        let mut state = self.run_lock.lock().await;
        self.upload.wait_until_mapped(&self.context).await?;
        let encode = self
            .context
            .scoped_async("running the model", || {
                self.submit_run(&mut state, input, batch)
            })
            .await??;
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        let sender = Arc::new(sender);
        self.request_maps(Arc::clone(&sender));
        // wgpu runs the map callbacks only while the device is polled; on native the context's
        // polling thread does that (on the web, the browser). If the poll fails, the callbacks
        // may never run: fail the run rather than hang it.
        #[cfg(not(target_arch = "wasm32"))]
        self.context.poll_in_background(move || {
            let _ = sender.send(Err(wgpu::BufferAsyncError));
        })?;
        let mapped = receiver.receive().await;
        let (output, gpu) = self.finish_run(mapped, batch)?;
        Ok((output, RunProfile { encode, gpu }))
    }

    /// Records the inference into a host application's encoder: `input` (`batch × input_width`
    /// values in the model's precision, `COPY_SRC`) is copied in, every step is recorded in one
    /// compute pass, and the result is copied to `output` (`batch × output_width` values,
    /// `COPY_DST`), which stays on the GPU. Copies are whole multiples of 4 bytes: for an f16 model
    /// with an odd `batch × width`, the buffers must hold one value more. (A [`ModelBinding`]
    /// reads and writes host buffers in place, without the two copies.)
    ///
    /// The batch size travels with the recorded commands (the steps' parameters are copied in
    /// by the encoder itself, in one copy), so encodes of different batch sizes may share one
    /// submission, and a [`Self::run`] on another thread before the host submits changes nothing
    /// of it. Nothing here waits for the GPU or for a run (only the parameter cache's lock is
    /// taken, for a moment).
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        batch: usize,
    ) -> Result<()> {
        self.check_batch(batch)?;
        let input_bytes = self.bytes_of(batch * self.input_width);
        let output_bytes = self.bytes_of(batch * self.output_width);
        if input.size() < input_bytes || !input.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::BufferUsage {
                what: "encoded model input".to_string(),
                expected: format!("a COPY_SRC buffer of at least {input_bytes} bytes"),
                actual: format!("{} bytes, usage {:?}", input.size(), input.usage()),
            });
        }
        if output.size() < output_bytes || !output.usage().contains(wgpu::BufferUsages::COPY_DST) {
            return Err(Error::BufferUsage {
                what: "encoded model output".to_string(),
                expected: format!("a COPY_DST buffer of at least {output_bytes} bytes"),
                actual: format!("{} bytes, usage {:?}", output.size(), output.usage()),
            });
        }
        self.context.check_not_lost("recording the model")?;
        // Everything wgpu could reject was checked above, so no error scope (whose pop would
        // block this thread) is needed: recording only appends to the host's encoder.
        encoder.copy_buffer_to_buffer(input, 0, self.input.buffer(), 0, input_bytes);
        self.record_pass(encoder, self.steps.iter(), batch, None)?;
        encoder.copy_buffer_to_buffer(&self.output_buffer, 0, output, 0, output_bytes);
        Ok(())
    }

    /// A binding of the model to ranges of a host's own buffers, read and written in place:
    /// `input` holds up to `max_batch × input_width` values and `output` receives `batch ×
    /// output_width` values, both in the model's precision, in buffers with `STORAGE` usage,
    /// from offsets that are multiples of the device's `min_storage_buffer_offset_alignment`
    /// (`buffer.slice(..)` for a whole buffer). The steps that read the input or write the
    /// output get bind groups over these ranges (the weights and the other steps are the
    /// model's own), so recording it copies no activations.
    ///
    /// Usages, sizes, offsets and overlap are checked here, once, with typed errors; recording
    /// ([`ModelBinding::encode`]) then needs no check but the batch. A buffer holds no type, so
    /// the precision is the model's ([`Self::precision`]): f16 models read and write 2-byte
    /// values.
    pub fn bind(
        self: &Arc<Self>,
        input: wgpu::BufferSlice<'_>,
        output: wgpu::BufferSlice<'_>,
    ) -> Result<ModelBinding> {
        let view = |what: &str, slice: wgpu::BufferSlice<'_>, width: usize| {
            let bytes = self.bytes_of(self.max_batch * width);
            if slice.size() < bytes || !slice.buffer().usage().contains(wgpu::BufferUsages::STORAGE)
            {
                return Err(Error::BufferUsage {
                    what: what.to_string(),
                    expected: format!(
                        "a range of a STORAGE buffer of at least {bytes} bytes ({} values of {} \
                         for batches up to {})",
                        bytes / self.precision.element_bytes(),
                        self.precision,
                        self.max_batch
                    ),
                    actual: format!(
                        "{} bytes from offset {}, usage {:?}",
                        slice.size(),
                        slice.offset(),
                        slice.buffer().usage()
                    ),
                });
            }
            DeviceMatrix::from_buffer_range(
                &self.context,
                slice.buffer().clone(),
                slice.offset(),
                (self.max_batch, width),
                self.precision,
            )
            .map_err(|error| match error {
                Error::BufferUsage {
                    expected, actual, ..
                } => Error::BufferUsage {
                    what: what.to_string(),
                    expected,
                    actual,
                },
                other => other,
            })
        };
        let input = view("bound model input", input, self.input_width)?;
        let output = view("bound model output", output, self.output_width)?;
        if input.overlaps(&output) {
            return Err(Error::AliasedOutput {
                what: "bound model".to_string(),
                operand: "input",
            });
        }
        let activations = Activations {
            input,
            slots: self.slots.clone(),
            max_batch: self.max_batch,
            precision: self.precision,
            output: Some((self.plan.output, output)),
        };
        let mut rebound = Vec::new();
        for (index, (step, weights)) in self.schedule.iter().zip(&self.weights).enumerate() {
            if step_touches(step, self.plan.input, self.plan.output) {
                let mut prepared =
                    prepare_step(&self.context, &self.plan, &activations, step, weights)?;
                self.batch_parameters
                    .bind_step(&self.context, index, &mut prepared)?;
                rebound.push((index, prepared));
            }
        }
        Ok(ModelBinding {
            model: Arc::clone(self),
            rebound,
        })
    }

    /// The largest batch a run accepts.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The input width.
    pub fn input_width(&self) -> usize {
        self.input_width
    }

    /// The output width.
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// Dispatches per run.
    pub fn dispatches_per_run(&self) -> usize {
        self.steps.len()
    }

    /// The shader each step runs, in order (e.g. `gemm_subgroup`, `gemv_texture`).
    pub fn step_kernels(&self) -> Vec<&'static str> {
        self.steps.iter().map(PreparedKernel::kernel_name).collect()
    }

    /// What each step runs, in order, as `bench` and the tuning cache name it: the shader, and
    /// for a point of the tiled GEMM family its point (`gemm_tiled/16x16t/8x8/k16/prefetch`).
    pub fn step_kernel_labels(&self) -> Vec<String> {
        self.schedule
            .iter()
            .zip(&self.steps)
            .map(|(scheduled, prepared)| match scheduled {
                // A tiled GEMM's label names its point; every other step's kernel name says
                // which shader ran (the texture GEMV's variant, say).
                ScheduledStep::Layer {
                    kernel: kernel @ KernelChoice::Gemm(_),
                    ..
                } => kernel.label(),
                _ => prepared.kernel_name().to_string(),
            })
            .collect()
    }

    /// Bytes of the activation slots (the input buffer not counted).
    pub fn activation_bytes(&self) -> u64 {
        self.plan
            .activation_bytes(self.max_batch, self.precision.element_bytes())
    }

    /// Bytes of the uploaded weights and biases, in the kernels' padded layout.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.iter().map(StepWeights::device_bytes).sum()
    }

    /// How weights and activations are stored.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What kernel choice did at compile time (shapes measured, taken from the cache).
    pub fn tuning_report(&self) -> &TuningReport {
        &self.tuning
    }

    /// Whether runs measure GPU time.
    pub fn has_gpu_timestamps(&self) -> bool {
        self.timestamps.is_some()
    }

    /// The context the model runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.context
    }

    /// Bytes of `values` values in the model's precision, rounded up to whole 4-byte words (the
    /// granularity of buffer copies and writes).
    fn bytes_of(&self, values: usize) -> u64 {
        (values as u64 * self.precision.element_bytes()).next_multiple_of(4)
    }

    fn check_batch(&self, batch: usize) -> Result<()> {
        if batch == 0 || batch > self.max_batch {
            return Err(Error::BadInput {
                what: self.describe(),
                len: batch * self.input_width,
                reason: format!("a batch of {batch} rows is outside 1..={}", self.max_batch),
            });
        }
        Ok(())
    }

    fn batch_of(&self, input: &[f32]) -> Result<usize> {
        if input.is_empty() || !input.len().is_multiple_of(self.input_width) {
            return Err(Error::BadInput {
                what: self.describe(),
                len: input.len(),
                reason: format!(
                    "the length must be a positive multiple of the input width {}",
                    self.input_width
                ),
            });
        }
        let batch = input.len() / self.input_width;
        self.check_batch(batch)?;
        Ok(batch)
    }

    fn describe(&self) -> String {
        format!(
            "a model compiled for batch 1..={} of width {}",
            self.max_batch, self.input_width
        )
    }

    /// Records `steps` (the model's, or a binding's with some rebound) for `batch` rows: first
    /// the one copy that gives every step its parameters for `batch`, then one compute pass.
    fn record_pass<'a>(
        &'a self,
        encoder: &mut wgpu::CommandEncoder,
        steps: impl Iterator<Item = &'a PreparedKernel>,
        batch: usize,
        timed: Option<&TimestampQueries>,
    ) -> Result<()> {
        let parameters = self
            .batch_parameters
            .for_batch(&self.context, &self.steps, batch)?;
        encoder.copy_buffer_to_buffer(
            &parameters,
            0,
            &self.batch_parameters.live,
            0,
            self.batch_parameters.size,
        );
        let timestamp_writes = timed.map(|queries| wgpu::ComputePassTimestampWrites {
            query_set: &queries.query_set,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("resgraph model"),
            timestamp_writes,
        });
        for step in steps {
            step.record_rows(&mut pass, batch);
        }
        Ok(())
    }

    /// Writes the input, records and submits one command buffer; returns the encode time.
    /// Writes the input, records and submits one command buffer; returns the encode time. The
    /// caller holds the run lock, has waited for the staging buffer to be mapped, and wraps this
    /// in one error scope.
    fn submit_run(&self, _state: &mut RunState, input: &[f32], batch: usize) -> Result<Duration> {
        let output_bytes = self.bytes_of(batch * self.output_width);
        let input_bytes = self.bytes_of(batch * self.input_width);
        // The input goes straight into the reused, already mapped staging buffer: no host copy
        // of its own, and no staging allocation per run (which `write_buffer` makes).
        self.upload.write(self.precision, input, input_bytes)?;
        {
            let started = Instant::now();
            let mut encoder =
                self.context
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("resgraph run"),
                    });
            encoder.copy_buffer_to_buffer(
                &self.upload.buffer,
                0,
                self.input.buffer(),
                0,
                input_bytes,
            );
            self.record_pass(
                &mut encoder,
                self.steps.iter(),
                batch,
                self.timestamps.as_ref(),
            )?;
            encoder.copy_buffer_to_buffer(&self.output_buffer, 0, &self.readback, 0, output_bytes);
            if let Some(queries) = &self.timestamps {
                encoder.resolve_query_set(&queries.query_set, 0..2, &queries.resolve, 0);
                encoder.copy_buffer_to_buffer(&queries.resolve, 0, &queries.readback, 0, 16);
            }
            let commands = encoder.finish();
            let encode = started.elapsed();
            self.context.queue().submit([commands]);
            // Mapped again once the GPU has copied from it: ready for the next run.
            self.upload.request_map();
            Ok(encode)
        }
    }

    /// Asks for the readback (and timestamp) buffers to be mapped; `sender` receives the first
    /// failure or success once every map has completed.
    fn request_maps(
        &self,
        sender: Arc<
            futures_intrusive::channel::shared::OneshotSender<
                std::result::Result<(), wgpu::BufferAsyncError>,
            >,
        >,
    ) {
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(
            1 + usize::from(self.timestamps.is_some()),
        ));
        let buffers =
            std::iter::once(&self.readback).chain(self.timestamps.as_ref().map(|q| &q.readback));
        for buffer in buffers {
            let sender = Arc::clone(&sender);
            let pending = Arc::clone(&pending);
            buffer
                .slice(..)
                .map_async(wgpu::MapMode::Read, move |result| {
                    let last = pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1;
                    if result.is_err() || last {
                        // Only the first send counts; a closed channel has no one left to tell.
                        let _ = sender.send(result);
                    }
                });
        }
    }

    /// Reads the mapped output (and timestamps) and unmaps them.
    fn finish_run(
        &self,
        mapped: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
        batch: usize,
    ) -> Result<(Vec<f32>, Option<Duration>)> {
        let unmap_all = || {
            self.readback.unmap();
            if let Some(queries) = &self.timestamps {
                queries.readback.unmap();
            }
        };
        match mapped {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                unmap_all();
                // A lost device fails every map; say that rather than "the map failed".
                self.context.check_not_lost("reading the output back")?;
                return Err(Error::Readback {
                    reason: error.to_string(),
                });
            }
            None => {
                unmap_all();
                return Err(Error::Readback {
                    reason: "the map callback was dropped without running".to_string(),
                });
            }
        }
        let len = batch * self.output_width;
        let read = || -> Result<(Vec<f32>, Option<Duration>)> {
            let mapped_error = |error: wgpu::MapRangeError| Error::Readback {
                reason: error.to_string(),
            };
            let output = {
                let view = self
                    .readback
                    .slice(..)
                    .get_mapped_range()
                    .map_err(mapped_error)?;
                let mut values = self.precision.decode(&view[..self.bytes_of(len) as usize]);
                values.truncate(len);
                values
            };
            let gpu = match &self.timestamps {
                Some(queries) => {
                    let view = queries
                        .readback
                        .slice(..)
                        .get_mapped_range()
                        .map_err(mapped_error)?;
                    let ticks: &[u64] = bytemuck::cast_slice(&view);
                    let period = f64::from(self.context.queue().get_timestamp_period());
                    let nanos = ticks[1].saturating_sub(ticks[0]) as f64 * period;
                    Some(Duration::from_nanos(nanos as u64))
                }
                None => None,
            };
            Ok((output, gpu))
        };
        // Unmapped on every path, so that a failed read never leaves the next run unable to map.
        let result = read();
        unmap_all();
        result
    }
}

/// Chooses every step's kernel: by the rules, or by measurement with the tuning cache (opened
/// here and saved once selection is done).
async fn select_kernels(
    context: &GpuContext,
    plan: &Plan,
    options: &CompileOptions,
) -> Result<Schedule> {
    let selection = options.selection();
    match options.tuning {
        Tuning::Heuristic => select::select(context, plan, &selection, None).await,
        Tuning::Measure => {
            let mut cache = TuningCache::open(
                options
                    .tuning_cache
                    .clone()
                    .or_else(TuningCache::default_path),
            );
            let mut schedule = select::select(context, plan, &selection, Some(&mut cache)).await?;
            // Choices that cannot be saved are measured again next time; the compile itself
            // has all it needs.
            if let Err(error) = cache.save() {
                schedule.tuning.save_error = Some(error.to_string());
            }
            Ok(schedule)
        }
    }
}

/// The model's input buffer and activation slots, as the plan's memory plan lays them out.
struct Activations {
    input: DeviceMatrix,
    slots: Vec<wgpu::Buffer>,
    max_batch: usize,
    precision: Precision,
    /// The model's output value and the range of a host's buffer it lives in instead of its
    /// slot, for a [`ModelBinding`].
    output: Option<(ValueId, DeviceMatrix)>,
}

impl Activations {
    fn create(
        context: &GpuContext,
        plan: &Plan,
        max_batch: usize,
        precision: Precision,
    ) -> Result<Self> {
        let input_width = plan.value_widths[plan.input.0];
        let input = DeviceMatrix::new_with_precision(
            context,
            "model input",
            max_batch,
            input_width,
            precision,
        )?;
        let slots = plan
            .slot_widths
            .iter()
            .enumerate()
            .map(|(index, &width)| {
                let bytes = (max_batch as u64) * (width as u64) * precision.element_bytes();
                buffers::create_storage_buffer(
                    context,
                    &format!("activation slot {index} ({max_batch}x{width})"),
                    bytes,
                    STORAGE_USAGE,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Activations {
            input,
            slots,
            max_batch,
            precision,
            output: None,
        })
    }

    /// The NHWC view of images where `value` lives: `pixels` rows of `channels` per batch entry.
    fn image(
        &self,
        plan: &Plan,
        value: ValueId,
        pixels: usize,
        channels: usize,
    ) -> Result<DeviceMatrix> {
        let rows = self.max_batch * pixels;
        match (&self.output, plan.value_storage[value.0]) {
            (Some((output, matrix)), _) if *output == value => matrix.reshaped(rows, channels),
            (_, Storage::Input) => self.input.reshaped(rows, channels),
            (_, Storage::Slot(slot)) => DeviceMatrix::from_buffer_with_precision(
                self.slots[slot].clone(),
                rows,
                channels,
                self.precision,
            ),
        }
    }

    /// The matrix where `value` lives, one row per batch entry: the view of one-pixel images.
    fn matrix(&self, plan: &Plan, value: ValueId) -> Result<DeviceMatrix> {
        self.image(plan, value, 1, plan.value_widths[value.0])
    }
}

/// Uploads the weights `step` reads, in the layout its kernel reads.
fn upload_step_weights(
    context: &GpuContext,
    plan: &Plan,
    step: &ScheduledStep,
    precision: Precision,
) -> Result<StepWeights> {
    let blocked = |layer: usize| {
        let params = &plan.layers[layer];
        LinearWeights::upload_with_precision(
            context,
            params.out_features(),
            params.in_features(),
            params.weight(),
            params.bias(),
            precision,
        )
    };
    Ok(match *step {
        ScheduledStep::ResidualBlock(block) => {
            StepWeights::Block(blocked(block.first_layer)?, blocked(block.second_layer)?)
        }
        ScheduledStep::Layer { layer, kernel, .. } => match kernel {
            KernelChoice::Gemm(_) => StepWeights::Blocked(blocked(layer)?),
            KernelChoice::GemvTexture => {
                let params = &plan.layers[layer];
                StepWeights::Texture(TextureWeights::upload_with_precision(
                    context,
                    params.out_features(),
                    params.in_features(),
                    params.weight(),
                    params.bias(),
                    precision,
                )?)
            }
        },
        ScheduledStep::Conv {
            conv, input_size, ..
        } => {
            let params = &plan.convs[conv];
            StepWeights::Blocked(upload_conv_weights(
                context,
                &conv_geometry(params, input_size),
                params.weight(),
                params.bias(),
                precision,
            )?)
        }
        ScheduledStep::Pool { .. } | ScheduledStep::Elementwise { .. } => StepWeights::None,
    })
}

/// Whether `step` reads `input` or writes `output`: the steps a [`ModelBinding`] rebinds to a
/// host's buffers.
fn step_touches(step: &ScheduledStep, input: ValueId, output: ValueId) -> bool {
    let (reads, writes): (Vec<ValueId>, ValueId) = match *step {
        ScheduledStep::Layer {
            input,
            residual,
            output,
            ..
        }
        | ScheduledStep::Conv {
            input,
            residual,
            output,
            ..
        } => (std::iter::once(input).chain(residual).collect(), output),
        ScheduledStep::ResidualBlock(block) => (vec![block.input], block.output),
        ScheduledStep::Pool { input, output, .. } => (vec![input], output),
        ScheduledStep::Elementwise {
            left,
            right,
            output,
            ..
        } => (std::iter::once(left).chain(right).collect(), output),
    };
    writes == output || reads.contains(&input)
}

/// Prepares the dispatch of `step` over `activations`, reading `weights` (what
/// [`upload_step_weights`] uploaded for it).
fn prepare_step(
    context: &GpuContext,
    plan: &Plan,
    activations: &Activations,
    step: &ScheduledStep,
    weights: &StepWeights,
) -> Result<PreparedKernel> {
    let matrix = |value: ValueId| activations.matrix(plan, value);
    let prepared = match (*step, weights) {
        (ScheduledStep::ResidualBlock(block), StepWeights::Block(first, second)) => {
            prepare_residual_block(
                context,
                &ResidualBlockOperands {
                    input: &matrix(block.input)?,
                    first,
                    second,
                    output: &matrix(block.output)?,
                },
            )?
        }
        (
            ScheduledStep::Layer {
                input,
                residual,
                activation,
                output,
                kernel,
                ..
            },
            weights,
        ) => {
            let (input, output) = (matrix(input)?, matrix(output)?);
            let residual = residual.map(matrix).transpose()?;
            match (kernel, weights) {
                (KernelChoice::Gemm(variant), StepWeights::Blocked(weights)) => {
                    let operands = GemmOperands {
                        input: &input,
                        weights,
                        residual: residual.as_ref(),
                        output: &output,
                        activation,
                    };
                    prepare_gemm(context, &operands, variant)?
                }
                (KernelChoice::GemvTexture, StepWeights::Texture(weights)) => {
                    let operands = GemvOperands {
                        input: &input,
                        weights,
                        residual: residual.as_ref(),
                        output: &output,
                        activation,
                    };
                    prepare_gemv(context, &operands)?
                }
                _ => return Err(mismatched_weights(step)),
            }
        }
        (
            ScheduledStep::Conv {
                variant,
                conv,
                input,
                input_size,
                residual,
                activation,
                output,
            },
            StepWeights::Blocked(weights),
        ) => {
            let step = ConvStep {
                variant,
                params: &plan.convs[conv],
                input,
                input_size,
                residual,
                activation,
                output,
            };
            prepare_conv_step(context, plan, activations, &step, weights)?
        }
        (
            ScheduledStep::Pool {
                op,
                input,
                input_shape,
                output,
            },
            StepWeights::None,
        ) => prepare_pool_step(context, plan, activations, op, (input, input_shape), output)?,
        (
            ScheduledStep::Elementwise {
                op,
                left,
                right,
                output,
            },
            StepWeights::None,
        ) => prepare_elementwise(
            context,
            &ElementwiseOperands {
                left: &matrix(left)?,
                right: right.map(matrix).transpose()?.as_ref(),
                output: &matrix(output)?,
                relu: op == ElementwiseOp::Relu,
            },
        )?,
        _ => return Err(mismatched_weights(step)),
    };
    Ok(prepared)
}

/// The error for a step given weights of another kind: a bug in the executor, reported rather
/// than panicked on.
fn mismatched_weights(step: &ScheduledStep) -> Error {
    Error::InvalidGraph {
        node: format!("{step:?}"),
        reason: "the executor paired this step with weights of another kind (a resgraph bug)"
            .to_string(),
    }
}

/// The geometry of a convolution over `input_size` images.
fn conv_geometry(params: &Conv2dParams, input_size: (usize, usize)) -> Conv2dGeometry {
    Conv2dGeometry {
        input_size,
        in_channels: params.in_channels(),
        out_channels: params.out_channels(),
        kernel: params.kernel(),
        stride: params.stride(),
        padding: params.padding(),
    }
}

/// One scheduled convolution.
struct ConvStep<'a> {
    variant: Conv2dVariant,
    params: &'a Conv2dParams,
    input: ValueId,
    input_size: (usize, usize),
    residual: Option<ValueId>,
    activation: Activation,
    output: ValueId,
}

/// Prepares a convolution's dispatch over NHWC views of its values, reading `conv_weights` (in
/// the implicit GEMM's layout).
fn prepare_conv_step(
    context: &GpuContext,
    plan: &Plan,
    activations: &Activations,
    step: &ConvStep<'_>,
    conv_weights: &LinearWeights,
) -> Result<PreparedKernel> {
    let params = step.params;
    let geometry = conv_geometry(params, step.input_size);
    let (out_h, out_w) = geometry.output_size()?;
    let (in_h, in_w) = step.input_size;
    let input = activations.image(plan, step.input, in_h * in_w, params.in_channels())?;
    let output = activations.image(plan, step.output, out_h * out_w, params.out_channels())?;
    let residual = step
        .residual
        .map(|value| activations.image(plan, value, out_h * out_w, params.out_channels()))
        .transpose()?;
    prepare_conv2d(
        context,
        &Conv2dOperands {
            input: &input,
            weights: conv_weights,
            geometry,
            batch: activations.max_batch,
            residual: residual.as_ref(),
            output: &output,
            activation: step.activation,
        },
        step.variant,
    )
}

/// Prepares a pooling step over NHWC views of its values (rows of the prepared kernel are
/// images, as for convolutions).
fn prepare_pool_step(
    context: &GpuContext,
    plan: &Plan,
    activations: &Activations,
    op: PoolOp,
    (input, (height, width, channels)): (ValueId, (usize, usize, usize)),
    output: ValueId,
) -> Result<PreparedKernel> {
    let batch = activations.max_batch;
    let input = activations.image(plan, input, height * width, channels)?;
    let window = match op {
        PoolOp::Max(window) | PoolOp::Average(window, _) => window,
        PoolOp::GlobalAverage => {
            let output = activations.image(plan, output, 1, channels)?;
            return prepare_global_avg_pool(
                context,
                &GlobalAvgPoolOperands {
                    input: &input,
                    input_size: (height, width),
                    channels,
                    batch,
                    output: &output,
                },
            );
        }
    };
    let geometry = Pool2dGeometry {
        input_size: (height, width),
        channels,
        kernel: window.kernel,
        stride: window.stride,
        padding: window.padding,
    };
    let (out_h, out_w) = geometry.output_size()?;
    let output = activations.image(plan, output, out_h * out_w, channels)?;
    let operands = Pool2dOperands {
        input: &input,
        geometry,
        batch,
        output: &output,
    };
    match op {
        PoolOp::Average(_, count_include_pad) => {
            prepare_avg_pool2d(context, &operands, count_include_pad)
        }
        _ => prepare_max_pool2d(context, &operands),
    }
}

/// The steps' parameter blocks. Every step binds its block in one uniform buffer, `live`, at
/// its own slot; each batch size used so far has a `COPY_SRC` buffer of the same layout, and a
/// pass is preceded by one copy of the batch's buffer into `live`, so that the batch size
/// travels with the recorded commands rather than with a queue write that would apply to
/// whatever is submitted next. Steps of a [`ModelBinding`] bind the same slots (a step rebound
/// to other buffers has the same shape, so the same parameters).
struct BatchParameters {
    /// Each step's block: offset (a multiple of `min_uniform_buffer_offset_alignment`), and
    /// length.
    layout: Vec<(u64, u64)>,
    /// Bytes of the whole layout.
    size: u64,
    /// The uniform buffer every step binds its block in.
    live: wgpu::Buffer,
    /// The buffer of each batch size used so far.
    buffers: Mutex<std::collections::HashMap<usize, wgpu::Buffer>>,
}

/// Batch sizes whose parameter buffers are kept; past this many the oldest are dropped (a host
/// that cycles through thousands of sizes rebuilds some, rather than growing without bound).
const KEPT_BATCH_SIZES: usize = 64;

impl BatchParameters {
    /// Lays the blocks of `steps` out in one buffer and binds every step's block there.
    fn new(context: &GpuContext, steps: &mut [PreparedKernel]) -> Result<Self> {
        let alignment = u64::from(context.limits().min_uniform_buffer_offset_alignment).max(4);
        let mut offset = 0;
        let layout: Vec<(u64, u64)> = steps
            .iter()
            .map(|step| {
                let len = step.params_bytes(1).len() as u64;
                let block = (offset, len);
                offset = (offset + len).next_multiple_of(alignment);
                block
            })
            .collect();
        let size = offset.max(alignment);
        let live = context.scoped("creating the steps' parameter buffer", || {
            context.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("model step parameters"),
                size,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        for (step, &(offset, _)) in steps.iter_mut().zip(&layout) {
            step.use_params_slot(context, &live, offset)?;
        }
        Ok(BatchParameters {
            layout,
            size,
            live,
            buffers: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Binds the block of a binding's rebound step, number `index` of the model's steps, in that
    /// step's slot.
    fn bind_step(
        &self,
        context: &GpuContext,
        index: usize,
        step: &mut PreparedKernel,
    ) -> Result<()> {
        step.use_params_slot(context, &self.live, self.layout[index].0)
    }

    /// The buffer of every step's parameters for `batch` rows, created the first time a batch
    /// size is used.
    fn for_batch(
        &self,
        context: &GpuContext,
        steps: &[PreparedKernel],
        batch: usize,
    ) -> Result<wgpu::Buffer> {
        let mut buffers = self
            .buffers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(buffer) = buffers.get(&batch) {
            return Ok(buffer.clone());
        }
        let rows = u32::try_from(batch).map_err(|_| Error::UnsupportedShape {
            kernel: "model",
            what: format!("a batch of {batch} rows"),
            reason: "the kernels index rows with 32 bits".to_string(),
        })?;
        let mut contents = Vec::with_capacity(self.size as usize);
        for (step, &(offset, _)) in steps.iter().zip(&self.layout) {
            contents.resize(offset as usize, 0);
            contents.extend(step.params_bytes(rows));
        }
        contents.resize(self.size as usize, 0);
        let buffer = context.scoped("creating a batch's parameter blocks", || {
            use wgpu::util::DeviceExt;
            context
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("model batch parameters"),
                    contents: &contents,
                    usage: wgpu::BufferUsages::COPY_SRC,
                })
        })?;
        if buffers.len() >= KEPT_BATCH_SIZES {
            buffers.clear();
        }
        buffers.insert(batch, buffer.clone());
        Ok(buffer)
    }
}

/// A [`CompiledModel`] bound to a host's own input and output buffers
/// ([`CompiledModel::bind`]): recording it reads and writes them in place.
pub struct ModelBinding {
    model: Arc<CompiledModel>,
    /// The steps that read the input or write the output, prepared over the host's buffers, by
    /// step index; the other steps are the model's.
    rebound: Vec<(usize, PreparedKernel)>,
}

impl ModelBinding {
    /// Records the inference of the first `batch` rows of the bound input into `encoder`: the
    /// one copy that gives every step its parameters for `batch`, then one compute pass that
    /// writes `batch × output_width` values of the bound output. Nothing is copied besides the
    /// parameters, and nothing waits for the GPU or for a run (only the parameter cache's lock
    /// is taken, for a moment): encodes of different batch sizes may share one submission, and
    /// a [`CompiledModel::run`] on another thread changes nothing of what was recorded.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder, batch: usize) -> Result<()> {
        let model = &self.model;
        model.check_batch(batch)?;
        model.context.check_not_lost("recording the model")?;
        let steps = model.steps.iter().enumerate().map(|(index, step)| {
            self.rebound
                .iter()
                .find(|(rebound, _)| *rebound == index)
                .map_or(step, |(_, prepared)| prepared)
        });
        model.record_pass(encoder, steps, batch, None)
    }

    /// The model this binding runs.
    pub fn model(&self) -> &Arc<CompiledModel> {
        &self.model
    }
}

impl std::fmt::Debug for ModelBinding {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ModelBinding")
            .field("model", &self.model)
            .field("rebound_steps", &self.rebound.len())
            .finish()
    }
}

/// The staging buffer a run's input is written into: created mapped, unmapped for the copy,
/// and mapped again (asynchronously) as soon as the run is submitted, so that the next run finds
/// it mapped. Reusing one buffer keeps large uploads at memcpy speed, where `write_buffer` would
/// allocate a staging buffer per call. Guarded by the model's run lock.
struct UploadStaging {
    buffer: wgpu::Buffer,
    /// Where the buffer stands: [`UPLOAD_MAPPED`], [`UPLOAD_UNMAPPED`] (no map asked for, as
    /// after a run whose submission failed) or [`UPLOAD_MAP_PENDING`].
    state: std::sync::atomic::AtomicU8,
    /// The outcome of the pending map, written by its callback.
    map_result: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>,
}

const UPLOAD_MAPPED: u8 = 0;
const UPLOAD_UNMAPPED: u8 = 1;
const UPLOAD_MAP_PENDING: u8 = 2;

impl UploadStaging {
    fn create(context: &GpuContext, size: u64) -> Result<Self> {
        let size = size.max(4).next_multiple_of(4);
        let buffer = context.scoped("creating the model upload buffer", || {
            context.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("model upload"),
                size,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            })
        })?;
        Ok(UploadStaging {
            buffer,
            state: std::sync::atomic::AtomicU8::new(UPLOAD_MAPPED),
            map_result: Arc::new(Mutex::new(None)),
        })
    }

    /// Makes sure the buffer is mapped: normally it already is (the previous run waited for the
    /// GPU, and wgpu ran the map's callback then); a map is requested if none is pending, and
    /// the device is waited on at most twice before that is an error rather than a hang.
    async fn wait_until_mapped(&self, context: &GpuContext) -> Result<()> {
        use std::sync::atomic::Ordering;
        match self.state.load(Ordering::Acquire) {
            UPLOAD_MAPPED => return Ok(()),
            UPLOAD_UNMAPPED => {
                context.scoped("mapping the input staging buffer", || self.request_map())?;
            }
            _ => {}
        }
        for _ in 0..3 {
            let outcome = match self.map_result.lock() {
                Ok(mut result) => result.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            match outcome {
                Some(Ok(())) => {
                    self.state.store(UPLOAD_MAPPED, Ordering::Release);
                    return Ok(());
                }
                Some(Err(error)) => {
                    self.state.store(UPLOAD_UNMAPPED, Ordering::Release);
                    context.check_not_lost("mapping the input staging buffer")?;
                    return Err(Error::Readback {
                        reason: format!("mapping the input staging buffer failed: {error}"),
                    });
                }
                None => context.wait_idle_async().await?,
            }
        }
        context.check_not_lost("mapping the input staging buffer")?;
        Err(Error::Readback {
            reason: "the input staging buffer's map did not complete after the GPU went idle"
                .to_string(),
        })
    }

    /// Writes `input` into the mapped buffer's first `bytes` bytes (zero padding after it) and
    /// unmaps it for the copy.
    fn write(&self, precision: Precision, input: &[f32], bytes: u64) -> Result<()> {
        {
            let mut view = self
                .buffer
                .slice(0..bytes)
                .get_mapped_range_mut()
                .map_err(|error| Error::Gpu {
                    operation: "writing the input into its staging buffer".to_string(),
                    message: error.to_string(),
                })?;
            // Mapped memory is write-only (reading it back may be slow or undefined), so the
            // values are converted a cache-sized chunk at a time and copied in.
            let element = precision.element_bytes() as usize;
            let mut chunk = [0u8; 16 << 10];
            let mut offset = 0;
            for values in input.chunks(chunk.len() / element) {
                let bytes = &mut chunk[..values.len() * element];
                precision.encode_into(values, bytes);
                view.slice(offset..offset + bytes.len())
                    .copy_from_slice(bytes);
                offset += bytes.len();
            }
            view.slice(offset..).fill(0);
        }
        self.buffer.unmap();
        self.state
            .store(UPLOAD_UNMAPPED, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Asks for the buffer to be mapped again once the submitted copy from it is done.
    fn request_map(&self) {
        if let Ok(mut slot) = self.map_result.lock() {
            *slot = None;
        }
        let result = Arc::clone(&self.map_result);
        self.buffer
            .slice(..)
            .map_async(wgpu::MapMode::Write, move |outcome| {
                if let Ok(mut slot) = result.lock() {
                    *slot = Some(outcome);
                }
            });
        self.state
            .store(UPLOAD_MAP_PENDING, std::sync::atomic::Ordering::Release);
    }
}

/// A buffer the host maps to read results back.
fn create_map_read_buffer(context: &GpuContext, label: &str, size: u64) -> Result<wgpu::Buffer> {
    context.scoped(&format!("creating the {label} buffer"), || {
        context.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })
}

impl TimestampQueries {
    /// Two timestamps (the pass's beginning and end) and the buffers to resolve and read them.
    fn create(context: &GpuContext) -> Result<Self> {
        let (query_set, resolve) = context.scoped("creating timestamp queries", || {
            let query_set = context
                .device()
                .create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("model pass timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                });
            let resolve = context.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamp resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (query_set, resolve)
        })?;
        Ok(TimestampQueries {
            query_set,
            resolve,
            readback: create_map_read_buffer(context, "timestamp readback", 16)?,
        })
    }
}

impl std::fmt::Debug for CompiledModel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CompiledModel")
            .field("adapter", &self.context.adapter_info().name)
            .field("max_batch", &self.max_batch)
            .field("input_width", &self.input_width)
            .field("output_width", &self.output_width)
            .field("dispatches_per_run", &self.steps.len())
            .finish()
    }
}
