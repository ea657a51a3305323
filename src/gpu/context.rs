//! The device context: which adapter resgraph runs on, the device and queue it talks to, and the
//! error scopes that turn wgpu's complaints into [`Error`] values.
//!
//! There are two ways in. Headless users call [`GpuContext::new`] with [`AdapterOptions`] and
//! resgraph picks and opens an adapter. Host applications that already own a `wgpu::Device` and
//! `wgpu::Queue` call [`GpuContext::from_device`], and resgraph then uses exactly the features and
//! limits the host created the device with.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::pipelines::PipelineCache;
use crate::gpu::scope;

/// Optional device features resgraph uses when an adapter has them. Requesting them costs
/// nothing when present, and every kernel checks the device's features before relying on one.
pub const ENGINE_OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

/// How to choose an adapter when resgraph creates its own device.
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    /// The backends to search. `WGPU_BACKEND` sets this from the environment.
    pub backends: wgpu::Backends,
    /// A case-insensitive substring of the adapter's name (`--adapter`, `RESGRAPH_ADAPTER`).
    pub name_contains: Option<String>,
    /// Which kind of adapter to prefer when no name is given (`WGPU_POWER_PREF`: `high`, `low`).
    pub power_preference: wgpu::PowerPreference,
    /// Whether to enable wgpu's experimental cooperative-matrix feature (tensor cores) when the
    /// adapter has it, so that the cooperative GEMM can be chosen. On by default;
    /// `RESGRAPH_COOPERATIVE_MATRIX=off` turns it off, for a driver whose implementation
    /// misbehaves. wgpu marks the feature experimental: see [`wgpu::ExperimentalFeatures`].
    pub cooperative_matrix: bool,
    /// Features resgraph must not request even when the adapter has them, e.g. to test the
    /// fallbacks a device without them takes. Empty by default; withholding
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX` has the effect of `cooperative_matrix: false`.
    pub withheld_features: wgpu::Features,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            backends: wgpu::Backends::all(),
            name_contains: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
            cooperative_matrix: true,
            withheld_features: wgpu::Features::empty(),
        }
    }
}

impl AdapterOptions {
    /// Reads `WGPU_BACKEND`, `RESGRAPH_ADAPTER` and `WGPU_POWER_PREF`. Unknown backend names are an
    /// error rather than silently ignored, so that a typo never runs on an unexpected adapter.
    pub fn from_env() -> Result<Self> {
        let mut options = AdapterOptions::default();
        if let Ok(list) = std::env::var("WGPU_BACKEND") {
            options.backends = parse_backends(&list)?;
        }
        if let Ok(name) = std::env::var("RESGRAPH_ADAPTER")
            && !name.trim().is_empty()
        {
            options.name_contains = Some(name);
        }
        // wgpu's own reading ignores a value it does not know; a typo here would silently pick
        // another adapter, so it is an error like the others.
        if let Ok(value) = std::env::var("WGPU_POWER_PREF")
            && !value.trim().is_empty()
        {
            options.power_preference = match value.trim().to_ascii_lowercase().as_str() {
                "high" => wgpu::PowerPreference::HighPerformance,
                "low" => wgpu::PowerPreference::LowPower,
                "none" => wgpu::PowerPreference::None,
                _ => {
                    return Err(Error::InvalidSetting {
                        name: "WGPU_POWER_PREF",
                        value,
                        expected: "high, low or none",
                    });
                }
            };
        }
        if let Ok(value) = std::env::var("RESGRAPH_COOPERATIVE_MATRIX") {
            options.cooperative_matrix = match value.trim().to_ascii_lowercase().as_str() {
                "" | "on" | "1" | "true" => true,
                "off" | "0" | "false" => false,
                _ => {
                    return Err(Error::InvalidSetting {
                        name: "RESGRAPH_COOPERATIVE_MATRIX",
                        value,
                        expected: "on or off",
                    });
                }
            };
        }
        Ok(options)
    }
}

/// Parses a comma-separated backend list such as `vulkan,gl`. Unlike wgpu's own parser it
/// rejects names it does not know.
pub fn parse_backends(list: &str) -> Result<wgpu::Backends> {
    let mut backends = wgpu::Backends::empty();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        backends |= match name.to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "all" => wgpu::Backends::all(),
            _ => {
                return Err(Error::UnknownBackend {
                    name: name.to_string(),
                });
            }
        };
    }
    if backends.is_empty() {
        return Err(Error::UnknownBackend {
            name: list.to_string(),
        });
    }
    Ok(backends)
}

/// Creates a wgpu instance for the given backends, honouring wgpu's other environment variables.
pub fn create_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = backends;
    wgpu::Instance::new(descriptor)
}

/// Every adapter wgpu finds on the given backends.
#[cfg(not(target_arch = "wasm32"))]
pub fn enumerate_adapters(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
) -> Vec<wgpu::Adapter> {
    pollster::block_on(enumerate_adapters_async(instance, backends))
}

/// As [`enumerate_adapters`], awaited. A browser lists no adapters (WebGPU has no such call);
/// it offers the one it chooses when asked, so that one is the list there.
pub async fn enumerate_adapters_async(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
) -> Vec<wgpu::Adapter> {
    let adapters = instance.enumerate_adapters(backends).await;
    if !adapters.is_empty() || !cfg!(target_arch = "wasm32") {
        return adapters;
    }
    let requested = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await;
    requested.into_iter().collect()
}

/// What adapter choice looks at: an adapter's name, backend and device type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterIdentity {
    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The backend it is reached through.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: wgpu::DeviceType,
}

impl From<&wgpu::AdapterInfo> for AdapterIdentity {
    fn from(info: &wgpu::AdapterInfo) -> Self {
        AdapterIdentity {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
        }
    }
}

/// Picks the adapter resgraph would use among `adapters` (in wgpu's order),
/// or says why none fits. A name filter, when given, must match; among the candidates the best
/// device type for the power preference wins, then the backend with the better compute path
/// (Vulkan, Metal and DX12 before GL), then wgpu's own order.
pub fn choose_adapter(adapters: &[AdapterIdentity], options: &AdapterOptions) -> Result<usize> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            backends: format!("{:?}", options.backends),
        });
    }
    let wanted = options
        .name_contains
        .as_ref()
        .map(|name| name.to_lowercase());
    let candidates = adapters
        .iter()
        .enumerate()
        .filter(|(_, info)| match &wanted {
            Some(name) => info.name.to_lowercase().contains(name.as_str()),
            None => true,
        });
    let best = candidates.min_by_key(|(index, info)| {
        (
            device_type_rank(info.device_type, options.power_preference),
            backend_rank(info.backend),
            *index,
        )
    });
    match best {
        Some((index, _)) => Ok(index),
        None => Err(Error::AdapterNotFound {
            requested: options.name_contains.clone().unwrap_or_default(),
            available: adapters
                .iter()
                .map(|info| format!("{} ({})", info.name, info.backend))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn device_type_rank(device_type: wgpu::DeviceType, preference: wgpu::PowerPreference) -> u8 {
    use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu, Other, VirtualGpu};
    match (preference, device_type) {
        (wgpu::PowerPreference::LowPower, IntegratedGpu) => 0,
        (wgpu::PowerPreference::LowPower, DiscreteGpu) => 1,
        (_, DiscreteGpu) => 0,
        (_, IntegratedGpu) => 1,
        (_, VirtualGpu) => 2,
        (_, Cpu) => 3,
        (_, Other) => 4,
    }
}

fn backend_rank(backend: wgpu::Backend) -> u8 {
    match backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

/// The device resgraph runs on, with its queue, what it can do, and the pipelines built for it.
///
/// A context is cheap to share: wrap it in an `Arc` and use it from any thread.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_info: wgpu::AdapterInfo,
    pipelines: PipelineCache,
    /// Errors that escaped every error scope, recorded by the handler installed on devices that
    /// resgraph created itself (a host's device keeps the host's own handler).
    uncaptured_errors: Arc<Mutex<Vec<String>>>,
    /// A small storage buffer bound where a kernel declares an optional input that a dispatch
    /// does not use, so that one pipeline layout serves every epilogue.
    placeholder_storage: wgpu::Buffer,
    /// The adapter's cooperative-matrix configurations, when the device has the feature.
    cooperative_matrix_configs: Vec<wgpu::CooperativeMatrixProperties>,
    /// Why the device was lost, once it is, as its lost callback reported it (on devices that
    /// resgraph created itself; a host's device keeps the host's own callback).
    lost: Arc<Mutex<Option<String>>>,
    /// The thread that polls the device for async runs, started by the first one.
    #[cfg(not(target_arch = "wasm32"))]
    poller: crate::gpu::poller::DevicePoller,
}

impl GpuContext {
    /// Picks an adapter as `options` says and opens a device on it with the adapter's own limits
    /// and every feature in [`ENGINE_OPTIONAL_FEATURES`] that it has.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(options: &AdapterOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    /// As [`GpuContext::new`], awaited: the way in on the web, where nothing may block.
    pub async fn new_async(options: &AdapterOptions) -> Result<Self> {
        let instance = create_instance(options.backends);
        let adapters = enumerate_adapters_async(&instance, options.backends).await;
        if adapters.is_empty() && cfg!(target_arch = "wasm32") {
            return Err(Error::NoBrowserAdapter);
        }
        let identities: Vec<AdapterIdentity> = adapters
            .iter()
            .map(|adapter| AdapterIdentity::from(&adapter.get_info()))
            .collect();
        let index = choose_adapter(&identities, options)?;
        Self::from_adapter_with_options_async(&adapters[index], options).await
    }

    /// Opens a device on `adapter` with the adapter's own limits (not wgpu's conservative
    /// defaults: lavapipe's storage bindings go to 128 MiB, for instance) and every optional
    /// feature resgraph can use. `options.cooperative_matrix` says whether to enable the
    /// experimental cooperative-matrix feature when the adapter has it, and
    /// `options.withheld_features` which features not to request at all (the other fields choose
    /// an adapter and are not used here).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_adapter_with_options(
        adapter: &wgpu::Adapter,
        options: &AdapterOptions,
    ) -> Result<Self> {
        pollster::block_on(Self::from_adapter_with_options_async(adapter, options))
    }

    /// As [`GpuContext::from_adapter_with_options`], awaited.
    pub async fn from_adapter_with_options_async(
        adapter: &wgpu::Adapter,
        options: &AdapterOptions,
    ) -> Result<Self> {
        let info = adapter.get_info();
        let mut required_features =
            adapter.features() & ENGINE_OPTIONAL_FEATURES & !options.withheld_features;
        let cooperative_matrix_configs = if options.cooperative_matrix
            && !options
                .withheld_features
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && adapter
                .features()
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            required_features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            adapter.cooperative_matrix_properties()
        } else {
            Vec::new()
        };
        let experimental_features =
            if !required_features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                wgpu::ExperimentalFeatures::disabled()
            } else {
                // SAFETY: the token only unlocks the EXPERIMENTAL_ features requested above. The one
                // resgraph requests is used by a single kernel, which is validated by naga in the
                // tests, chosen only when the adapter reports the exact tile configuration it uses,
                // and which users can turn off (`AdapterOptions::cooperative_matrix`).
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            };
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("resgraph device"),
            required_features,
            required_limits: adapter.limits(),
            experimental_features,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            adapter
                .request_device(&descriptor)
                .await
                .map_err(|error| Error::RequestDevice {
                    adapter: info.name.clone(),
                    reason: error.to_string(),
                })?;
        let uncaptured_errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&uncaptured_errors);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            if let Ok(mut errors) = sink.lock() {
                errors.push(error.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut lost) = lost_sink.lock() {
                *lost = Some(format!("{reason:?}: {message}"));
            }
        });
        let mut context = Self::assemble(device, queue, info, uncaptured_errors);
        context.cooperative_matrix_configs = cooperative_matrix_configs;
        context.lost = lost;
        Ok(context)
    }

    /// Wraps a device and queue that a host application created. resgraph uses the features and
    /// limits the device was created with, and leaves the host's error handler alone: every
    /// operation resgraph performs runs inside its own error scopes.
    ///
    /// A device handle does not tell which cooperative-matrix tile shapes its adapter has, so
    /// the cooperative GEMM stays off unless the host passes them on with
    /// [`GpuContext::with_cooperative_matrix_configs`].
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        Self::assemble(device, queue, info, Arc::new(Mutex::new(Vec::new())))
    }

    /// Wraps the adapter, device and queue a host application created, together: as
    /// [`Self::from_device`], and the adapter's own information (name, driver, subgroup sizes)
    /// and, where the device was created with `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`, the
    /// adapter's cooperative-matrix tile shapes are read from the adapter the host actually used.
    /// Features and limits are the device's: what the host enabled, not all the adapter offers.
    pub fn from_adapter(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = adapter.get_info();
        let configs = if device
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            adapter.cooperative_matrix_properties()
        } else {
            Vec::new()
        };
        Self::assemble(device, queue, info, Arc::new(Mutex::new(Vec::new())))
            .with_cooperative_matrix_configs(configs)
    }

    /// Tells resgraph which cooperative-matrix configurations the device's adapter has (what
    /// `wgpu::Adapter::cooperative_matrix_properties` returned), for a host device created with
    /// `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`. Ignored when the device lacks the feature.
    pub fn with_cooperative_matrix_configs(
        mut self,
        configs: Vec<wgpu::CooperativeMatrixProperties>,
    ) -> Self {
        if self
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            self.cooperative_matrix_configs = configs;
        }
        self
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: wgpu::AdapterInfo,
        uncaptured_errors: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let placeholder_storage = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resgraph placeholder storage"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        GpuContext {
            device,
            queue,
            adapter_info,
            pipelines: PipelineCache::default(),
            uncaptured_errors,
            placeholder_storage,
            cooperative_matrix_configs: Vec::new(),
            lost: Arc::new(Mutex::new(None)),
            #[cfg(not(target_arch = "wasm32"))]
            poller: Default::default(),
        }
    }

    /// Records one compute pass with `record` into a command buffer of its own and submits it
    /// (without waiting), inside the error scopes of [`GpuContext::scoped`]. `label` names the
    /// encoder and the pass, and says what was being done in an error.
    pub fn submit_pass(
        &self,
        label: &str,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) -> Result<()> {
        self.scoped(label, || {
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: None,
                });
                record(&mut pass);
            }
            self.queue.submit([encoder.finish()]);
        })
    }

    /// The cooperative-matrix (tensor core) tile configurations this context may use: empty
    /// unless the device was created with `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`.
    pub fn cooperative_matrix_configs(&self) -> &[wgpu::CooperativeMatrixProperties] {
        &self.cooperative_matrix_configs
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter this context runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter_info
    }

    /// The limits the device was created with.
    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// The features the device was created with.
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// The bytes the device's memory allocator holds for buffers and textures, where the
    /// backend reports it (Vulkan, Metal, DX12; not GL): what a soak test watches for leaks.
    pub fn device_allocated_bytes(&self) -> Option<u64> {
        self.device
            .generate_allocator_report()
            .map(|report| report.total_allocated_bytes)
    }

    /// The cache of shader modules and pipelines built on this device.
    pub fn pipelines(&self) -> &PipelineCache {
        &self.pipelines
    }

    /// The buffer bound in place of an optional storage input that a dispatch does not read.
    pub(crate) fn placeholder_storage(&self) -> &wgpu::Buffer {
        &self.placeholder_storage
    }

    /// Runs `work` inside validation, out-of-memory and internal error scopes and turns the first
    /// error wgpu reports into [`Error::Gpu`], so that wgpu's default handler never panics on
    /// resgraph's behalf.
    pub fn scoped<T>(&self, operation: &str, work: impl FnOnce() -> T) -> Result<T> {
        self.check_not_lost(operation)?;
        let value = scope::capture(&self.device, operation, work)
            .map_err(|error| self.lost_error(operation).unwrap_or(error))?;
        self.check_escaped(operation)?;
        Ok(value)
    }

    /// As [`Self::scoped`], awaiting the error scopes instead of blocking on them: for async
    /// callers, which pop the scopes where they wait for the result anyway.
    pub async fn scoped_async<T>(&self, operation: &str, work: impl FnOnce() -> T) -> Result<T> {
        self.scoped_future(operation, async { Ok(work()) }).await
    }

    /// As [`Self::scoped_async`] around a whole future, whose awaits happen inside the scopes:
    /// what the web's entry points run in, since [`Self::scoped`] cannot wait for a scope there.
    pub(crate) async fn scoped_future<T>(
        &self,
        operation: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.check_not_lost(operation)?;
        let value = scope::capture_future(&self.device, operation, work)
            .await
            .map_err(|error| self.lost_error(operation).unwrap_or(error))?;
        self.check_escaped(operation)?;
        Ok(value)
    }

    /// An error for what reached the device's uncaptured-error handler meanwhile (from a
    /// context resgraph created), if anything did.
    fn check_escaped(&self, operation: &str) -> Result<()> {
        let escaped: Vec<String> = match self.uncaptured_errors.lock() {
            Ok(mut errors) => errors.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        if !escaped.is_empty() {
            return Err(self.lost_error(operation).unwrap_or_else(|| Error::Gpu {
                operation: operation.to_string(),
                message: escaped.join("; "),
            }));
        }
        Ok(())
    }

    /// [`Error::DeviceLost`], naming `operation`, once the device is lost; `Ok` before. Every
    /// operation of resgraph's checks it first, so that a lost device gives this one error
    /// rather than whichever validation error its first use after the loss happens to raise.
    pub fn check_not_lost(&self, operation: &str) -> Result<()> {
        match self.lost_error(operation) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn lost_error(&self, operation: &str) -> Option<Error> {
        let lost = match self.lost.lock() {
            Ok(lost) => lost.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        lost.map(|reason| Error::DeviceLost {
            operation: operation.to_string(),
            reason,
        })
    }

    /// Waits until the queue has finished all work submitted so far, without blocking a thread
    /// where the platform drives the device itself (the web). On native, the device is polled
    /// here, which runs the callback at once.
    pub async fn wait_idle_async(&self) -> Result<()> {
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        self.queue.on_submitted_work_done(move || {
            // The receiver is gone only if the caller is; nothing is left to tell then.
            let _ = sender.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.wait_idle()?;
        if receiver.receive().await.is_none() {
            self.check_not_lost("waiting for the GPU")?;
            return Err(Error::DeviceWait {
                reason: "the queue's work-done callback was dropped without running".to_string(),
            });
        }
        self.check_not_lost("waiting for the GPU")
    }

    /// Has the context's polling thread poll the device until all work submitted so far is
    /// done, which runs the map callbacks of work submitted before this call; returns at once.
    /// `on_failure` runs instead if the device cannot be polled (it was lost), so that whoever
    /// waits on those callbacks can stop waiting.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn poll_in_background(
        &self,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        self.poller.poll_until_done(&self.device, on_failure)
    }

    /// Blocks until the queue has finished all submitted work.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait_idle(&self) -> Result<()> {
        self.check_not_lost("waiting for the GPU")?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|error| {
                self.lost_error("waiting for the GPU")
                    .unwrap_or_else(|| Error::DeviceWait {
                        reason: error.to_string(),
                    })
            })?;
        self.check_not_lost("waiting for the GPU")
    }
}

/// What `resgraph info` says about one adapter.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// wgpu's description of the adapter.
    pub info: wgpu::AdapterInfo,
    /// Whether the adapter has `SHADER_F16` (f16 storage and arithmetic in WGSL).
    pub shader_f16: bool,
    /// Whether the adapter has `SUBGROUP` operations.
    pub subgroups: bool,
    /// Whether the adapter has `TIMESTAMP_QUERY` (GPU-side timing).
    pub timestamps: bool,
    /// The cooperative-matrix (tensor core) shapes the adapter offers, as `MxNxK ab->cr`.
    pub cooperative_matrix: Vec<String>,
    /// The adapter's limits.
    pub limits: wgpu::Limits,
}

impl AdapterReport {
    /// Reads the report off an adapter.
    pub fn of(adapter: &wgpu::Adapter) -> Self {
        let features = adapter.features();
        let cooperative_matrix =
            if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                adapter
                    .cooperative_matrix_properties()
                    .iter()
                    .map(|shape| {
                        format!(
                            "{}x{}x{} {:?}->{:?}",
                            shape.m_size, shape.n_size, shape.k_size, shape.ab_type, shape.cr_type
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
        AdapterReport {
            info: adapter.get_info(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            cooperative_matrix,
            limits: adapter.limits(),
        }
    }
}
