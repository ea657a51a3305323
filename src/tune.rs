//! Kernel choice by measurement, per adapter and layer shape, cached on disk.
//!
//! For each distinct layer shape of a model (rows, out, in, precision) the tuner times every
//! kernel the device can run it with (the tiled GEMM variants, the cooperative-matrix one where
//! the adapter has it, and the texture GEMV for small batches) and keeps the fastest; for each
//! residual block shape it times the whole-block kernel against the two layers' chosen kernels
//! ([`choose_block`]). A candidate is kept only if its result on the tuning data agrees with the
//! reference's (the portable GEMM, or the two dispatches): one that fails or disagrees is left
//! out and reported. Choices are stored in a JSON file in the platform's cache
//! directory (`RESGRAPH_CACHE_DIR` overrides it), keyed by adapter, driver, shape and the
//! candidates offered, so the second compile on the same machine measures nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::epilogue::Activation;
use crate::error::Result;
use crate::gpu::buffers::DeviceMatrix;
use crate::gpu::context::GpuContext;
use crate::kernels::PreparedKernel;
use crate::kernels::gemm::{GemmOperands, GemmVariant, LinearWeights, prepare_gemm};
use crate::kernels::gemv::{self, GemvOperands, TextureWeights, prepare_gemv};
use crate::kernels::residual_block::{self, ResidualBlockOperands, prepare_residual_block};
use crate::precision::Precision;

/// Batches up to this size also try the texture GEMV (above it the GEMV is never competitive
/// and would only lengthen tuning).
const GEMV_CANDIDATE_MAX_ROWS: usize = 64;
/// Timed runs per candidate, after one untimed run.
const TIMED_RUNS: usize = 3;

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
        match self {
            KernelChoice::Gemm(variant) => variant.kernel().name,
            KernelChoice::GemvTexture => gemv::GEMV_TEXTURE_KERNEL.name,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        GemmVariant::ALL
            .into_iter()
            .map(KernelChoice::Gemm)
            .chain([KernelChoice::GemvTexture])
            .find(|choice| choice.name() == name)
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

/// One layer shape's entry: the choice and, when it was measured now, each candidate's time.
#[derive(Clone, Debug)]
pub struct ShapeChoice {
    /// The cache key (adapter, driver, backend, precision, rows, out, in, the candidates).
    pub key: String,
    /// The kernel chosen.
    pub choice: KernelChoice,
    /// Median time of each candidate, when measured in this compile (empty when from cache).
    pub measured: Vec<(KernelChoice, Duration)>,
    /// Candidates left out when measured now, and why: one that failed to build or run, or
    /// whose result disagreed with the portable GEMM's.
    pub rejected: Vec<(KernelChoice, String)>,
}

/// The kernels the tuner times for `rows` of an `out` × `inp` layer on `context`, the portable
/// GEMM first (it is the reference the others' results are checked against).
pub fn candidates(
    context: &GpuContext,
    precision: Precision,
    (rows, out, inp): (usize, usize, usize),
) -> Vec<KernelChoice> {
    let mut candidates: Vec<KernelChoice> = GemmVariant::ALL
        .into_iter()
        .map(KernelChoice::Gemm)
        .collect();
    if rows <= GEMV_CANDIDATE_MAX_ROWS {
        candidates.push(KernelChoice::GemvTexture);
    }
    candidates.retain(|candidate| candidate.supported(context, precision, (rows, out, inp)));
    candidates
}

/// Checks a candidate's result on the tuning data against the reference kernel's: finite, and
/// within the precision's tolerance. An experimental kernel that a driver miscompiles is thereby
/// never chosen, however fast.
pub fn check_candidate_output(
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
    pub key: String,
    /// The form chosen.
    pub form: BlockForm,
    /// Median time of each form, when measured in this compile (empty when from cache).
    pub measured: Vec<(BlockForm, Duration)>,
    /// Why the whole-block kernel was left out when measured now, if it was: it failed to build
    /// or run, or its result disagreed with the two dispatches'.
    pub rejected: Option<String>,
}

/// The on-disk cache of choices.
#[derive(Debug)]
pub struct TuningCache {
    path: Option<PathBuf>,
    entries: BTreeMap<String, Json>,
    /// Entries measured by this process, merged into the file's latest contents on save.
    added: BTreeMap<String, Json>,
}

impl TuningCache {
    /// The default cache file: `$RESGRAPH_CACHE_DIR/tuning.json`, else
    /// `<platform cache dir>/resgraph/tuning.json`; `None` where neither exists.
    pub fn default_path() -> Option<PathBuf> {
        match std::env::var_os("RESGRAPH_CACHE_DIR") {
            Some(dir) => Some(PathBuf::from(dir).join("tuning.json")),
            None => dirs::cache_dir().map(|dir| dir.join("resgraph").join("tuning.json")),
        }
    }

    /// Reads the cache at `path`; a missing or unreadable file is an empty cache (it is
    /// rewritten whole on the next save), never an error.
    pub fn open(path: Option<PathBuf>) -> Self {
        let entries = path.as_ref().map(read_entries).unwrap_or_default();
        TuningCache {
            path,
            entries,
            added: BTreeMap::new(),
        }
    }

    /// The cached choice for `key`, if any.
    pub fn get(&self, key: &str) -> Option<KernelChoice> {
        self.get_name(key).and_then(KernelChoice::from_name)
    }

    /// The name stored for `key`, if any.
    fn get_name(&self, key: &str) -> Option<&str> {
        self.entries
            .get(key)
            .and_then(|entry| entry.get("kernel"))
            .and_then(Json::as_str)
    }

    /// Records `choice` for `key` with every candidate's median time, by name.
    fn insert<'a>(
        &mut self,
        key: &str,
        choice: &str,
        measured: impl Iterator<Item = (&'a str, Duration)>,
    ) {
        let times: serde_json::Map<String, Json> = measured
            .map(|(candidate, time)| (candidate.to_string(), json!(time.as_secs_f64() * 1e3)))
            .collect();
        let entry = json!({"kernel": choice, "median_ms": times});
        self.entries.insert(key.to_string(), entry.clone());
        self.added.insert(key.to_string(), entry);
    }

    /// Writes what this process measured into the cache file (atomically). The file is read
    /// again first and the new entries merged into it, so that resgraph processes tuning at the
    /// same time keep each other's entries (short of a write in the same instant; the cache has
    /// no cross-process lock, and a lost entry is only measured again).
    pub fn save(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.added.is_empty() {
            return Ok(());
        }
        let mut latest = read_entries(path);
        latest.extend(std::mem::take(&mut self.added));
        self.entries = latest;
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|source| crate::Error::Io {
                path: folder.display().to_string(),
                source,
            })?;
        }
        let document = json!({"version": 1, "entries": self.entries});
        crate::model::write_file_atomically(path, document.to_string().as_bytes())?;
        Ok(())
    }

    /// The cache file.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }
}

/// The entries of the cache file at `path`; a missing or unreadable file has none.
fn read_entries(path: &PathBuf) -> BTreeMap<String, Json> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Json>(&text).ok())
        .and_then(|json| json.get("entries").and_then(Json::as_object).cloned())
        .map(|map| map.into_iter().collect())
        .unwrap_or_default()
}

/// The cache key of a layer shape on `context`'s adapter.
pub fn shape_key(
    context: &GpuContext,
    precision: Precision,
    rows: usize,
    out: usize,
    inp: usize,
) -> String {
    let info = context.adapter_info();
    // The candidates are part of the key: a choice made without a kernel (the cooperative one
    // turned off, or an older resgraph) must not stop that kernel from being timed later.
    let offered: Vec<&str> = candidates(context, precision, (rows, out, inp))
        .into_iter()
        .map(KernelChoice::name)
        .collect();
    format!(
        "{}|{} {}|{}|{}|m{rows}|n{out}|k{inp}|{}",
        info.name,
        info.driver,
        info.driver_info,
        info.backend,
        precision.name(),
        offered.join("+")
    )
}

/// Chooses a kernel for a `rows` × `out` × `inp` layer: from the cache, else by timing every
/// candidate the device supports and recording the winner.
pub fn choose(
    context: &GpuContext,
    cache: &mut TuningCache,
    precision: Precision,
    (rows, out, inp): (usize, usize, usize),
) -> Result<ShapeChoice> {
    let key = shape_key(context, precision, rows, out, inp);
    if let Some(choice) = cache.get(&key)
        && choice.supported(context, precision, (rows, out, inp))
    {
        return Ok(ShapeChoice {
            key,
            choice,
            measured: Vec::new(),
            rejected: Vec::new(),
        });
    }
    // The portable GEMM is the reference every other candidate's result is checked against. It
    // runs first, even where `candidates` would leave it out, so that a shape no kernel can run
    // is the portable GEMM's own typed error (a dispatch too large, say) rather than a choice.
    let portable = KernelChoice::Gemm(GemmVariant::Portable);
    let (portable_time, reference) = time_candidate(context, precision, portable, rows, out, inp)?;
    if let Some(index) = reference.iter().position(|value| !value.is_finite()) {
        return Err(crate::Error::Gpu {
            operation: "checking the portable GEMM while tuning".to_string(),
            message: format!("its output[{index}] is {} on finite data", reference[index]),
        });
    }
    let mut measured = vec![(portable, portable_time)];
    let mut rejected = Vec::new();
    for candidate in candidates(context, precision, (rows, out, inp)) {
        if candidate == portable {
            continue;
        }
        match time_candidate(context, precision, candidate, rows, out, inp) {
            Ok((time, output)) => match check_candidate_output(&output, &reference, precision) {
                Ok(()) => measured.push((candidate, time)),
                Err(why) => rejected.push((candidate, why)),
            },
            Err(error) => {
                // A candidate that failed is left out, unless the device itself is gone.
                context.wait_idle()?;
                rejected.push((candidate, error.to_string()));
            }
        }
    }
    let choice = measured
        .iter()
        .min_by_key(|(_, time)| *time)
        .map_or(portable, |(choice, _)| *choice);
    let named = measured
        .iter()
        .map(|(candidate, time)| (candidate.name(), *time));
    cache.insert(&key, choice.name(), named);
    Ok(ShapeChoice {
        key,
        choice,
        measured,
        rejected,
    })
}

/// Median time of one dispatch of `candidate` (submitted and waited for) on synthetic data, and
/// its result, for checking.
fn time_candidate(
    context: &GpuContext,
    precision: Precision,
    candidate: KernelChoice,
    rows: usize,
    out: usize,
    inp: usize,
) -> Result<(Duration, Vec<f32>)> {
    let input = tuning_matrix(context, precision, "tuning input", (rows, inp), (1.0, 1))?;
    let residual = tuning_matrix(
        context,
        precision,
        "tuning residual",
        (rows, out),
        (0.25, 2),
    )?;
    let output = tuning_matrix(context, precision, "tuning output", (rows, out), (0.0, 3))?;
    // Poisoned, so that an output the candidate never writes shows up as NaN.
    output.fill(context, f32::NAN)?;
    // The most expensive epilogue, as in a residual block's second layer.
    let layer = prepare_candidate(
        context,
        precision,
        candidate,
        (out, inp),
        &input,
        Some(&residual),
        &output,
    )?;
    let time = median_time(context, |pass| layer.record(pass))?;
    Ok((time, output.read(context)?))
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

/// Prepares `relu(input · Wᵀ [+ residual])` for an `out` × `inp` layer of synthetic weights with
/// `candidate`.
fn prepare_candidate(
    context: &GpuContext,
    precision: Precision,
    candidate: KernelChoice,
    (out, inp): (usize, usize),
    input: &DeviceMatrix,
    residual: Option<&DeviceMatrix>,
    output: &DeviceMatrix,
) -> Result<PreparedKernel> {
    let weight = tuning_weights(out, inp);
    Ok(match candidate {
        KernelChoice::Gemm(variant) => {
            let weights =
                LinearWeights::upload_with_precision(context, out, inp, &weight, None, precision)?;
            prepare_gemm(
                context,
                &GemmOperands {
                    input,
                    weights: &weights,
                    residual,
                    output,
                    activation: Activation::Relu,
                },
                variant,
            )?
        }
        KernelChoice::GemvTexture => {
            let weights =
                TextureWeights::upload_with_precision(context, out, inp, &weight, None, precision)?;
            prepare_gemv(
                context,
                &GemvOperands {
                    input,
                    weights: &weights,
                    residual,
                    output,
                    activation: Activation::Relu,
                },
            )?
        }
    })
}

/// Median time of recording `record` into one compute pass, submitting it and waiting, after
/// one untimed run.
fn median_time(
    context: &GpuContext,
    record: impl Fn(&mut wgpu::ComputePass<'_>),
) -> Result<Duration> {
    let run = || -> Result<()> {
        context.submit_pass("resgraph tuning", &record)?;
        context.wait_idle()
    };
    run()?;
    let mut times = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let started = Instant::now();
        run()?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// The cache key of a residual block of `width` with a `hidden` layer, run for `rows` rows, whose
/// layers would otherwise run with `split`.
pub fn block_key(
    context: &GpuContext,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
    split: (KernelChoice, KernelChoice),
) -> String {
    let info = context.adapter_info();
    format!(
        "{}|{} {}|{}|{}|block|m{rows}|w{width}|h{hidden}|{}+{}",
        info.name,
        info.driver,
        info.driver_info,
        info.backend,
        precision.name(),
        split.0.name(),
        split.1.name()
    )
}

/// Chooses how a residual block runs: from the cache, else by timing the whole-block kernel
/// against the two layers' chosen kernels recorded in one pass (as the executor runs them).
/// The caller checks first that the device can run the whole-block kernel.
pub fn choose_block(
    context: &GpuContext,
    cache: &mut TuningCache,
    precision: Precision,
    (rows, width, hidden): (usize, usize, usize),
    split: (KernelChoice, KernelChoice),
) -> Result<BlockChoice> {
    let key = block_key(context, precision, (rows, width, hidden), split);
    if let Some(form) = cache.get_name(&key).and_then(BlockForm::from_name) {
        return Ok(BlockChoice {
            key,
            form,
            measured: Vec::new(),
            rejected: None,
        });
    }
    let input = tuning_matrix(
        context,
        precision,
        "tuning block input",
        (rows, width),
        (1.0, 4),
    )?;
    let hidden_matrix = tuning_matrix(
        context,
        precision,
        "tuning block hidden",
        (rows, hidden),
        (0.0, 5),
    )?;
    let output = tuning_matrix(
        context,
        precision,
        "tuning block output",
        (rows, width),
        (0.0, 6),
    )?;

    let upload = |out: usize, inp: usize| {
        LinearWeights::upload_with_precision(
            context,
            out,
            inp,
            &tuning_weights(out, inp),
            None,
            precision,
        )
    };
    let first_layer = prepare_candidate(
        context,
        precision,
        split.0,
        (hidden, width),
        &input,
        None,
        &hidden_matrix,
    )?;
    let second_layer = prepare_candidate(
        context,
        precision,
        split.1,
        (width, hidden),
        &hidden_matrix,
        Some(&input),
        &output,
    )?;
    let two = median_time(context, |pass| {
        first_layer.record(pass);
        second_layer.record(pass);
    })?;
    let expected = output.read(context)?;
    if let Some(index) = expected.iter().position(|value| !value.is_finite()) {
        return Err(crate::Error::Gpu {
            operation: "checking a residual block's two dispatches while tuning".to_string(),
            message: format!("output[{index}] is {} on finite data", expected[index]),
        });
    }

    let mut measured = vec![(BlockForm::TwoDispatches, two)];
    let whole_block = || -> Result<(Duration, Vec<f32>)> {
        let (first, second) = (upload(hidden, width)?, upload(width, hidden)?);
        let block = prepare_residual_block(
            context,
            &ResidualBlockOperands {
                input: &input,
                first: &first,
                second: &second,
                output: &output,
            },
        )?;
        output.fill(context, f32::NAN)?;
        let time = median_time(context, |pass| block.record(pass))?;
        Ok((time, output.read(context)?))
    };
    let rejected = match whole_block() {
        Err(error) => {
            // Left out, unless the device itself is gone.
            context.wait_idle()?;
            Some(error.to_string())
        }
        Ok((time, result)) => match check_candidate_output(&result, &expected, precision) {
            Ok(()) => {
                measured.push((BlockForm::WholeBlock, time));
                None
            }
            Err(why) => Some(why),
        },
    };
    let form = measured
        .iter()
        .min_by_key(|(_, time)| *time)
        .map_or(BlockForm::TwoDispatches, |(form, _)| *form);
    let named = measured.iter().map(|(form, time)| (form.name(), *time));
    cache.insert(&key, form.name(), named);
    Ok(BlockChoice {
        key,
        form,
        measured,
        rejected,
    })
}
