//! The crate-wide error type.
//!
//! Every fallible public function returns [`Result`]. Variants carry structured fields so that a
//! caller can react to the kind of failure (a missing adapter, a shape that does not fit, a size
//! past a device limit) without parsing messages, and the `Display` text is a full sentence that a
//! command-line user can act on.

/// The crate-wide result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in resgraph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ----- Finding a device -------------------------------------------------------------------
    /// wgpu found no adapter at all for the requested backends.
    #[error(
        "no GPU adapter found for backends {backends}; install a GPU driver, or Mesa's software \
         Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`) for a CPU adapter"
    )]
    NoAdapter {
        /// The backends that were searched, as wgpu prints them.
        backends: String,
    },

    /// A browser offered no WebGPU adapter (resgraph built for the web).
    #[error(
        "the browser offers no WebGPU adapter: WebGPU is switched off or not supported here \
         (Chrome and Edge have it; headless Chromium needs --enable-unsafe-webgpu)"
    )]
    NoBrowserAdapter,

    /// Adapters exist, but none matched the name the user asked for.
    #[error("no GPU adapter matches {requested:?}; available adapters: {available}")]
    AdapterNotFound {
        /// The name substring the user gave (`--adapter` or `RESGRAPH_ADAPTER`).
        requested: String,
        /// The adapters that were found, one `name (backend)` per entry.
        available: String,
    },

    /// A backend name in `WGPU_BACKEND` or on the command line was not recognised.
    #[error("unknown backend {name:?}; expected one of vulkan, metal, dx12, gl")]
    UnknownBackend {
        /// The name as the user spelled it.
        name: String,
    },

    /// The adapter refused to create a device.
    #[error("the adapter {adapter:?} could not create a device: {reason}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's explanation.
        reason: String,
    },

    /// An environment setting had a value resgraph does not understand.
    #[error("{name}={value:?} is not understood; expected {expected}")]
    InvalidSetting {
        /// The variable, e.g. `RESGRAPH_COOPERATIVE_MATRIX`.
        name: &'static str,
        /// The value as the user gave it.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    // ----- Shapes and sizes -------------------------------------------------------------------
    /// A dimension that must be at least one was zero.
    #[error("{what} has a zero-sized dimension {dimension}; every dimension must be at least 1")]
    ZeroSized {
        /// What was being built or run, e.g. `gemm input`.
        what: String,
        /// Which dimension was zero, e.g. `rows`.
        dimension: &'static str,
    },

    /// Two shapes that must agree did not.
    #[error("shape mismatch in {what}: expected {expected}, got {actual}")]
    ShapeMismatch {
        /// What was being built or run.
        what: String,
        /// The shape or length that was required.
        expected: String,
        /// The shape or length that was given.
        actual: String,
    },

    /// A kernel's output buffer is also one of its inputs: the kernel reads values it has
    /// already overwritten, so the launch path refuses it.
    #[error(
        "{what}: the output must be a buffer distinct from every input, but it is the {operand}"
    )]
    AliasedOutput {
        /// The dispatch, e.g. `gemm operands`.
        what: String,
        /// Which input it aliases, e.g. `input` or `residual`.
        operand: &'static str,
    },

    /// Matrices that one kernel reads and writes are stored in different precisions.
    #[error("{what}: every matrix must be stored in {expected}, but the {operand} is {actual}")]
    PrecisionMismatch {
        /// The dispatch, e.g. `gemm operands`.
        what: String,
        /// Which operand differs.
        operand: &'static str,
        /// The precision of the weights (or first operand), which the others must share.
        expected: crate::precision::Precision,
        /// The precision of the operand that differs.
        actual: crate::precision::Precision,
    },

    /// A buffer given by a host application lacks a usage or size the operation needs.
    #[error("{what}: expected {expected}, got {actual}")]
    BufferUsage {
        /// The buffer's role, e.g. `encoded model input`.
        what: String,
        /// What was needed, e.g. `a COPY_SRC buffer of at least 64 bytes`.
        expected: String,
        /// What the buffer has.
        actual: String,
    },

    /// A kernel cannot serve a shape that is otherwise valid (a hidden layer wider than the
    /// whole-block kernel keeps on chip, a dimension past the shaders' 32-bit indices).
    #[error("the {kernel} kernel cannot serve {what}: {reason}")]
    UnsupportedShape {
        /// The kernel, e.g. `residual_block`.
        kernel: &'static str,
        /// The shape, e.g. `a block of width 64 with a hidden layer of 600`.
        what: String,
        /// Why not.
        reason: String,
    },

    /// A graph node's operands do not fit together.
    #[error("node {node:?}: expected {expected}, got {actual}")]
    GraphShape {
        /// The node's name.
        node: String,
        /// What its inputs required.
        expected: String,
        /// What it was given.
        actual: String,
    },

    /// A graph is malformed in a way other than a shape (no input, a foreign node id).
    #[error("invalid graph at node {node:?}: {reason}")]
    InvalidGraph {
        /// The node's name.
        node: String,
        /// What is wrong.
        reason: String,
    },

    /// A run's input does not fit the compiled model.
    #[error("input of {len} values does not fit {what}: {reason}")]
    BadInput {
        /// The model, e.g. `a model compiled for batch 1..=64 of width 512`.
        what: String,
        /// The number of values given.
        len: usize,
        /// Why it does not fit.
        reason: String,
    },

    /// A buffer would exceed one of the device's limits.
    #[error(
        "{what} needs {requested} bytes, past the device limit {limit_name} = {limit} bytes \
         on adapter {adapter:?}"
    )]
    BufferTooLarge {
        /// The buffer's role, e.g. `weights of a 1024x40000 linear layer`.
        what: String,
        /// The bytes it would need.
        requested: u64,
        /// The wgpu limit it exceeds.
        limit_name: &'static str,
        /// The limit's value on this device.
        limit: u64,
        /// The adapter's name.
        adapter: String,
    },

    /// Something would need more host memory than the system has available.
    #[error("{what}: {requested} bytes of host memory needed, more than the {available} available")]
    HostMemory {
        /// What would be allocated, e.g. `the weights of a residual MLP of width 100000`.
        what: String,
        /// The bytes it would need.
        requested: u64,
        /// The bytes the system reports available.
        available: u64,
    },

    /// The GPU device was lost (destroyed, reset, or its driver gone): nothing more can run on
    /// it. A new `GpuContext` (and a new compile) is needed.
    #[error("the GPU device was lost ({reason}); {operation} cannot run; create a new context")]
    DeviceLost {
        /// What was being done.
        operation: String,
        /// The reason the device's lost callback gave.
        reason: String,
    },

    /// A dispatch would need more workgroups than the device allows in one dimension.
    #[error(
        "{what} needs {requested} workgroups in one dimension, past the device limit \
         max_compute_workgroups_per_dimension = {limit}"
    )]
    DispatchTooLarge {
        /// What was being dispatched.
        what: String,
        /// The workgroup count it would need.
        requested: u64,
        /// The device's limit.
        limit: u32,
    },

    /// A kernel needs more of a device resource (workgroup memory, invocations per workgroup)
    /// than the device allows.
    #[error(
        "{what} needs {limit} of at least {requested}, but adapter {adapter:?} allows {available}"
    )]
    DeviceLimit {
        /// What needed it, e.g. `the tiled gemm 16x16x8x8/k32`.
        what: String,
        /// The wgpu limit's name, e.g. `max_compute_workgroup_storage_size`.
        limit: &'static str,
        /// What the kernel needs.
        requested: u64,
        /// What the device allows.
        available: u64,
        /// The adapter's name.
        adapter: String,
    },

    /// The engine needs a device feature that this device was not created with.
    #[error("{what} needs the device feature {feature}, which adapter {adapter:?} does not have")]
    MissingFeature {
        /// What needed it.
        what: String,
        /// The wgpu feature's name.
        feature: &'static str,
        /// The adapter's name.
        adapter: String,
    },

    // ----- Model and data files ---------------------------------------------------------------
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A model file is malformed or describes something resgraph cannot build.
    #[error("{path}: {reason}")]
    Model {
        /// The file (or `<memory>` for bytes given directly).
        path: String,
        /// What is wrong, and where in the file.
        reason: String,
    },

    /// An ONNX node uses an operator resgraph does not import.
    #[error("{path}: unsupported ONNX operator {op:?} at node {node:?}")]
    UnsupportedOp {
        /// The file.
        path: String,
        /// The operator type, e.g. `Conv`.
        op: String,
        /// The node's name (or its first output when it has no name).
        node: String,
    },

    /// An image file could not be decoded, or is not one a model can take.
    #[error("{path}: {reason}")]
    Image {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// An `.npy` file is malformed or holds something other than what was asked for.
    #[error("{path}: {reason}")]
    Npy {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },

    // ----- Running on the device --------------------------------------------------------------
    /// wgpu reported a validation, out-of-memory or internal error inside one of our error scopes.
    #[error("the GPU rejected {operation}: {message}")]
    Gpu {
        /// What resgraph was doing, e.g. `creating the gemm pipeline`.
        operation: String,
        /// wgpu's message, with its source chain.
        message: String,
    },

    /// Mapping a buffer for readback failed, or the device was lost while waiting.
    #[error("reading results back from the GPU failed: {reason}")]
    Readback {
        /// What went wrong.
        reason: String,
    },

    /// `--check` found the GPU's answer too far from the f64 reference.
    #[error("check failed: max relative error {max_rel_err:.3e} exceeds {tolerance:.0e}")]
    CheckFailed {
        /// The largest per-row relative error.
        max_rel_err: f64,
        /// The tolerance it had to meet.
        tolerance: f64,
    },

    /// The device did not finish its work.
    #[error("waiting for the GPU failed: {reason}")]
    DeviceWait {
        /// wgpu's explanation.
        reason: String,
    },
}

impl Error {
    /// Builds a [`Error::ZeroSized`] error.
    pub(crate) fn zero_sized(what: impl Into<String>, dimension: &'static str) -> Self {
        Error::ZeroSized {
            what: what.into(),
            dimension,
        }
    }

    /// Builds a [`Error::ShapeMismatch`] error.
    pub(crate) fn shape_mismatch(
        what: impl Into<String>,
        expected: impl ToString,
        actual: impl ToString,
    ) -> Self {
        Error::ShapeMismatch {
            what: what.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}
