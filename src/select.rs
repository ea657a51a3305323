//! Kernel selection: the step between the plan and the executor that decides which kernel runs
//! each step.
//!
//! `select` takes a `Plan`, the device's capabilities (through its context), what the caller
//! asked for ([`SelectionOptions`]) and, when tuning by measurement, the tuning cache, and returns
//! a `Schedule`: every dispatch of a run with its operands and its kernel, a fused residual
//! block already a step kind of its own. The executor uploads each step's weights in the layout
//! its kernel reads, builds and records exactly what the schedule says, and chooses nothing
//! itself.
//!
//! Choice is either by rule (deterministic, instant) or by measurement (`crate::tune`, which
//! times the candidates on this device and caches the winner). What the caller forces is honoured
//! either way, never silently ignored:
//! - a forced GEMM variant replaces the rule-based variant for every layer that runs a tiled
//!   GEMM, also when tuning by measurement (which then only decides the residual blocks' form,
//!   timing the whole-block kernel against the forced layers' kernels);
//! - `small_batch_kernel: false` keeps every layer on the tiled GEMM: the rules never pick the
//!   texture GEMV, and the tuner does not time it.

use crate::epilogue::Activation;
use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::kernels::conv2d::Conv2dVariant;
use crate::kernels::gemm::GemmVariant;
use crate::kernels::gemv::{GemvVariant, TextureWeights};
use crate::kernels::residual_block;
use crate::plan::{ElementwiseOp, Plan, PoolOp, ResidualBlockSteps, StepKind, ValueId};
use crate::precision::Precision;
use crate::tune::{self, BlockForm, KernelChoice, LayerCandidates, TuningCache, TuningReport};

/// When a compiled model runs a residual block (`relu(W2·relu(W1·a + b1) + b2 + a)`) with the
/// whole-block kernel instead of two GEMM dispatches. Either way the block needs a device and
/// shape the kernel supports (see [`crate::kernels::residual_block::supported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlockFusion {
    /// Where it measured faster than the two dispatches: with `Tuning::Measure` each block
    /// shape is timed both ways (and cached); with `Tuning::Heuristic`, which measures nothing,
    /// blocks run as two dispatches.
    #[default]
    WhereFaster,
    /// For every block the kernel supports.
    Always,
    /// Never.
    Never,
}

/// What the caller asks of kernel selection (the selection fields of
/// [`crate::CompileOptions`]).
#[derive(Clone, Copy, Debug)]
pub struct SelectionOptions {
    /// The largest batch a run may use: kernels are chosen for this row count.
    pub max_batch: usize,
    /// How weights and activations are stored.
    pub precision: Precision,
    /// A GEMM variant every tiled-GEMM layer must run with, instead of a chosen one.
    pub forced_gemm_variant: Option<GemmVariant>,
    /// Whether the texture GEMV may run small batches (picked by the rules or timed by the
    /// tuner).
    pub small_batch_kernel: bool,
    /// When a residual block runs as one dispatch of the whole-block kernel.
    pub block_fusion: BlockFusion,
    /// How long tuning may search the tiled GEMM family per layer shape (zero: not at all).
    pub tiled_search: std::time::Duration,
}

/// One dispatch of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScheduledStep {
    /// `act(input · Wᵀ + b [+ residual])` for one layer, run with `kernel`.
    Layer {
        /// The layer, an index into [`Plan::layers`].
        layer: usize,
        /// X.
        input: ValueId,
        /// R, when an add was fused.
        residual: Option<ValueId>,
        /// The activation applied last.
        activation: Activation,
        /// The value it writes.
        output: ValueId,
        /// The kernel that runs it.
        kernel: KernelChoice,
    },
    /// An elementwise ReLU or add that follows no linear layer.
    Elementwise {
        /// Which operation.
        op: ElementwiseOp,
        /// The first operand.
        left: ValueId,
        /// The second operand (for an add).
        right: Option<ValueId>,
        /// The value it writes.
        output: ValueId,
    },
    /// Two GEMM steps of the plan that form a residual block, run as one dispatch of the
    /// whole-block kernel (which reads both layers in the blocked GEMM layout).
    ResidualBlock(ResidualBlockSteps),
    /// `act(conv(input, W) + b [+ residual])`, run by the implicit-GEMM convolution.
    Conv {
        /// The convolution variant that runs it.
        variant: Conv2dVariant,
        /// The convolution, an index into `Plan::convs`.
        conv: usize,
        /// X, NHWC images.
        input: ValueId,
        /// The input's height and width.
        input_size: (usize, usize),
        /// R, when an add was fused.
        residual: Option<ValueId>,
        /// The activation applied last.
        activation: Activation,
        /// The value it writes.
        output: ValueId,
    },
    /// A pool over NHWC images.
    Pool {
        /// Which pool.
        op: PoolOp,
        /// X, NHWC images.
        input: ValueId,
        /// The input's height, width and channels.
        input_shape: (usize, usize, usize),
        /// The value it writes.
        output: ValueId,
    },
}

/// What selection decided for one plan on one device.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    /// The dispatches of one run, in order.
    pub steps: Vec<ScheduledStep>,
    /// What measuring did (empty under the rules).
    pub tuning: TuningReport,
}

/// The GEMM variant the rules pick without measuring: the subgroup one where the device has it.
/// The cooperative variant is left to the tuner, which times it against the others.
pub fn rule_based_gemm_variant(context: &GpuContext, precision: Precision) -> GemmVariant {
    if GemmVariant::Subgroup.supported_by(context, precision) {
        GemmVariant::Subgroup
    } else {
        GemmVariant::Portable
    }
}

/// Chooses every step's kernel for `plan` on `context`: by measurement when `cache` is given
/// (filling it; the caller saves it), else by the rules.
pub(crate) async fn select(
    context: &GpuContext,
    plan: &Plan,
    options: &SelectionOptions,
    mut cache: Option<&mut TuningCache>,
) -> Result<Schedule> {
    let mut tuning = TuningReport {
        cache_path: cache.as_ref().and_then(|cache| cache.path().cloned()),
        ..TuningReport::default()
    };
    let mut layer_kernels = Vec::with_capacity(plan.layers.len());
    for params in &plan.layers {
        let shape = (
            options.max_batch,
            params.out_features(),
            params.in_features(),
        );
        let kernel = match (options.forced_gemm_variant, cache.as_deref_mut()) {
            (None, Some(cache)) => {
                measured_layer_kernel(context, cache, options, shape, &mut tuning).await?
            }
            (Some(_), _) | (None, None) => rule_based_layer_kernel(context, options, shape),
        };
        layer_kernels.push(kernel);
    }
    let mut fused_blocks = Vec::new();
    for block in plan.residual_blocks() {
        let split = (
            layer_kernels[block.first_layer],
            layer_kernels[block.second_layer],
        );
        if fuse_block(
            context,
            options,
            &block,
            split,
            cache.as_deref_mut(),
            &mut tuning,
        )
        .await?
        {
            fused_blocks.push(block);
        }
    }
    // The subgroup convolution shares weights across 8 invocations, as the subgroup GEMM does,
    // wherever the device has subgroups of at least 8.
    let conv_variant = if Conv2dVariant::Subgroup.supported_by(context, options.precision) {
        Conv2dVariant::Subgroup
    } else {
        Conv2dVariant::Portable
    };
    let kernels = (layer_kernels.as_slice(), conv_variant);
    Ok(schedule_steps(plan, kernels, &fused_blocks, tuning))
}

/// Each layer's kernel by the rules: the texture GEMV for models of at most
/// [`GEMV_MAX_BATCH`](crate::kernels::gemv::GEMV_MAX_BATCH)
/// rows (fewer for its staged variant, [`GemvVariant::rule_max_batch`]) where the caller allows
/// it and the layer fits a texture, else the forced GEMM variant or the rule-based one (see
/// [`rule_based_gemm_variant`]).
fn rule_based_layer_kernel(
    context: &GpuContext,
    options: &SelectionOptions,
    (rows, out, inp): (usize, usize, usize),
) -> KernelChoice {
    // Small batches read weights from textures (see kernels::gemv); a model compiled for larger
    // batches keeps the tiled GEMM's buffer layout for every run.
    let small_batch = options.small_batch_kernel
        && GemvVariant::for_device(context).is_some_and(|variant| rows <= variant.rule_max_batch())
        && TextureWeights::fits(context, out, inp);
    if small_batch {
        KernelChoice::GemvTexture
    } else {
        KernelChoice::Gemm(
            options
                .forced_gemm_variant
                .unwrap_or_else(|| rule_based_gemm_variant(context, options.precision)),
        )
    }
}

/// A layer's kernel by measurement: from this compile's report when the shape was already
/// chosen, else from the tuner (cache or timing).
async fn measured_layer_kernel(
    context: &GpuContext,
    cache: &mut TuningCache,
    options: &SelectionOptions,
    (rows, out, inp): (usize, usize, usize),
    tuning: &mut TuningReport,
) -> Result<KernelChoice> {
    let allowed = LayerCandidates {
        texture_gemv: options.small_batch_kernel,
        tiled_search: options.tiled_search,
    };
    let key = tune::shape_key(context, options.precision, (rows, out, inp), allowed);
    if let Some(known) = tuning.shapes.iter().find(|entry| entry.key == key) {
        return Ok(known.choice);
    }
    let entry = tune::choose(context, cache, options.precision, (rows, out, inp), allowed).await?;
    tuning.count(!entry.measured.is_empty());
    let choice = entry.choice;
    tuning.shapes.push(entry);
    Ok(choice)
}

/// Whether `block` runs as one dispatch of the whole-block kernel: never where the device or
/// shape does not allow it, else as [`BlockFusion`] says (measuring with `cache` for
/// [`BlockFusion::WhereFaster`]; without a cache, which measures nothing, blocks stay two
/// dispatches).
async fn fuse_block(
    context: &GpuContext,
    options: &SelectionOptions,
    block: &ResidualBlockSteps,
    split: (KernelChoice, KernelChoice),
    cache: Option<&mut TuningCache>,
    tuning: &mut TuningReport,
) -> Result<bool> {
    let shape = (options.max_batch, block.width, block.hidden);
    if !residual_block::supported(context, options.precision, shape) {
        return Ok(false);
    }
    let cache = match (options.block_fusion, cache) {
        (BlockFusion::Never, _) | (BlockFusion::WhereFaster, None) => return Ok(false),
        (BlockFusion::Always, _) => return Ok(true),
        (BlockFusion::WhereFaster, Some(cache)) => cache,
    };
    let key = tune::block_key(context, options.precision, shape, split);
    if let Some(known) = tuning.blocks.iter().find(|entry| entry.key == key) {
        return Ok(known.form == BlockForm::WholeBlock);
    }
    let entry = tune::choose_block(context, cache, options.precision, shape, split).await?;
    tuning.count(!entry.measured.is_empty());
    let fuse = entry.form == BlockForm::WholeBlock;
    tuning.blocks.push(entry);
    Ok(fuse)
}

/// The run's dispatches in plan order, each fused block in place of its two GEMM steps.
fn schedule_steps(
    plan: &Plan,
    (layer_kernels, conv_variant): (&[KernelChoice], Conv2dVariant),
    fused_blocks: &[ResidualBlockSteps],
    tuning: TuningReport,
) -> Schedule {
    let mut steps = Vec::with_capacity(plan.steps.len());
    let mut index = 0;
    while index < plan.steps.len() {
        if let Some(block) = fused_blocks.iter().find(|block| block.first_step == index) {
            steps.push(ScheduledStep::ResidualBlock(*block));
            index = block.second_step + 1;
            continue;
        }
        let step = &plan.steps[index];
        steps.push(match step.kind {
            StepKind::Gemm {
                layer,
                input,
                residual,
                activation,
            } => ScheduledStep::Layer {
                layer,
                input,
                residual,
                activation,
                output: step.output,
                kernel: layer_kernels[layer],
            },
            StepKind::Conv {
                conv,
                input,
                input_size,
                residual,
                activation,
            } => ScheduledStep::Conv {
                variant: conv_variant,
                conv,
                input,
                input_size,
                residual,
                activation,
                output: step.output,
            },
            StepKind::Pool {
                op,
                input,
                input_shape,
            } => ScheduledStep::Pool {
                op,
                input,
                input_shape,
                output: step.output,
            },
            StepKind::Elementwise { op, left, right } => ScheduledStep::Elementwise {
                op,
                left,
                right,
                output: step.output,
            },
        });
        index += 1;
    }
    Schedule { steps, tuning }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::synthetic::{MlpShape, mlp};

    fn three_block_plan() -> Plan {
        let graph = mlp(MlpShape::square(8, 3), 1.0, 1).expect("graph");
        Plan::new(&graph).expect("plan")
    }

    #[test]
    fn a_fused_block_replaces_exactly_its_two_gemm_steps() {
        let plan = three_block_plan();
        let blocks = plan.residual_blocks();
        assert_eq!(blocks.len(), 3);
        let kernels = vec![KernelChoice::Gemm(GemmVariant::Portable); plan.layers.len()];
        // Fuse the middle block only.
        let schedule = schedule_steps(
            &plan,
            (&kernels, Conv2dVariant::Portable),
            &blocks[1..2],
            TuningReport::default(),
        );
        assert_eq!(schedule.steps.len(), plan.steps.len() - 1);
        assert_eq!(schedule.steps[2], ScheduledStep::ResidualBlock(blocks[1]));
        let layers: Vec<usize> = schedule
            .steps
            .iter()
            .filter_map(|step| match step {
                ScheduledStep::Layer { layer, .. } => Some(*layer),
                _ => None,
            })
            .collect();
        let fused = [blocks[1].first_layer, blocks[1].second_layer];
        assert_eq!(layers.len(), plan.layers.len() - 2);
        assert!(layers.iter().all(|layer| !fused.contains(layer)));
        // The steps still chain: each reads what an earlier one wrote (or the input).
        let mut written = vec![plan.input];
        for step in &schedule.steps {
            let (reads, output) = match *step {
                ScheduledStep::Layer {
                    input,
                    residual,
                    output,
                    ..
                } => (std::iter::once(input).chain(residual).collect(), output),
                ScheduledStep::ResidualBlock(block) => (vec![block.input], block.output),
                ScheduledStep::Conv {
                    input,
                    residual,
                    output,
                    ..
                } => (std::iter::once(input).chain(residual).collect(), output),
                ScheduledStep::Pool { input, output, .. } => (vec![input], output),
                ScheduledStep::Elementwise {
                    left,
                    right,
                    output,
                    ..
                } => (
                    std::iter::once(left).chain(right).collect::<Vec<_>>(),
                    output,
                ),
            };
            assert!(
                reads.iter().all(|value| written.contains(value)),
                "{step:?}"
            );
            written.push(output);
        }
        assert_eq!(written.last(), Some(&plan.output));
    }

    #[test]
    fn without_fused_blocks_every_plan_step_is_scheduled_with_its_layers_kernel() {
        let plan = three_block_plan();
        let kernels: Vec<KernelChoice> = (0..plan.layers.len())
            .map(|layer| {
                if layer % 2 == 0 {
                    KernelChoice::GemvTexture
                } else {
                    KernelChoice::Gemm(GemmVariant::Subgroup)
                }
            })
            .collect();
        let schedule = schedule_steps(
            &plan,
            (&kernels, Conv2dVariant::Portable),
            &[],
            TuningReport::default(),
        );
        assert_eq!(schedule.steps.len(), plan.steps.len());
        for step in &schedule.steps {
            match *step {
                ScheduledStep::Layer { layer, kernel, .. } => assert_eq!(kernel, kernels[layer]),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
