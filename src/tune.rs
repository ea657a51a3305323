//! Kernel choice by measurement, per adapter and layer shape, cached on disk.
//!
//! For each distinct layer shape of a model (rows, out, in, precision) the tuner times every
//! kernel the device can run it with (the tiled GEMM variants, the cooperative-matrix one where
//! the adapter has it, and the texture GEMV for small batches) and keeps the fastest; for each
//! residual block shape it times the whole-block kernel against the two layers' chosen kernels
//! ([`choose_block`]). A candidate is kept only if its result on the tuning data agrees with the
//! reference's (the portable GEMM, or the two dispatches): one that fails or disagrees is left
//! out and reported. Candidates are timed with the GPU's timestamp queries where the device has
//! them, and with the host's wall clock otherwise ([`TuningClock`]).
//!
//! Choices are stored in a JSON file in the platform's cache directory (`RESGRAPH_CACHE_DIR`
//! overrides it), keyed by a [`TuningKey`]: adapter, driver, backend, precision, shape, the
//! candidates offered and a checksum of their generated WGSL, so the second compile on the same
//! machine measures nothing, and a kernel edit makes the next compile measure again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use web_time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::epilogue::Activation;
use crate::error::Result;
use crate::gpu::buffers::{DeviceMatrix, map_and_read_bytes};
use crate::gpu::context::GpuContext;
use crate::kernels::PreparedKernel;
use crate::kernels::gemm::{
    GemmOperands, GemmVariant, LinearWeights, SMALL_BATCH_MAX_ROWS, TiledGemmConfig, prepare_gemm,
};
use crate::kernels::gemv::{self, GemvOperands, TextureWeights, prepare_gemv};
use crate::kernels::residual_block::{self, ResidualBlockOperands, prepare_residual_block};
use crate::kernels::source::{KernelSource, checksum, generate};
use crate::precision::Precision;

/// Batches up to this size also try the texture GEMV (above it the GEMV is never competitive
/// and would only lengthen tuning).
const GEMV_CANDIDATE_MAX_ROWS: usize = 64;
/// Timed runs per candidate, after one untimed run.
const TIMED_RUNS: usize = 3;
/// How long the tuner may search the tiled GEMM family for one layer shape unless told
/// otherwise ([`LayerCandidates::tiled_search`]). The search stops at the first point timed
/// after the budget is spent, so a shape takes at most this plus one point.
pub const DEFAULT_TILED_SEARCH: Duration = Duration::from_secs(3);
/// The family is given up for a shape once this many of its points were timed and the fastest
/// of them is still more than [`TILED_OUTCLASSED_FACTOR`] times slower than the fastest other
/// kernel: on CPU adapters, where barriers are expensive, every point is.
const TILED_PROBE_POINTS: usize = 4;
/// See [`TILED_PROBE_POINTS`].
const TILED_OUTCLASSED_FACTOR: u32 = 2;
/// The version of the cache file's format that this resgraph reads and writes. A file of any
/// other version (1 was a map from `|`-joined key strings) is treated as empty and rewritten.
const CACHE_FORMAT_VERSION: u64 = 2;

/// The kernel one layer runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelChoice {
    /// A tiled GEMM variant on the blocked buffer layout.
    Gemm(GemmVariant),
    /// The texture GEMV.
    GemvTexture,
}

impl KernelChoice {
    /// The shader's name, as stored in the cache and reported by `bench`.
    pub fn name(self) -> &'static str {
        self.kernel().name
    }

    /// The shader this choice runs, whose generated WGSL the cache key's checksum covers.
    pub fn kernel(self) -> &'static KernelSource {
        match self {
            KernelChoice::Gemm(variant) => variant.kernel(),
            KernelChoice::GemvTexture => &gemv::GEMV_TEXTURE_KERNEL,
        }
    }

    /// The shader this choice runs on `context`'s device: [`Self::kernel`], but for the texture
    /// GEMV the variant the device runs (see [`gemv::GemvVariant::for_device`]).
    pub fn kernel_on(self, context: &GpuContext) -> &'static KernelSource {
        match self {
            KernelChoice::GemvTexture => gemv::GemvVariant::for_device(context)
                .map_or(self.kernel(), gemv::GemvVariant::kernel),
            KernelChoice::Gemm(_) => self.kernel(),
        }
    }

    /// The choice as the cache stores it and `tune` reports it: the shader's name, with the
    /// point for the tiled GEMM family (see [`GemmVariant::label`]).
    pub fn label(self) -> String {
        match self {
            KernelChoice::Gemm(variant) => variant.label(),
            KernelChoice::GemvTexture => self.name().to_string(),
        }
    }

    /// The choice a [`Self::label`] names.
    pub fn from_label(label: &str) -> Option<Self> {
        if label == gemv::GEMV_TEXTURE_KERNEL.name {
            return Some(KernelChoice::GemvTexture);
        }
        GemmVariant::from_label(label).map(KernelChoice::Gemm)
    }

    /// Whether `context` can run this kernel for `rows` of an `out` × `inp` layer stored in
    /// `precision`.
    pub fn supported(
        self,
        context: &GpuContext,
        precision: Precision,
        (rows, out, inp): (usize, usize, usize),
    ) -> bool {
        match self {
            KernelChoice::Gemm(variant) => {
                variant.supported_by(context, precision)
                    && variant.fits(context, precision, rows, out)
            }
            KernelChoice::GemvTexture => {
                gemv::supported_by(context) && TextureWeights::fits(context, out, inp)
            }
        }
    }
}

/// What a cached choice was measured for. Two keys are equal exactly when a choice made for
/// one is valid for the other: the same adapter and driver, backend, precision and shape, and
/// the same candidates with the same generated WGSL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TuningKey {
    /// The adapter's name, as wgpu reports it.
    pub adapter: String,
    /// The driver's name.
    pub driver: String,
    /// The driver's version and other details, as wgpu reports them: a driver update can change
    /// which kernel is fastest.
    pub driver_info: String,
    /// The backend (Vulkan, Metal, DX12, GL).
    pub backend: String,
    /// The storage precision, `f32` or `f16`.
    pub precision: String,
    /// The layer or residual block that was measured.
    pub shape: TunedShape,
    /// The names of the candidates offered, in the order they are timed. A choice made without
    /// a kernel (the cooperative one turned off, or an older resgraph) must not stop that kernel
    /// from being timed later, so the set is part of the key.
    pub candidates: Vec<String>,
    /// A checksum ([`crate::kernels::source::checksum`]) over each candidate's name and the
    /// generated WGSL of every kernel it runs, so that a choice is measured again after a
    /// kernel's source changes.
    #[serde(with = "hex_checksum")]
    pub candidate_checksum: u64,
}

impl TuningKey {
    /// The key of `shape` on `context`'s adapter, for `candidates`: each candidate's name and
    /// the kernels it runs.
    fn new(
        context: &GpuContext,
        precision: Precision,
        shape: TunedShape,
        candidates: &[(String, Vec<&KernelSource>)],
    ) -> Self {
        let info = context.adapter_info();
        TuningKey {
            adapter: info.name.clone(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            backend: info.backend.to_string(),
            precision: precision.name().to_string(),
            shape,
            candidates: candidates.iter().map(|(name, _)| name.clone()).collect(),
            candidate_checksum: candidate_checksum(candidates, precision),
        }
    }
}

impl fmt::Display for TuningKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Some backends leave the driver's name empty (GL), so only what is known is shown.
        let driver: Vec<&str> = [self.driver.as_str(), self.driver_info.as_str()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect();
        write!(
            formatter,
            "{} | {} | {} | {} | {} | {} (WGSL checksum {:016x})",
            self.adapter,
            driver.join(" "),
            self.backend,
            self.precision,
            self.shape,
            self.candidates.join("+"),
            self.candidate_checksum
        )
    }
}

/// A checksum stored as a 16-digit hex string: JSON numbers above 2^53 lose digits in readers
/// that parse them as doubles (Python's and JavaScript's among them).
mod hex_checksum {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(checksum: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{checksum:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        u64::from_str_radix(&text, 16).map_err(D::Error::custom)
    }
}

/// The shape a [`TuningKey`] was measured for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TunedShape {
    /// One layer: `rows` of an `out_features` × `in_features` weight matrix.
    Layer {
        /// The rows (batch size) the layer runs for.
        rows: usize,
        /// The layer's output features.
        out_features: usize,
        /// The layer's input features.
        in_features: usize,
    },
    /// A residual block of `width` with a `hidden` layer, run for `rows` rows, whose two layers
    /// would otherwise run with the kernels named.
    Block {
        /// The rows (batch size) the block runs for.
        rows: usize,
        /// The block's input and output features.
        width: usize,
        /// The features of the block's hidden layer.
        hidden: usize,
        /// The kernel the first layer (`width` → `hidden`) runs with as its own dispatch.
        first_layer: String,
        /// The kernel the second layer (`hidden` → `width`) runs with as its own dispatch.
        second_layer: String,
    },
}

impl fmt::Display for TunedShape {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunedShape::Layer {
                rows,
                out_features: out,
                in_features: inp,
            } => {
                write!(formatter, "layer rows={rows} out={out} in={inp}")
            }
            TunedShape::Block {
                rows,
                width,
                hidden,
                first_layer,
                second_layer,
            } => write!(
                formatter,
                "block rows={rows} width={width} hidden={hidden} ({first_layer} then {second_layer})"
            ),
        }
    }
}

/// The checksum of a candidate set: each candidate's name and, for every kernel it runs, the
/// kernel's name and the checksum of its WGSL as generated for `precision`. The generated
/// source, not the kernel's file alone, is what the device compiles, so an edit to a shared
/// piece or to the generator changes it too.
fn candidate_checksum(candidates: &[(String, Vec<&KernelSource>)], precision: Precision) -> u64 {
    let mut description = String::new();
    for (name, kernels) in candidates {
        description.push_str(name);
        description.push('\n');
        for kernel in kernels {
            let source = generate(kernel, precision);
            description.push_str(&format!("  {} {:016x}\n", kernel.name, checksum(&source)));
        }
    }
    checksum(&description)
}

/// Which clock timed the candidates of one choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TuningClock {
    /// The GPU's timestamps at the beginning and end of each candidate's compute pass (the
    /// device has `TIMESTAMP_QUERY`, and every reading was plausible): the kernel's own time,
    /// without the submission and the wait.
    GpuTimestamps,
    /// The host's wall clock around submitting each candidate's pass and waiting for it: where
    /// the device has no timestamp queries, or where a reading was zero or implausible.
    WallClock,
}

impl fmt::Display for TuningClock {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            TuningClock::GpuTimestamps => "GPU timestamps",
            TuningClock::WallClock => "wall clock",
        })
    }
}

/// One layer shape's entry: the choice and, when it was measured now, each candidate's time.
#[derive(Clone, Debug)]
pub struct ShapeChoice {
    /// The cache key (adapter, driver, backend, precision, rows, out, in, the candidates).
    pub key: TuningKey,
    /// The kernel chosen.
    pub choice: KernelChoice,
    /// The clock the candidates were timed with, in this compile or when the cached choice was
    /// measured.
    pub clock: TuningClock,
    /// Median time of each candidate, when measured in this compile (empty when from cache).
    pub measured: Vec<(KernelChoice, Duration)>,
    /// Candidates left out when measured now, and why: one that failed to build or run, or
    /// whose result disagreed with the portable GEMM's.
    pub rejected: Vec<(KernelChoice, String)>,
    /// How the search of the tiled GEMM family went, when it was searched now.
    pub tiled_search: Option<TiledSearch>,
}

/// What the search of the tiled GEMM family did for one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TiledSearch {
    /// Points timed (those rejected included).
    pub timed: usize,
    /// Points the device could run, in the order they were offered.
    pub points: usize,
    /// Time the search took, building pipelines included.
    pub elapsed: Duration,
    /// Why it stopped.
    pub stopped: SearchStop,
}

/// Why a search of the tiled GEMM family stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchStop {
    /// Every point was timed.
    Exhausted,
    /// The time budget was spent.
    Budget,
    /// Its first 4 points were all more than twice as slow as the fastest other kernel.
    Outclassed,
}

impl fmt::Display for TiledSearch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.stopped {
            SearchStop::Exhausted => "all of them",
            SearchStop::Budget => "the time budget was spent",
            SearchStop::Outclassed => {
                "stopped: its first points were all more than twice as slow as another kernel"
            }
        };
        write!(
            formatter,
            "tiled family: {} of {} points timed in {:.2} s ({why})",
            self.timed,
            self.points,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Which kernels a caller lets the tuner consider for a layer, besides the tiled GEMM variants
/// (which are always candidates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerCandidates {
    /// Whether the texture GEMV may be timed (for batches of at most 64 rows); `false` where
    /// the caller asked to keep every layer on the tiled GEMM's buffer layout.
    pub texture_gemv: bool,
    /// How long the points of the tiled GEMM family may be searched per shape; zero leaves the
    /// family out.
    pub tiled_search: Duration,
}

impl LayerCandidates {
    /// Every kernel the device supports, the tiled family searched for
    /// [`DEFAULT_TILED_SEARCH`].
    pub const ALL: LayerCandidates = LayerCandidates {
        texture_gemv: true,
        tiled_search: DEFAULT_TILED_SEARCH,
    };
}

/// The kernels the tuner times for `rows` of an `out` × `inp` layer on `context` among
/// `allowed`, the portable GEMM first (it is the reference the others' results are checked
/// against).
pub fn candidates(
    context: &GpuContext,
    precision: Precision,
    (rows, out, inp): (usize, usize, usize),
    allowed: LayerCandidates,
) -> Vec<KernelChoice> {
    let mut candidates: Vec<KernelChoice> = GemmVariant::ALL
        .into_iter()
        .filter(|&variant| variant != GemmVariant::SmallBatch || rows <= SMALL_BATCH_MAX_ROWS)
        // The tiled family is searched point by point (`tiled_candidates`).
        .filter(|variant| !matches!(variant, GemmVariant::Tiled(_)))
        .map(KernelChoice::Gemm)
        .collect();
    if allowed.texture_gemv && rows <= GEMV_CANDIDATE_MAX_ROWS {
        candidates.push(KernelChoice::GemvTexture);
    }
    candidates.retain(|candidate| candidate.supported(context, precision, (rows, out, inp)));
    candidates
}

/// The points of the tiled GEMM family the tuner may time for `rows` of an `out` × `inp` layer,
/// in the order it times them (none when `allowed` gives the family no time): those the device
/// can run, most promising first ([`TiledGemmConfig::search_order`]).
pub fn tiled_candidates(
    context: &GpuContext,
    precision: Precision,
    (rows, out, inp): (usize, usize, usize),
    allowed: LayerCandidates,
) -> Vec<TiledGemmConfig> {
    if allowed.tiled_search.is_zero() {
        return Vec::new();
    }
    TiledGemmConfig::search_order(rows, out)
        .into_iter()
        .filter(|&config| {
            KernelChoice::Gemm(GemmVariant::Tiled(config)).supported(
                context,
                precision,
                (rows, out, inp),
            )
        })
        .collect()
}

/// The candidates a layer's key names, each with the kernels it runs: the fixed candidates by
/// label, and the tiled family as one entry naming its size, its search budget and a checksum
/// of its points in search order (the order decides which points a budget reaches).
fn offered_candidates(
    context: &GpuContext,
    precision: Precision,
    shape: (usize, usize, usize),
    allowed: LayerCandidates,
) -> Vec<(String, Vec<&'static KernelSource>)> {
    let mut offered: Vec<(String, Vec<&'static KernelSource>)> =
        candidates(context, precision, shape, allowed)
            .into_iter()
            .map(|candidate| (candidate.label(), vec![candidate.kernel_on(context)]))
            .collect();
    let family = tiled_candidates(context, precision, shape, allowed);
    if !family.is_empty() {
        let points: Vec<String> = family.iter().map(|config| config.label()).collect();
        offered.push((
            format!(
                "{}[{} points, {} ms, order {:08x}]",
                crate::kernels::gemm::GEMM_TILED_KERNEL.name,
                family.len(),
                allowed.tiled_search.as_millis(),
                checksum(&points.join(",")) as u32
            ),
            vec![&crate::kernels::gemm::GEMM_TILED_KERNEL],
        ));
    }
    offered
}

/// Checks a candidate's result on the tuning data against the reference kernel's: finite, and
/// within the precision's tolerance. An experimental kernel that a driver miscompiles is thereby
/// never chosen, however fast.
pub(crate) fn check_candidate_output(
    output: &[f32],
    reference: &[f32],
    precision: Precision,
) -> std::result::Result<(), String> {
    if output.len() != reference.len() {
        return Err(format!(
            "{} outputs, the reference has {}",
            output.len(),
            reference.len()
        ));
    }
    if let Some(index) = output.iter().position(|value| !value.is_finite()) {
        return Err(format!("output[{index}] = {} is not finite", output[index]));
    }
    let tolerance = precision.tolerance();
    let reference_f64: Vec<f64> = reference.iter().map(|&value| f64::from(value)).collect();
    let error = crate::reference::relative_error(output, &reference_f64);
    // A NaN error (from a non-finite reference) fails too.
    if error.is_nan() || error > tolerance {
        return Err(format!(
            "relative error {error:.1e} against the reference kernel's result (tolerance {tolerance:.0e})"
        ));
    }
    // The L2 error of a whole matrix hides a few wrong elements (an unwritten column, say), so
    // every element must also be close, relative to the largest reference value.
    let largest = reference
        .iter()
        .fold(0.0f32, |max, value| max.max(value.abs()));
    let worst = output
        .iter()
        .zip(reference)
        .map(|(value, expected)| (value - expected).abs())
        .fold(0.0f32, f32::max);
    let allowed = 10.0 * tolerance * f64::from(largest);
    if worst.is_nan() || f64::from(worst) > allowed {
        return Err(format!(
            "an element is off by {worst:.2e}, with the largest reference value {largest:.2e}"
        ));
    }
    Ok(())
}

/// What tuning did for one compile.
#[derive(Clone, Debug, Default)]
pub struct TuningReport {
    /// Shapes measured now.
    pub measured: usize,
    /// Shapes whose choice came from the cache.
    pub cached: usize,
    /// The cache file, when there is one.
    pub cache_path: Option<PathBuf>,
    /// Why what was measured could not be saved to the cache file (a read-only folder, a path
    /// that is not a file): the compile goes on with its choices, which are measured again
    /// next time.
    pub save_error: Option<String>,
    /// Every shape's choice.
    pub shapes: Vec<ShapeChoice>,
    /// Every residual block's form (whole-block kernel or two dispatches), when measured.
    pub blocks: Vec<BlockChoice>,
}

impl TuningReport {
    /// Counts one shape's choice: measured now, or taken from the cache.
    pub(crate) fn count(&mut self, measured_now: bool) {
        if measured_now {
            self.measured += 1;
        } else {
            self.cached += 1;
        }
    }
}

/// How a residual block runs: the whole-block kernel, or its two layers' own kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockForm {
    /// One dispatch of `shaders/residual_block.wgsl`.
    WholeBlock,
    /// Two dispatches, each layer with its own chosen kernel.
    TwoDispatches,
}

impl BlockForm {
    /// The name stored in the cache and reported by `tune`.
    pub fn name(self) -> &'static str {
        match self {
            BlockForm::WholeBlock => residual_block::RESIDUAL_BLOCK_KERNEL.name,
            BlockForm::TwoDispatches => "two_dispatches",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [BlockForm::WholeBlock, BlockForm::TwoDispatches]
            .into_iter()
            .find(|form| form.name() == name)
    }
}

/// One residual block shape's entry: the form chosen and, when measured now, both times.
#[derive(Clone, Debug)]
pub struct BlockChoice {
    /// The cache key (adapter, precision, rows, width, hidden and the two layers' kernels).
    pub key: TuningKey,
    /// The form chosen.
    pub form: BlockForm,
    /// The clock both forms were timed with, in this compile or when the cached choice was
    /// measured.
    pub clock: TuningClock,
    /// Median time of each form, when measured in this compile (empty when from cache).
    pub measured: Vec<(BlockForm, Duration)>,
    /// Why the whole-block kernel was left out when measured now, if it was: it failed to build
    /// or run, or its result disagreed with the two dispatches'.
    pub rejected: Option<String>,
}

/// What the cache holds for one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CachedChoice {
    /// The name of the kernel or block form chosen.
    kernel: String,
    /// The clock the candidates were timed with.
    clock: TuningClock,
    /// Each candidate's median time in milliseconds, by name, for whoever reads the file.
    median_ms: BTreeMap<String, f64>,
}

/// One entry of the cache file.
#[derive(Serialize, Deserialize)]
struct CacheFileEntry {
    key: TuningKey,
    #[serde(flatten)]
    choice: CachedChoice,
}

/// The cache file: `{"version": 2, "entries": [{"key": {...}, "kernel": ..., ...}]}`.
#[derive(Serialize)]
struct CacheFile {
    version: u64,
    entries: Vec<CacheFileEntry>,
}

/// The on-disk cache of choices.
#[derive(Debug)]
pub struct TuningCache {
    path: Option<PathBuf>,
    entries: BTreeMap<TuningKey, CachedChoice>,
    /// Entries measured by this process, merged into the file's latest contents on save.
    added: BTreeMap<TuningKey, CachedChoice>,
}

impl TuningCache {
    /// The default cache file: `$RESGRAPH_CACHE_DIR/tuning.json`, else
    /// `<platform cache dir>/resgraph/tuning.json`; `None` where neither exists.
    /// An empty `RESGRAPH_CACHE_DIR` counts as unset, as an empty `XDG_CACHE_HOME` does (it would
    /// otherwise put the cache in the current folder).
    /// On the web there is no file system: `None`, and the cache lives in the page's memory
    /// (see [`TuningCache::open`]).
    pub fn default_path() -> Option<PathBuf> {
        match std::env::var_os("RESGRAPH_CACHE_DIR") {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir).join("tuning.json")),
            #[cfg(not(target_arch = "wasm32"))]
            _ => dirs::cache_dir().map(|dir| dir.join("resgraph").join("tuning.json")),
            #[cfg(target_arch = "wasm32")]
            _ => None,
        }
    }

    /// Reads the cache at `path`. A missing, unreadable or damaged file, or one of another
    /// format version, is an empty cache (it is rewritten whole on the next save), never an
    /// error; an entry that cannot be read is skipped.
    ///
    /// Without a path, the cache starts empty on native; on the web it starts from what this
    /// page measured so far (or loaded with [`TuningCache::load_session`]), and
    /// [`TuningCache::save`] adds to that.
    pub fn open(path: Option<PathBuf>) -> Self {
        let entries = match path.as_deref() {
            Some(path) => read_entries(path),
            #[cfg(target_arch = "wasm32")]
            None => SESSION_ENTRIES.with(|session| session.borrow().clone()),
            #[cfg(not(target_arch = "wasm32"))]
            None => BTreeMap::new(),
        };
        TuningCache {
            path,
            entries,
            added: BTreeMap::new(),
        }
    }

    /// The cached choice for `key`, if any.
    pub fn get(&self, key: &TuningKey) -> Option<KernelChoice> {
        self.entries
            .get(key)
            .and_then(|cached| KernelChoice::from_label(&cached.kernel))
    }

    /// Records `choice` for `key`, timed with `clock`, with every candidate's median time, by
    /// name.
    fn insert<'a>(
        &mut self,
        key: &TuningKey,
        choice: &str,
        clock: TuningClock,
        measured: impl Iterator<Item = (&'a str, Duration)>,
    ) {
        let entry = CachedChoice {
            kernel: choice.to_string(),
            clock,
            median_ms: measured
                .map(|(candidate, time)| (candidate.to_string(), time.as_secs_f64() * 1e3))
                .collect(),
        };
        self.entries.insert(key.clone(), entry.clone());
        self.added.insert(key.clone(), entry);
    }

    /// Writes what this process measured into the cache file (atomically). Under an advisory
    /// lock on `tuning.json.lock` beside it, the file is read again and the new entries merged
    /// into it, so that resgraph processes tuning at the same time keep each other's entries.
    ///
    /// Without a path, nothing is written on native; on the web the entries join the page's
    /// session (see [`TuningCache::open`]). A path on the web, which has no files, is an error.
    pub fn save(&mut self) -> Result<()> {
        if self.added.is_empty() {
            return Ok(());
        }
        let Some(path) = self.path.clone() else {
            #[cfg(target_arch = "wasm32")]
            SESSION_ENTRIES.with(|session| session.borrow_mut().append(&mut self.added));
            return Ok(());
        };
        self.save_to_file(&path)
    }

    #[cfg(target_arch = "wasm32")]
    fn save_to_file(&mut self, path: &Path) -> Result<()> {
        Err(crate::Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a browser has no file system; leave the tuning cache's path unset",
            ),
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn save_to_file(&mut self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        let io_error = |path: &Path, source| crate::Error::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(folder) = path
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
        {
            if folder.exists() && !folder.is_dir() {
                return Err(io_error(
                    folder,
                    std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        "the tuning cache's folder is a file, not a folder",
                    ),
                ));
            }
            std::fs::create_dir_all(folder).map_err(|source| io_error(folder, source))?;
        }
        let lock_path = path.with_extension("json.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| io_error(&lock_path, source))?;
        // Released when `lock` is dropped, after the write.
        lock.lock().map_err(|source| io_error(&lock_path, source))?;
        let mut latest = read_entries(&path);
        latest.extend(std::mem::take(&mut self.added));
        self.entries = latest;
        let text = self.to_json();
        crate::model::write_file_atomically(&path, text.as_bytes())?;
        drop(lock);
        Ok(())
    }

    /// The cache file.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    /// The cache's entries as the cache file's JSON text, for a host that keeps the cache in a
    /// store of its own (a page's `localStorage`, say).
    pub fn to_json(&self) -> String {
        let document = CacheFile {
            version: CACHE_FORMAT_VERSION,
            entries: self
                .entries
                .iter()
                .map(|(key, choice)| CacheFileEntry {
                    key: key.clone(),
                    choice: choice.clone(),
                })
                .collect(),
        };
        // A map of strings, numbers and enums always serialises.
        serde_json::to_string_pretty(&document).unwrap_or_default()
    }

    /// The web's page-wide cache (what [`TuningCache::open`] without a path starts from) as
    /// JSON text, for the host to keep.
    #[cfg(target_arch = "wasm32")]
    pub fn session_json() -> String {
        TuningCache::open(None).to_json()
    }

    /// Adds the entries of a cache file's JSON text (as [`TuningCache::to_json`] writes it) to
    /// the web's page-wide cache, and returns how many it had. Text of another version or that
    /// is not a cache has none; an entry that does not parse is skipped.
    #[cfg(target_arch = "wasm32")]
    pub fn load_session(text: &str) -> usize {
        let mut entries = parse_entries(text);
        let count = entries.len();
        SESSION_ENTRIES.with(|session| session.borrow_mut().append(&mut entries));
        count
    }
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// The web's tuning cache: the page's memory, for as long as the page lives.
    static SESSION_ENTRIES: std::cell::RefCell<BTreeMap<TuningKey, CachedChoice>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

/// The entries of the cache file at `path`; a missing or unreadable file has none.
fn read_entries(path: &Path) -> BTreeMap<TuningKey, CachedChoice> {
    std::fs::read_to_string(path)
        .map(|text| parse_entries(&text))
        .unwrap_or_default()
}

/// The entries of a cache file's text. Text that is not JSON, or not of
/// [`CACHE_FORMAT_VERSION`], has none; an entry that does not parse (damaged, or of a shape a
/// newer resgraph added) is skipped, so that the others are still used.
fn parse_entries(text: &str) -> BTreeMap<TuningKey, CachedChoice> {
    let Ok(document) = serde_json::from_str::<Json>(text) else {
        return BTreeMap::new();
    };
    if document.get("version").and_then(Json::as_u64) != Some(CACHE_FORMAT_VERSION) {
        return BTreeMap::new();
    }
    let Some(entries) = document.get("entries").and_then(Json::as_array) else {
        return BTreeMap::new();
    };
    entries
        .iter()
        .filter_map(|entry| CacheFileEntry::deserialize(entry).ok())
        .map(|entry| (entry.key, entry.choice))
        .collect()
}

/// The cache key of a layer shape on `context`'s adapter.
pub fn shape_key(
    context: &GpuContext,
    precision: Precision,
    (rows, out, inp): (usize, usize, usize),
    allowed: LayerCandidates,
) -> TuningKey {
    let offered = offered_candidates(context, precision, (rows, out, inp), allowed);
    TuningKey::new(
        context,
        precision,
        TunedShape::Layer {
            rows,
            out_features: out,
            in_features: inp,
        },
        &offered,
    )
}

/// Chooses a kernel for a `rows` × `out` × `inp` layer: from the cache, else by timing every
/// candidate the device supports among `allowed` and recording the winner.
pub async fn choose(
    context: &GpuContext,
    cache: &mut TuningCache,
    precision: Precision,
    (rows, out, inp): (usize, usize, usize),
    allowed: LayerCandidates,
) -> Result<ShapeChoice> {
    let key = shape_key(context, precision, (rows, out, inp), allowed);
    if let Some(cached) = cache.entries.get(&key)
        && let Some(choice) = KernelChoice::from_label(&cached.kernel)
        && choice.supported(context, precision, (rows, out, inp))
    {
        return Ok(ShapeChoice {
            key,
            choice,
            clock: cached.clock,
            measured: Vec::new(),
            rejected: Vec::new(),
            tiled_search: None,
        });
    }
    let data = LayerTuningData::create(context, precision, (rows, out, inp))?;
    // The portable GEMM is the reference every other candidate's result is checked against. It
    // runs first, even where `candidates` would leave it out, so that a shape no kernel can run
    // is the portable GEMM's own typed error (a dispatch too large, say) rather than a choice.
    let portable = KernelChoice::Gemm(GemmVariant::Portable);
    let (portable_runs, reference) = data.time(context, portable).await?;
    if let Some(index) = reference.iter().position(|value| !value.is_finite()) {
        return Err(crate::Error::Gpu {
            operation: "checking the portable GEMM while tuning".to_string(),
            message: format!("its output[{index}] is {} on finite data", reference[index]),
        });
    }
    let mut timed = vec![portable];
    let mut runs = vec![portable_runs];
    let mut rejected = Vec::new();
    // Times one candidate and keeps it if its result agrees with the portable GEMM's.
    let mut time_checked =
        async |candidate: KernelChoice, runs: &mut Vec<RunTimes>| -> Result<()> {
            match data.time(context, candidate).await {
                Ok((candidate_runs, output)) => {
                    match check_candidate_output(&output, &reference, precision) {
                        Ok(()) => {
                            timed.push(candidate);
                            runs.push(candidate_runs);
                        }
                        Err(why) => rejected.push((candidate, why)),
                    }
                }
                Err(error) => {
                    // A candidate that failed is left out, unless the device itself is gone.
                    context.wait_idle_async().await?;
                    rejected.push((candidate, error.to_string()));
                }
            }
            Ok(())
        };
    for candidate in candidates(context, precision, (rows, out, inp), allowed) {
        if candidate != portable {
            time_checked(candidate, &mut runs).await?;
        }
    }
    let fixed = runs.len();
    let best_fixed = runs.iter().map(RunTimes::estimate).min();
    let family = tiled_candidates(context, precision, (rows, out, inp), allowed);
    let mut tiled_search = None;
    if !family.is_empty() {
        let started = Instant::now();
        let mut stopped = SearchStop::Exhausted;
        let mut searched = 0;
        for config in &family {
            if searched > 0 && started.elapsed() >= allowed.tiled_search {
                stopped = SearchStop::Budget;
                break;
            }
            time_checked(KernelChoice::Gemm(GemmVariant::Tiled(*config)), &mut runs).await?;
            searched += 1;
            let best_tiled = runs[fixed..].iter().map(RunTimes::estimate).min();
            if searched >= TILED_PROBE_POINTS
                && let Some(best_fixed) = best_fixed
                && best_tiled.is_none_or(|tiled| tiled > best_fixed * TILED_OUTCLASSED_FACTOR)
            {
                stopped = SearchStop::Outclassed;
                break;
            }
        }
        tiled_search = Some(TiledSearch {
            timed: searched,
            points: family.len(),
            elapsed: started.elapsed(),
            stopped,
        });
    }
    let (clock, medians) = medians_on_one_clock(&runs);
    let measured: Vec<(KernelChoice, Duration)> = timed.into_iter().zip(medians).collect();
    let choice = measured
        .iter()
        .min_by_key(|(_, time)| *time)
        .map_or(portable, |(choice, _)| *choice);
    let labels: Vec<(String, Duration)> = measured
        .iter()
        .map(|(candidate, time)| (candidate.label(), *time))
        .collect();
    let named = labels.iter().map(|(label, time)| (label.as_str(), *time));
    cache.insert(&key, &choice.label(), clock, named);
    Ok(ShapeChoice {
        key,
        choice,
        clock,
        measured,
        rejected,
        tiled_search,
    })
}

/// The synthetic data every candidate for one layer shape is timed and checked on, created
/// once per shape: input, residual, the output (poisoned before each candidate) and the layer's
/// weights.
struct LayerTuningData {
    input: DeviceMatrix,
    residual: DeviceMatrix,
    output: DeviceMatrix,
    weights: CandidateWeights,
}

impl LayerTuningData {
    fn create(
        context: &GpuContext,
        precision: Precision,
        (rows, out, inp): (usize, usize, usize),
    ) -> Result<Self> {
        Ok(LayerTuningData {
            input: tuning_matrix(context, precision, "tuning input", (rows, inp), (1.0, 1))?,
            residual: tuning_matrix(
                context,
                precision,
                "tuning residual",
                (rows, out),
                (0.25, 2),
            )?,
            output: tuning_matrix(context, precision, "tuning output", (rows, out), (0.0, 3))?,
            weights: CandidateWeights::new(precision, (out, inp)),
        })
    }

    /// The timed runs of one dispatch of `candidate` (the most expensive epilogue, as in a
    /// residual block's second layer), and its result, for checking.
    async fn time(
        &self,
        context: &GpuContext,
        candidate: KernelChoice,
    ) -> Result<(RunTimes, Vec<f32>)> {
        // In scopes of its own, so that on the web too (where inner scopes cannot be waited
        // for) a candidate that fails is rejected alone rather than failing the compile.
        let timing = async {
            // Poisoned, so that an output the candidate never writes shows up as NaN.
            self.output.fill(context, f32::NAN)?;
            let layer = self.weights.prepare(
                context,
                candidate,
                &self.input,
                Some(&self.residual),
                &self.output,
            )?;
            let runs = time_runs(context, |pass| layer.record(pass)).await?;
            Ok((runs, self.output.read_async(context).await?))
        };
        context
            .scoped_future("timing a tuning candidate", timing)
            .await
    }
}

/// Synthetic weights of one `out` × `inp` layer ([`tuning_weights`]), uploaded in the blocked
/// layout once for every GEMM variant and tiled point, and as a texture for each GEMV candidate.
struct CandidateWeights {
    precision: Precision,
    out: usize,
    inp: usize,
    weight: Vec<f32>,
    blocked: std::cell::OnceCell<LinearWeights>,
}

impl CandidateWeights {
    fn new(precision: Precision, (out, inp): (usize, usize)) -> Self {
        CandidateWeights {
            precision,
            out,
            inp,
            weight: tuning_weights(out, inp),
            blocked: std::cell::OnceCell::new(),
        }
    }

    /// Prepares `relu(input · Wᵀ [+ residual])` with `candidate`.
    fn prepare(
        &self,
        context: &GpuContext,
        candidate: KernelChoice,
        input: &DeviceMatrix,
        residual: Option<&DeviceMatrix>,
        output: &DeviceMatrix,
    ) -> Result<PreparedKernel> {
        let (out, inp, precision) = (self.out, self.inp, self.precision);
        Ok(match candidate {
            KernelChoice::Gemm(variant) => {
                let weights = match self.blocked.get() {
                    Some(weights) => weights,
                    None => {
                        let uploaded = LinearWeights::upload_with_precision(
                            context,
                            out,
                            inp,
                            &self.weight,
                            None,
                            precision,
                        )?;
                        self.blocked.get_or_init(|| uploaded)
                    }
                };
                let operands = GemmOperands {
                    input,
                    weights,
                    residual,
                    output,
                    activation: Activation::Relu,
                };
                prepare_gemm(context, &operands, variant)?
            }
            KernelChoice::GemvTexture => {
                let weights = TextureWeights::upload_with_precision(
                    context,
                    out,
                    inp,
                    &self.weight,
                    None,
                    precision,
                )?;
                let operands = GemvOperands {
                    input,
                    weights: &weights,
                    residual,
                    output,
                    activation: Activation::Relu,
                };
                prepare_gemv(context, &operands)?
            }
        })
    }
}

/// `len` pseudo-random values in `[-scale, scale)`, different for every `salt`: no row, column or
/// period repeats, so a kernel that mixes up rows, columns or the inner dimension gets a
/// different result from the reference kernel's (splitmix64 of index and salt).
fn tuning_values(len: usize, scale: f32, salt: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|index| {
            let mut z = index
                .wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            scale * (2.0 * unit - 1.0)
        })
        .collect()
}

/// A device matrix of [`tuning_values`] for timing and checking candidates.
fn tuning_matrix(
    context: &GpuContext,
    precision: Precision,
    label: &str,
    (rows, cols): (usize, usize),
    (scale, salt): (f32, u64),
) -> Result<DeviceMatrix> {
    let matrix = DeviceMatrix::new_with_precision(context, label, rows, cols, precision)?;
    matrix.write(context, &tuning_values(rows * cols, scale, salt))?;
    Ok(matrix)
}

/// Synthetic weights of an `out` × `inp` layer, scaled by `1/sqrt(inp)` as a trained layer's
/// are, so that the matrix product, not the residual, dominates the output.
fn tuning_weights(out: usize, inp: usize) -> Vec<f32> {
    let scale = 1.0 / (inp as f32).sqrt();
    tuning_values(out * inp, scale, (out as u64) << 32 | inp as u64)
}

/// One candidate's timed runs, on both clocks.
#[derive(Clone, Debug, Default, PartialEq)]
struct RunTimes {
    /// Each run's wall-clock time, from recording the pass to the queue being idle.
    wall: Vec<Duration>,
    /// Each run's GPU time from the pass's timestamps: `None` for a run whose reading was
    /// implausible (see [`gpu_duration`]), and for every run where the device has no timestamp
    /// queries.
    gpu: Vec<Option<Duration>>,
}

impl RunTimes {
    /// A single time for comparing candidates while searching: the median GPU time where every
    /// run has one, else the median wall-clock time. (The choice itself compares all candidates
    /// on one clock, [`medians_on_one_clock`].)
    fn estimate(&self) -> Duration {
        let gpu: Option<Vec<Duration>> = self.gpu.iter().copied().collect();
        match gpu {
            Some(gpu) if !gpu.is_empty() => median(gpu),
            _ => median(self.wall.clone()),
        }
    }
}

/// The query set and buffers that read one compute pass's beginning and end timestamps back.
struct PassTimestamps {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// Bytes of the two resolved 64-bit timestamps.
const TIMESTAMP_BYTES: u64 = 16;

impl PassTimestamps {
    /// The queries for `context`, or `None` where its device lacks `TIMESTAMP_QUERY`.
    fn new(context: &GpuContext) -> Result<Option<Self>> {
        if !context.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(None);
        }
        let device = context.device();
        context
            .scoped("creating the tuner's timestamp queries", || {
                PassTimestamps {
                    query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("tuning pass timestamps"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2,
                    }),
                    resolve: device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("tuning timestamp resolve"),
                        size: TIMESTAMP_BYTES,
                        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    }),
                    readback: device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("tuning timestamp readback"),
                        size: TIMESTAMP_BYTES,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    }),
                }
            })
            .map(Some)
    }

    /// The beginning and end timestamps of the last pass, in ticks, once its copy has been
    /// submitted.
    async fn read_ticks(&self, context: &GpuContext) -> Result<(u64, u64)> {
        let bytes = map_and_read_bytes(context, &self.readback, TIMESTAMP_BYTES).await?;
        let tick = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|slice| <[u8; 8]>::try_from(slice).ok())
                .map(u64::from_le_bytes)
        };
        match (tick(0), tick(8)) {
            (Some(begin), Some(end)) => Ok((begin, end)),
            _ => Err(crate::Error::Readback {
                reason: format!(
                    "the timestamp readback has {} bytes, not {TIMESTAMP_BYTES}",
                    bytes.len()
                ),
            }),
        }
    }
}

/// The GPU time between a pass's `begin` and `end` timestamps, with `period_ns` nanoseconds per
/// tick, or `None` where the reading cannot be right: an end not after the beginning (some
/// drivers write 0 for both), a period that is not a positive number, or a time longer than the
/// `wall` clock time of the same run (the pass ran between the recording and the wait's end, so
/// it cannot have taken longer). A kernel must never be chosen on such a reading.
fn gpu_duration(begin: u64, end: u64, period_ns: f32, wall: Duration) -> Option<Duration> {
    if end <= begin || !period_ns.is_finite() || period_ns <= 0.0 {
        return None;
    }
    let nanos = (end - begin) as f64 * f64::from(period_ns);
    let gpu = Duration::try_from_secs_f64(nanos * 1e-9).ok()?;
    (gpu <= wall).then_some(gpu)
}

/// Each candidate's median time, all on one clock: the GPU timestamps where every timed run of
/// every candidate has a plausible reading, else the wall clock. One clock for all, because a
/// pass's GPU time leaves out the submission and the wait that a wall-clock time includes, so a
/// candidate timed on the GPU would win against one timed on the wall clock for no reason of its
/// own.
fn medians_on_one_clock(runs: &[RunTimes]) -> (TuningClock, Vec<Duration>) {
    let gpu_times: Option<Vec<Vec<Duration>>> = runs
        .iter()
        .map(|candidate| candidate.gpu.iter().copied().collect::<Option<Vec<_>>>())
        .collect();
    match gpu_times {
        Some(gpu_times) if !runs.is_empty() && gpu_times.iter().all(|times| !times.is_empty()) => (
            TuningClock::GpuTimestamps,
            gpu_times.into_iter().map(median).collect(),
        ),
        _ => (
            TuningClock::WallClock,
            runs.iter()
                .map(|candidate| median(candidate.wall.clone()))
                .collect(),
        ),
    }
}

/// The median of `times` (the upper one of an even count; zero for none).
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Records `record` into one compute pass, submits it and waits, once untimed and then
/// [`TIMED_RUNS`] times, timing each timed run on the wall clock and, where the device has
/// timestamp queries, with the pass's beginning and end timestamps.
async fn time_runs(
    context: &GpuContext,
    record: impl Fn(&mut wgpu::ComputePass<'_>),
) -> Result<RunTimes> {
    let timestamps = PassTimestamps::new(context)?;
    let period_ns = context.queue().get_timestamp_period();
    let run = async || -> Result<(Duration, Option<Duration>)> {
        let started = Instant::now();
        context.scoped("running a tuning candidate", || {
            let mut encoder =
                context
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("resgraph tuning"),
                    });
            {
                let timestamp_writes =
                    timestamps
                        .as_ref()
                        .map(|queries| wgpu::ComputePassTimestampWrites {
                            query_set: &queries.query_set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("resgraph tuning"),
                    timestamp_writes,
                });
                record(&mut pass);
            }
            if let Some(queries) = &timestamps {
                encoder.resolve_query_set(&queries.query_set, 0..2, &queries.resolve, 0);
                encoder.copy_buffer_to_buffer(
                    &queries.resolve,
                    0,
                    &queries.readback,
                    0,
                    TIMESTAMP_BYTES,
                );
            }
            context.queue().submit([encoder.finish()]);
        })?;
        context.wait_idle_async().await?;
        let wall = started.elapsed();
        let gpu = match &timestamps {
            Some(queries) => {
                let (begin, end) = queries.read_ticks(context).await?;
                gpu_duration(begin, end, period_ns, wall)
            }
            None => None,
        };
        Ok((wall, gpu))
    };
    run().await?;
    let mut times = RunTimes::default();
    for _ in 0..TIMED_RUNS {
        let (wall, gpu) = run().await?;
        times.wall.push(wall);
        times.gpu.push(gpu);
    }
    Ok(times)
}

/// The cache key of a residual block of `width` with a `hidden` layer, run for `rows` rows, whose
/// layers would otherwise run with `split`.
pub fn block_key(
    context: &GpuContext,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
    split: (KernelChoice, KernelChoice),
) -> TuningKey {
    // The two forms in the order they are timed; the two dispatches run both layers' kernels.
    let forms = [
        (
            BlockForm::TwoDispatches.name().to_string(),
            vec![split.0.kernel(), split.1.kernel()],
        ),
        (
            BlockForm::WholeBlock.name().to_string(),
            vec![&residual_block::RESIDUAL_BLOCK_KERNEL],
        ),
    ];
    TuningKey::new(
        context,
        precision,
        TunedShape::Block {
            rows,
            width,
            hidden,
            first_layer: split.0.label(),
            second_layer: split.1.label(),
        },
        &forms,
    )
}

/// Chooses how a residual block runs: from the cache, else by timing the whole-block kernel
/// against the two layers' chosen kernels recorded in one pass (as the executor runs them).
/// The caller checks first that the device can run the whole-block kernel.
pub async fn choose_block(
    context: &GpuContext,
    cache: &mut TuningCache,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
    split: (KernelChoice, KernelChoice),
) -> Result<BlockChoice> {
    let key = block_key(context, precision, (rows, width, hidden), split);
    if let Some(cached) = cache.entries.get(&key)
        && let Some(form) = BlockForm::from_name(&cached.kernel)
    {
        return Ok(BlockChoice {
            key,
            form,
            clock: cached.clock,
            measured: Vec::new(),
            rejected: None,
        });
    }
    let data = BlockTuningData::create(context, precision, (rows, width, hidden))?;
    let (two, expected) = data.time_two_dispatches(context, split).await?;
    let mut timed = vec![BlockForm::TwoDispatches];
    let mut runs = vec![two];
    let rejected = match data.time_whole_block(context).await {
        Err(error) => {
            // Left out, unless the device itself is gone.
            context.wait_idle_async().await?;
            Some(error.to_string())
        }
        Ok((block_runs, result)) => match check_candidate_output(&result, &expected, precision) {
            Ok(()) => {
                timed.push(BlockForm::WholeBlock);
                runs.push(block_runs);
                None
            }
            Err(why) => Some(why),
        },
    };
    let (clock, medians) = medians_on_one_clock(&runs);
    let measured: Vec<(BlockForm, Duration)> = timed.into_iter().zip(medians).collect();
    let form = measured
        .iter()
        .min_by_key(|(_, time)| *time)
        .map_or(BlockForm::TwoDispatches, |(form, _)| *form);
    let named = measured.iter().map(|(form, time)| (form.name(), *time));
    cache.insert(&key, form.name(), clock, named);
    Ok(BlockChoice {
        key,
        form,
        clock,
        measured,
        rejected,
    })
}

/// The synthetic matrices a residual block is timed on: its input (also the shortcut), its hidden
/// activation and its output, for `rows` rows of a block of `width` with a `hidden` layer.
struct BlockTuningData {
    precision: Precision,
    width: usize,
    hidden: usize,
    input: DeviceMatrix,
    hidden_matrix: DeviceMatrix,
    output: DeviceMatrix,
}

impl BlockTuningData {
    fn create(
        context: &GpuContext,
        precision: Precision,
        (rows, width, hidden): (usize, usize, usize),
    ) -> Result<Self> {
        let matrix = |label: &str, cols: usize, (scale, salt): (f32, u64)| {
            tuning_matrix(context, precision, label, (rows, cols), (scale, salt))
        };
        Ok(BlockTuningData {
            precision,
            width,
            hidden,
            input: matrix("tuning block input", width, (1.0, 4))?,
            hidden_matrix: matrix("tuning block hidden", hidden, (0.0, 5))?,
            output: matrix("tuning block output", width, (0.0, 6))?,
        })
    }

    /// Times the block as its two layers' kernels recorded in one pass, as the executor runs
    /// them, and returns their result: the reference the whole-block kernel is checked against.
    async fn time_two_dispatches(
        &self,
        context: &GpuContext,
        (first, second): (KernelChoice, KernelChoice),
    ) -> Result<(RunTimes, Vec<f32>)> {
        let (width, hidden) = (self.width, self.hidden);
        let first_layer = CandidateWeights::new(self.precision, (hidden, width)).prepare(
            context,
            first,
            &self.input,
            None,
            &self.hidden_matrix,
        )?;
        let second_layer = CandidateWeights::new(self.precision, (width, hidden)).prepare(
            context,
            second,
            &self.hidden_matrix,
            Some(&self.input),
            &self.output,
        )?;
        let runs = time_runs(context, |pass| {
            first_layer.record(pass);
            second_layer.record(pass);
        })
        .await?;
        let expected = self.output.read_async(context).await?;
        if let Some(index) = expected.iter().position(|value| !value.is_finite()) {
            return Err(crate::Error::Gpu {
                operation: "checking a residual block's two dispatches while tuning".to_string(),
                message: format!("output[{index}] is {} on finite data", expected[index]),
            });
        }
        Ok((runs, expected))
    }

    /// Times the whole-block kernel on the same data (its output poisoned first) and returns its
    /// result.
    async fn time_whole_block(&self, context: &GpuContext) -> Result<(RunTimes, Vec<f32>)> {
        // In scopes of its own, as a layer's candidate is (see `LayerTuningData::time`).
        context
            .scoped_future(
                "timing the whole-block kernel",
                self.time_whole_block_in_scope(context),
            )
            .await
    }

    async fn time_whole_block_in_scope(
        &self,
        context: &GpuContext,
    ) -> Result<(RunTimes, Vec<f32>)> {
        let (width, hidden) = (self.width, self.hidden);
        let upload = |out: usize, inp: usize| {
            LinearWeights::upload_with_precision(
                context,
                out,
                inp,
                &tuning_weights(out, inp),
                None,
                self.precision,
            )
        };
        let (first, second) = (upload(hidden, width)?, upload(width, hidden)?);
        let block = prepare_residual_block(
            context,
            &ResidualBlockOperands {
                input: &self.input,
                first: &first,
                second: &second,
                output: &self.output,
            },
        )?;
        self.output.fill(context, f32::NAN)?;
        let runs = time_runs(context, |pass| block.record(pass)).await?;
        Ok((runs, self.output.read_async(context).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_key(rows: usize) -> TuningKey {
        TuningKey {
            adapter: "llvmpipe (LLVM 19.1.7, 256 bits)".to_string(),
            driver: "llvmpipe".to_string(),
            driver_info: "Mesa 25.0.7".to_string(),
            backend: "vulkan".to_string(),
            precision: "f32".to_string(),
            shape: TunedShape::Layer {
                rows,
                out_features: 24,
                in_features: 40,
            },
            candidates: vec!["gemm".to_string(), "gemm_subgroup".to_string()],
            candidate_checksum: 0xfedc_ba98_7654_3210,
        }
    }

    fn block_key(rows: usize) -> TuningKey {
        TuningKey {
            shape: TunedShape::Block {
                rows,
                width: 48,
                hidden: 80,
                first_layer: "gemm_subgroup".to_string(),
                second_layer: "gemv_texture".to_string(),
            },
            candidates: vec!["two_dispatches".to_string(), "residual_block".to_string()],
            ..layer_key(rows)
        }
    }

    fn millis(times: &[u64]) -> Vec<Duration> {
        times.iter().map(|&ms| Duration::from_millis(ms)).collect()
    }

    #[test]
    fn a_key_survives_a_json_round_trip_and_reads_as_one_line() {
        for key in [layer_key(7), block_key(7)] {
            let text = serde_json::to_string(&key).expect("serialize");
            let back: TuningKey = serde_json::from_str(&text).expect("deserialize");
            assert_eq!(back, key, "{text}");
        }
        // The checksum is a u64 beyond f64's exact integers: it is stored as hex, so that readers
        // that parse JSON numbers as doubles keep every bit.
        let text = serde_json::to_string(&layer_key(7)).expect("serialize");
        assert!(
            text.contains(r#""candidate_checksum":"fedcba9876543210""#),
            "{text}"
        );
        assert!(text.contains(r#""kind":"layer""#), "{text}");

        let shown = layer_key(7).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        for part in [
            "llvmpipe (LLVM 19.1.7, 256 bits)",
            "Mesa 25.0.7",
            "vulkan",
            "f32",
            "layer rows=7 out=24 in=40",
            "gemm+gemm_subgroup",
            "fedcba9876543210",
        ] {
            assert!(shown.contains(part), "{part:?} missing from {shown}");
        }
        let shown = block_key(3).to_string();
        assert!(
            shown.contains("block rows=3 width=48 hidden=80 (gemm_subgroup then gemv_texture)"),
            "{shown}"
        );
    }

    #[test]
    fn keys_differ_in_every_field_that_invalidates_a_choice() {
        let key = layer_key(7);
        let mut changed = vec![layer_key(8), block_key(7)];
        let edits: [fn(&mut TuningKey); 7] = [
            |key| key.adapter.push('2'),
            |key| key.driver.push('3'),
            |key| key.driver_info.push('1'),
            |key| key.backend = "gl".to_string(),
            |key| key.precision = "f16".to_string(),
            |key| key.candidates.truncate(1),
            |key| key.candidate_checksum ^= 1,
        ];
        for edit in edits {
            let mut other = key.clone();
            edit(&mut other);
            changed.push(other);
        }
        for other in changed {
            assert_ne!(other, key, "{other}");
        }
    }

    const KERNEL_A: KernelSource = KernelSource {
        name: "kernel_a",
        body: "fn body() {}\n",
        pieces: &[],
        extensions: &[],
        declarations: crate::kernels::source::no_declarations,
        entry_point: "main",
        bindings: &[],
    };
    /// `KERNEL_A` after an edit of one character in its body.
    const KERNEL_A_EDITED: KernelSource = KernelSource {
        body: "fn body() { }\n",
        ..KERNEL_A
    };
    const KERNEL_B: KernelSource = KernelSource {
        name: "kernel_b",
        ..KERNEL_A
    };

    #[test]
    fn the_candidate_checksum_changes_with_any_candidate_or_its_wgsl() {
        let sum = |candidates: &[(&str, Vec<&KernelSource>)], precision| {
            let named: Vec<(String, Vec<&KernelSource>)> = candidates
                .iter()
                .map(|(name, kernels)| ((*name).to_string(), kernels.clone()))
                .collect();
            candidate_checksum(&named, precision)
        };
        let f32 = Precision::F32;
        let base = sum(&[("a", vec![&KERNEL_A]), ("b", vec![&KERNEL_B])], f32);
        // The same set gives the same checksum, every time.
        assert_eq!(
            base,
            sum(&[("a", vec![&KERNEL_A]), ("b", vec![&KERNEL_B])], f32)
        );
        let different = [
            // A kernel's WGSL edited.
            sum(
                &[("a", vec![&KERNEL_A_EDITED]), ("b", vec![&KERNEL_B])],
                f32,
            ),
            // A candidate left out, or renamed.
            sum(&[("a", vec![&KERNEL_A])], f32),
            sum(&[("a", vec![&KERNEL_A]), ("c", vec![&KERNEL_B])], f32),
            // Another timing order.
            sum(&[("b", vec![&KERNEL_B]), ("a", vec![&KERNEL_A])], f32),
            // A candidate that runs one more kernel.
            sum(
                &[("a", vec![&KERNEL_A]), ("b", vec![&KERNEL_B, &KERNEL_A])],
                f32,
            ),
            // The source generated for another precision.
            sum(
                &[("a", vec![&KERNEL_A]), ("b", vec![&KERNEL_B])],
                Precision::F16,
            ),
        ];
        for (index, other) in different.into_iter().enumerate() {
            assert_ne!(other, base, "change {index} kept the checksum");
        }
    }

    #[test]
    fn the_cache_file_round_trips_through_a_save() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cache").join("tuning.json");
        let mut cache = TuningCache::open(Some(path.clone()));
        cache.insert(
            &layer_key(7),
            "gemm_subgroup",
            TuningClock::GpuTimestamps,
            [
                ("gemm", Duration::from_micros(300)),
                ("gemm_subgroup", Duration::from_micros(100)),
            ]
            .into_iter(),
        );
        cache.insert(
            &block_key(7),
            "residual_block",
            TuningClock::WallClock,
            [("residual_block", Duration::from_micros(50))].into_iter(),
        );
        cache.save().expect("save");

        let reopened = TuningCache::open(Some(path.clone()));
        assert_eq!(reopened.entries, cache.entries);
        assert_eq!(
            reopened.get(&layer_key(7)),
            Some(KernelChoice::Gemm(GemmVariant::Subgroup))
        );
        let block = reopened.entries.get(&block_key(7)).expect("block entry");
        assert_eq!(block.kernel, "residual_block");
        assert_eq!(block.clock, TuningClock::WallClock);
        // Another shape, or the same one with other candidates' WGSL, is not in the cache.
        assert_eq!(reopened.get(&layer_key(8)), None);
        let edited = TuningKey {
            candidate_checksum: layer_key(7).candidate_checksum ^ 1,
            ..layer_key(7)
        };
        assert_eq!(reopened.get(&edited), None);

        let text = std::fs::read_to_string(&path).expect("read");
        let json: Json = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json["version"], 2);
        let entries = json["entries"].as_array().expect("an array of entries");
        assert_eq!(entries.len(), 2);
        let layer = entries
            .iter()
            .find(|entry| entry["key"]["shape"]["kind"] == "layer")
            .expect("the layer entry");
        assert_eq!(layer["kernel"], "gemm_subgroup");
        assert_eq!(layer["clock"], "gpu_timestamps");
        let milliseconds = layer["median_ms"]["gemm_subgroup"]
            .as_f64()
            .expect("a time");
        assert!((milliseconds - 0.1).abs() < 1e-12, "{milliseconds}");
    }

    #[test]
    fn the_cache_as_json_text_reads_back_as_the_same_entries() {
        // What a host that keeps the cache in its own store (a page's localStorage) relies on.
        let mut cache = TuningCache::open(None);
        let clock = TuningClock::GpuTimestamps;
        let times = [("gemm", Duration::from_micros(250))];
        cache.insert(&layer_key(7), "gemm_subgroup", clock, times.into_iter());
        cache.insert(
            &layer_key(9),
            "gemm",
            TuningClock::WallClock,
            std::iter::empty(),
        );
        let text = cache.to_json();
        assert_eq!(parse_entries(&text), cache.entries);
        assert_eq!(parse_entries(&text).len(), 2);
        assert!(parse_entries("not json").is_empty());
    }

    #[test]
    fn caches_saving_at_the_same_moment_keep_every_entry() {
        // Sixteen caches (as sixteen processes would) save at once; the lock file makes each
        // read-merge-write see the others' entries. Without it, entries were lost at random.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tuning.json");
        let start = std::sync::Barrier::new(16);
        std::thread::scope(|scope| {
            for shape in 0..16 {
                let (path, start) = (path.clone(), &start);
                scope.spawn(move || {
                    let mut cache = TuningCache::open(Some(path));
                    let clock = TuningClock::WallClock;
                    cache.insert(&layer_key(100 + shape), "gemm", clock, std::iter::empty());
                    start.wait();
                    cache.save().expect("save");
                });
            }
        });
        let saved = TuningCache::open(Some(path));
        for shape in 0..16 {
            assert!(
                saved.get(&layer_key(100 + shape)).is_some(),
                "the entry of shape {shape} was lost"
            );
        }
    }

    #[test]
    fn a_cache_that_cannot_be_saved_is_an_error_naming_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"").expect("file");
        let mut cache = TuningCache::open(Some(file.join("tuning.json")));
        cache.insert(
            &layer_key(1),
            "gemm",
            TuningClock::WallClock,
            std::iter::empty(),
        );
        let error = cache.save().expect_err("a file as the folder");
        assert!(
            error.to_string().contains("is a file, not a folder"),
            "{error}"
        );
    }

    #[test]
    fn saving_merges_into_what_another_process_saved_meanwhile() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tuning.json");
        let mut first = TuningCache::open(Some(path.clone()));
        let mut second = TuningCache::open(Some(path.clone()));
        let clock = TuningClock::WallClock;
        first.insert(&layer_key(2), "gemm", clock, std::iter::empty());
        second.insert(&layer_key(3), "gemv_texture", clock, std::iter::empty());
        first.save().expect("save");
        second.save().expect("save");
        let merged = TuningCache::open(Some(path));
        assert_eq!(
            merged.get(&layer_key(2)),
            Some(KernelChoice::Gemm(GemmVariant::Portable))
        );
        assert_eq!(merged.get(&layer_key(3)), Some(KernelChoice::GemvTexture));
    }

    /// An entry of the version-1 format, whose keys were `|`-joined strings.
    const VERSION_1_FILE: &str = r#"{"version": 1, "entries": {"llvmpipe|llvmpipe Mesa|vulkan|f32|m7|n24|k40|gemm": {"kernel": "gemm", "median_ms": {"gemm": 0.3}}}}"#;

    #[test]
    fn a_file_of_another_version_or_damaged_is_empty_and_rewritten_on_save() {
        let good_entry = serde_json::to_value(CacheFileEntry {
            key: layer_key(7),
            choice: CachedChoice {
                kernel: "gemm".to_string(),
                clock: TuningClock::WallClock,
                median_ms: BTreeMap::new(),
            },
        })
        .expect("entry");
        let unknown_version = serde_json::json!({"version": 3, "entries": [good_entry.clone()]});
        let no_version = serde_json::json!({"entries": [good_entry.clone()]});
        let entries_not_a_list = serde_json::json!({"version": 2, "entries": {"a": good_entry}});
        for text in [
            VERSION_1_FILE.to_string(),
            "{ this is not json".to_string(),
            String::new(),
            "[]".to_string(),
            unknown_version.to_string(),
            no_version.to_string(),
            entries_not_a_list.to_string(),
        ] {
            assert!(parse_entries(&text).is_empty(), "{text}");
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("tuning.json");
            std::fs::write(&path, &text).expect("write");
            let mut cache = TuningCache::open(Some(path.clone()));
            assert!(cache.entries.is_empty(), "{text}");
            cache.insert(
                &layer_key(9),
                "gemm",
                TuningClock::WallClock,
                std::iter::empty(),
            );
            cache.save().expect("saving over an old or damaged file");
            let rewritten = std::fs::read_to_string(&path).expect("read");
            let entries = parse_entries(&rewritten);
            assert_eq!(
                entries.keys().collect::<Vec<_>>(),
                vec![&layer_key(9)],
                "{text} was not rewritten as version 2 with this process's entry alone: {rewritten}"
            );
        }
    }

    #[test]
    fn an_entry_that_does_not_parse_is_skipped_and_the_others_kept() {
        let good = serde_json::to_value(CacheFileEntry {
            key: block_key(5),
            choice: CachedChoice {
                kernel: "two_dispatches".to_string(),
                clock: TuningClock::GpuTimestamps,
                median_ms: BTreeMap::new(),
            },
        })
        .expect("entry");
        let mut unknown_shape = good.clone();
        unknown_shape["key"]["shape"]["kind"] = "attention".into();
        let mut unknown_clock = good.clone();
        unknown_clock["clock"] = "sundial".into();
        let text = serde_json::json!({
            "version": 2,
            "entries": [unknown_shape, 17, {"key": "m7|n24"}, good, unknown_clock],
        })
        .to_string();
        let entries = parse_entries(&text);
        assert_eq!(entries.keys().collect::<Vec<_>>(), vec![&block_key(5)]);
    }

    #[test]
    fn implausible_timestamps_give_no_gpu_time() {
        let wall = Duration::from_millis(2);
        // A plausible reading, with the timestamp period applied.
        assert_eq!(
            gpu_duration(1_000, 1_500, 2.0, wall),
            Some(Duration::from_micros(1))
        );
        // Both zero (some drivers), equal, or the end before the beginning.
        assert_eq!(gpu_duration(0, 0, 1.0, wall), None);
        assert_eq!(gpu_duration(7_000, 7_000, 1.0, wall), None);
        assert_eq!(gpu_duration(9_000, 7_000, 1.0, wall), None);
        // A period that is not a positive number.
        for period in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert_eq!(gpu_duration(1_000, 2_000, period, wall), None, "{period}");
        }
        // Longer than the wall-clock time of the same run, which contains the pass.
        assert_eq!(gpu_duration(0, 3_000_000, 1.0, wall), None);
        assert_eq!(gpu_duration(5, u64::MAX, 1.0, wall), None);
    }

    #[test]
    fn every_candidate_is_timed_on_one_clock() {
        let on_gpu = |wall: &[u64], gpu: &[u64]| RunTimes {
            wall: millis(wall),
            gpu: millis(gpu).into_iter().map(Some).collect(),
        };
        let fast_on_gpu = on_gpu(&[9, 7, 8], &[3, 1, 2]);
        let slow_on_gpu = on_gpu(&[5, 6, 4], &[4, 6, 5]);
        assert_eq!(
            medians_on_one_clock(&[fast_on_gpu.clone(), slow_on_gpu.clone()]),
            (TuningClock::GpuTimestamps, millis(&[2, 5]))
        );
        // One implausible reading of one run puts every candidate on the wall clock.
        let mut one_bad_run = slow_on_gpu.clone();
        one_bad_run.gpu[1] = None;
        assert_eq!(
            medians_on_one_clock(&[fast_on_gpu.clone(), one_bad_run]),
            (TuningClock::WallClock, millis(&[8, 5]))
        );
        let no_timestamps = RunTimes {
            wall: millis(&[1, 3, 2]),
            gpu: vec![None; 3],
        };
        assert_eq!(
            medians_on_one_clock(&[no_timestamps]),
            (TuningClock::WallClock, millis(&[2]))
        );
        assert_eq!(medians_on_one_clock(&[]), (TuningClock::WallClock, vec![]));
    }

    #[test]
    fn a_candidate_whose_result_disagrees_with_the_reference_is_rejected() {
        // The tuner keeps a kernel only if its result on the tuning data matches the portable
        // GEMM's: a miscompiled experimental kernel must never win on speed.
        let reference: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.125).collect();
        assert!(check_candidate_output(&reference, &reference, Precision::F32).is_ok());
        let nearly: Vec<f32> = reference.iter().map(|value| value * (1.0 + 1e-7)).collect();
        assert!(check_candidate_output(&nearly, &reference, Precision::F32).is_ok());
        let f16_rounding: Vec<f32> = reference.iter().map(|value| value * (1.0 + 1e-3)).collect();
        assert!(check_candidate_output(&f16_rounding, &reference, Precision::F32).is_err());
        assert!(check_candidate_output(&f16_rounding, &reference, Precision::F16).is_ok());
        let zeros = vec![0.0f32; reference.len()];
        assert!(check_candidate_output(&zeros, &reference, Precision::F16).is_err());
        let mut with_nan = reference.clone();
        with_nan[7] = f32::NAN;
        let why = check_candidate_output(&with_nan, &reference, Precision::F16).expect_err("NaN");
        assert!(why.contains("output[7]"), "{why}");
        assert!(check_candidate_output(&reference[1..], &reference, Precision::F16).is_err());
        // One wrong element among many: small in the L2 norm of the whole matrix, caught per
        // element.
        let wide: Vec<f32> = (0..10_000).map(|i| 1.0 + (i % 3) as f32 * 0.1).collect();
        let mut one_off = wide.clone();
        one_off[9_999] += 0.5;
        let why = check_candidate_output(&one_off, &wide, Precision::F16).expect_err("one element");
        assert!(why.contains("element"), "{why}");
        // A reference that is not finite lets nothing pass.
        let mut broken_reference = reference.clone();
        broken_reference[3] = f32::NAN;
        assert!(check_candidate_output(&reference, &broken_reference, Precision::F16).is_err());
    }
}
