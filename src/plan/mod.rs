//! The planner: turns a [`Graph`] into the steps the executor records, with fusion and a memory
//! plan. Pure Rust, like the graph: no GPU type appears here, so plans are tested without a device.
//!
//! - `fuse` folds `linear → relu` and `linear → add → relu` into one GEMM with an epilogue, so a
//!   residual block is two dispatches.
//! - `memory` assigns every intermediate value to an activation slot by liveness, so a stack of
//!   any depth uses a fixed set of slots.

mod fuse;
mod memory;

use crate::epilogue::Activation;
use crate::error::Result;
use crate::graph::{Graph, LinearParams};

/// A value the steps pass between them: the graph input or one step's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ValueId(pub usize);

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Storage {
    /// The model's input buffer.
    Input,
    /// Activation slot `n` of the memory plan.
    Slot(usize),
}

/// An elementwise operation left over after fusion (a ReLU or an add that follows no linear layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ElementwiseOp {
    /// `max(left, 0)`.
    Relu,
    /// `left + right`.
    Add,
}

/// A pooling step's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PoolOp {
    /// The maximum over each window.
    Max(crate::graph::PoolWindow),
    /// The mean over each window; the flag is PyTorch's `count_include_pad`.
    Average(crate::graph::PoolWindow, bool),
    /// The mean over all pixels, per channel.
    GlobalAverage,
}

/// What one step computes.
#[derive(Clone, Debug)]
pub(crate) enum StepKind {
    /// `act(input · Wᵀ + b [+ residual])` for linear layer `layer` of [`Plan::layers`].
    Gemm {
        /// Index into [`Plan::layers`].
        layer: usize,
        /// X.
        input: ValueId,
        /// R, when an add was fused.
        residual: Option<ValueId>,
        /// The activation applied last.
        activation: Activation,
    },
    /// `act(conv(input, W) + b [+ residual])` for convolution `conv` of `Plan::convs`, over
    /// NHWC images of `input_size` (height, width).
    Conv {
        /// Index into `Plan::convs`.
        conv: usize,
        /// X, NHWC.
        input: ValueId,
        /// The input's height and width.
        input_size: (usize, usize),
        /// R, when an add was fused.
        residual: Option<ValueId>,
        /// The activation applied last.
        activation: Activation,
    },
    /// A pool over NHWC images of `input_shape` (height, width, channels).
    Pool {
        /// Which pool.
        op: PoolOp,
        /// X, NHWC.
        input: ValueId,
        /// The input's height, width and channels.
        input_shape: (usize, usize, usize),
    },
    /// An elementwise operation.
    Elementwise {
        /// Which one.
        op: ElementwiseOp,
        /// The first operand.
        left: ValueId,
        /// The second operand (for `Add`).
        right: Option<ValueId>,
    },
}

/// One dispatch of the executor.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    /// What it computes.
    pub kind: StepKind,
    /// The value it writes.
    pub output: ValueId,
    /// The graph nodes it covers, joined with `+` (e.g. `blocks.0.fc2+blocks.0.add+blocks.0.relu2`).
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "read by the fusion tests; kept so that a step can be traced to its graph nodes"
        )
    )]
    pub name: String,
}

impl Step {
    /// The values the step reads.
    pub fn reads(&self) -> Vec<ValueId> {
        match &self.kind {
            StepKind::Gemm {
                input, residual, ..
            }
            | StepKind::Conv {
                input, residual, ..
            } => std::iter::once(*input).chain(*residual).collect(),
            StepKind::Pool { input, .. } => vec![*input],
            StepKind::Elementwise { left, right, .. } => {
                std::iter::once(*left).chain(*right).collect()
            }
        }
    }
}

/// Two consecutive GEMM steps that form a residual block,
/// `relu(W2·relu(W1·a + b1) + b2 + a)`, which the whole-block kernel can run as one dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ResidualBlockSteps {
    /// The index of the first layer's step in `Plan::steps`.
    pub first_step: usize,
    /// The index of the second layer's step, the one right after the first.
    pub second_step: usize,
    /// The first layer (`width → hidden`), an index into [`Plan::layers`].
    pub first_layer: usize,
    /// The second layer (`hidden → width`).
    pub second_layer: usize,
    /// The block input `a`, also its shortcut.
    pub input: ValueId,
    /// The block output.
    pub output: ValueId,
    /// The width of `a` and of the output.
    pub width: usize,
    /// The hidden width.
    pub hidden: usize,
}

/// A compiled-for-execution view of a graph: fused steps in order, where each value lives, and how
/// wide each activation slot must be.
///
/// Only [`Plan::new`] and [`Plan::dispatch_count`] are public, because `resgraph inspect` reports
/// the dispatch count after fusion; everything else is internal to the crate.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The linear layers the GEMM steps use.
    pub(crate) layers: Vec<LinearParams>,
    /// The convolutions the convolution steps use.
    pub(crate) convs: Vec<crate::graph::Conv2dParams>,
    /// The steps, in execution order.
    pub(crate) steps: Vec<Step>,
    /// The width of every value.
    pub(crate) value_widths: Vec<usize>,
    /// Where every value lives.
    pub(crate) value_storage: Vec<Storage>,
    /// The widest value assigned to each slot: a slot holds `max_batch × width` floats.
    pub(crate) slot_widths: Vec<usize>,
    /// The graph input.
    pub(crate) input: ValueId,
    /// The graph output.
    pub(crate) output: ValueId,
}

impl Plan {
    /// Fuses and plans memory for `graph`.
    pub fn new(graph: &Graph) -> Result<Self> {
        let fused = fuse::fuse(graph)?;
        let (value_storage, slot_widths) =
            memory::assign_slots(&fused.steps, &fused.value_widths, fused.input, fused.output);
        Ok(Plan {
            layers: fused.layers,
            convs: fused.convs,
            steps: fused.steps,
            value_widths: fused.value_widths,
            value_storage,
            slot_widths,
            input: fused.input,
            output: fused.output,
        })
    }

    /// Every residual block among the steps: a GEMM step `h = relu(a·W1ᵀ + b1)` directly
    /// followed by `relu(h·W2ᵀ + b2 + a)`, where nothing else reads `h` and `h` is not the output.
    pub(crate) fn residual_blocks(&self) -> Vec<ResidualBlockSteps> {
        // How many times each value is read, counted once for the whole plan, so that finding
        // the blocks is linear in depth (a scan of every step per candidate made deep models
        // quadratic).
        let mut reads = vec![0usize; self.value_widths.len()];
        for step in &self.steps {
            for value in step.reads() {
                reads[value.0] += 1;
            }
        }
        let mut blocks = Vec::new();
        let mut index = 0;
        while index + 1 < self.steps.len() {
            match self.residual_block_at(index, &reads) {
                Some(block) => {
                    blocks.push(block);
                    index += 2;
                }
                None => index += 1,
            }
        }
        blocks
    }

    /// The residual block whose first step is `index`, if it is one; `reads` counts each
    /// value's readers over the whole plan.
    fn residual_block_at(&self, index: usize, reads: &[usize]) -> Option<ResidualBlockSteps> {
        let (first, second) = (&self.steps[index], &self.steps[index + 1]);
        let StepKind::Gemm {
            layer: first_layer,
            input,
            residual: None,
            activation: Activation::Relu,
        } = first.kind
        else {
            return None;
        };
        let StepKind::Gemm {
            layer: second_layer,
            input: second_input,
            residual: Some(shortcut),
            activation: Activation::Relu,
        } = second.kind
        else {
            return None;
        };
        let hidden_value = first.output;
        let read_by_second = second
            .reads()
            .iter()
            .filter(|&&value| value == hidden_value)
            .count();
        let hidden_read_elsewhere = reads[hidden_value.0] > read_by_second;
        if second_input != hidden_value
            || shortcut != input
            || hidden_value == self.output
            || hidden_read_elsewhere
        {
            return None;
        }
        let width = self.value_widths[input.0];
        let hidden = self.value_widths[hidden_value.0];
        if self.value_widths[second.output.0] != width {
            return None;
        }
        Some(ResidualBlockSteps {
            first_step: index,
            second_step: index + 1,
            first_layer,
            second_layer,
            input,
            output: second.output,
            width,
            hidden,
        })
    }

    /// Dispatches per run.
    pub fn dispatch_count(&self) -> usize {
        self.steps.len()
    }

    /// Activation bytes for a batch of `max_batch` rows of `element_bytes` per value (the slots;
    /// the input buffer not counted).
    pub(crate) fn activation_bytes(&self, max_batch: usize, element_bytes: u64) -> u64 {
        self.slot_widths
            .iter()
            .map(|&width| (width * max_batch) as u64 * element_bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::synthetic::{MlpShape, mlp};

    #[test]
    fn planning_a_deep_stack_takes_time_linear_in_its_depth() {
        // The hostile probe's depth 30000 took 47 s when finding the residual blocks scanned
        // every step per candidate (quadratic); linear, it takes milliseconds. The bound is
        // loose enough for a debug build on a loaded machine.
        let graph = mlp(MlpShape::square(1, 30_000), 1.0, 1).expect("graph");
        let started = std::time::Instant::now();
        let plan = Plan::new(&graph).expect("plan");
        let blocks = plan.residual_blocks();
        assert_eq!(blocks.len(), 30_000);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "planning 30000 blocks took {:?}",
            started.elapsed()
        );
    }

    /// A residual stack with an awkward input width, `depth` blocks and a 7-wide head.
    fn shape(input_width: usize, width: usize, hidden_width: usize, depth: usize) -> MlpShape {
        MlpShape {
            input_width,
            width,
            hidden_width,
            depth,
            output_width: 7,
            residual: true,
        }
    }

    #[test]
    fn the_planner_finds_every_residual_block_and_no_plain_one() {
        let graph = mlp(shape(20, 33, 17, 5), 1.0, 1).expect("graph");
        let plan = Plan::new(&graph).expect("plan");
        let blocks = plan.residual_blocks();
        assert_eq!(blocks.len(), 5);
        for block in &blocks {
            assert_eq!((block.width, block.hidden), (33, 17));
            assert_eq!(block.input, plan.steps[block.first_step].reads()[0]);
            assert_eq!(block.output, plan.steps[block.first_step + 1].output);
        }
        let plain = mlp(
            MlpShape {
                residual: false,
                ..shape(20, 33, 17, 5)
            },
            1.0,
            1,
        )
        .expect("plain graph");
        assert!(
            Plan::new(&plain)
                .expect("plan")
                .residual_blocks()
                .is_empty()
        );
    }
}
