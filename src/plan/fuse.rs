//! Fusion: `linear → relu` becomes one GEMM with a ReLU epilogue, and `linear → add(·, r) → relu`
//! one GEMM with a residual-and-ReLU epilogue; a convolution fuses the same way into one
//! implicit-GEMM dispatch. A node can only be folded into its consumer when it
//! has exactly one consumer and is not the graph's output, since otherwise its value is needed on
//! its own.

use std::collections::HashMap;

use crate::epilogue::Activation;
use crate::error::{Error, Result};
use crate::graph::{Conv2dParams, Graph, LinearParams, NodeId, Op, ValueShape};
use crate::plan::{ElementwiseOp, PoolOp, Step, StepKind, ValueId};

/// The steps before memory planning.
#[derive(Debug)]
pub struct Fused {
    /// Linear layers, indexed by the GEMM steps.
    pub layers: Vec<LinearParams>,
    /// Convolutions, indexed by the convolution steps.
    pub convs: Vec<Conv2dParams>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Width of each value.
    pub value_widths: Vec<usize>,
    /// The graph input's value.
    pub input: ValueId,
    /// The graph output's value.
    pub output: ValueId,
}

/// A node not yet emitted because it may fold into its consumer.
#[derive(Clone, Debug)]
enum Pending {
    /// A linear layer or convolution waiting for a ReLU or an add.
    Linear { node: NodeId },
    /// A linear layer or convolution plus a residual add, waiting for a ReLU.
    LinearAdd {
        linear: NodeId,
        add: NodeId,
        residual: ValueId,
    },
}

struct Fuser<'g> {
    graph: &'g Graph,
    consumers: Vec<usize>,
    values: HashMap<NodeId, ValueId>,
    pending: HashMap<NodeId, Pending>,
    /// Flatten nodes of spatial images that alias their input (stored row, column, channel),
    /// with the image's dimensions: a linear layer reading one gets its weight columns permuted
    /// from PyTorch's (channel, row, column) order.
    channel_last_flattens: HashMap<NodeId, (usize, usize, usize)>,
    fused: Fused,
}

/// Fuses `graph` into steps.
pub fn fuse(graph: &Graph) -> Result<Fused> {
    let input_width = graph.input_width();
    let mut fuser = Fuser {
        graph,
        consumers: graph.consumer_counts(),
        values: HashMap::new(),
        pending: HashMap::new(),
        channel_last_flattens: HashMap::new(),
        fused: Fused {
            layers: Vec::new(),
            convs: Vec::new(),
            steps: Vec::new(),
            value_widths: vec![input_width],
            input: ValueId(0),
            output: ValueId(0),
        },
    };
    fuser.values.insert(graph.input(), ValueId(0));
    for index in 0..graph.nodes().len() {
        fuser.visit(NodeId(index))?;
    }
    let output = fuser.materialize(graph.output());
    fuser.fused.output = output;
    Ok(fuser.fused)
}

impl Fuser<'_> {
    /// The single consumer of `node`, if it has exactly one and is not the graph output.
    fn sole_consumer(&self, node: NodeId) -> Option<NodeId> {
        if self.consumers[node.0] != 1 || node == self.graph.output() {
            return None;
        }
        self.graph
            .nodes()
            .iter()
            .enumerate()
            .skip(node.0 + 1)
            .find(|(_, candidate)| candidate.op.inputs().contains(&node))
            .map(|(index, _)| NodeId(index))
    }

    fn visit(&mut self, id: NodeId) -> Result<()> {
        let node = &self.graph.nodes()[id.0];
        match &node.op {
            Op::Input => {}
            Op::MaxPool2d { input, window } => {
                let op = PoolOp::Max(*window);
                self.emit_pool(id, op, *input);
            }
            Op::AvgPool2d {
                input,
                window,
                count_include_pad,
            } => {
                let op = PoolOp::Average(*window, *count_include_pad);
                self.emit_pool(id, op, *input);
            }
            Op::GlobalAvgPool { input } => self.emit_pool(id, PoolOp::GlobalAverage, *input),
            Op::Flatten { input } => self.flatten(id, *input, &node.name)?,
            Op::Linear { .. } | Op::Conv2d { .. } => {
                let foldable = self.sole_consumer(id).is_some_and(|consumer| {
                    match &self.graph.node(consumer).op {
                        Op::Relu { .. } => true,
                        Op::Add { left, right } => left != right,
                        _ => false,
                    }
                });
                if foldable {
                    self.pending.insert(id, Pending::Linear { node: id });
                } else {
                    self.emit_gemm(&[id], id, None, Activation::Identity);
                }
            }
            Op::Relu { input } => match self.pending.remove(input) {
                Some(Pending::Linear { node: linear }) => {
                    self.emit_gemm(&[linear, id], linear, None, Activation::Relu);
                }
                Some(Pending::LinearAdd {
                    linear,
                    add,
                    residual,
                }) => {
                    self.emit_gemm(&[linear, add, id], linear, Some(residual), Activation::Relu);
                }
                None => {
                    let left = self.materialize(*input);
                    self.emit_elementwise(id, ElementwiseOp::Relu, left, None);
                }
            },
            Op::Add { left, right } => {
                let (linear, other) =
                    if matches!(self.pending.get(left), Some(Pending::Linear { .. })) {
                        (Some(*left), *right)
                    } else if matches!(self.pending.get(right), Some(Pending::Linear { .. })) {
                        (Some(*right), *left)
                    } else {
                        (None, *right)
                    };
                match linear {
                    Some(linear) => {
                        self.pending.remove(&linear);
                        let residual = self.materialize(other);
                        let relu_follows = self.sole_consumer(id).is_some_and(|consumer| {
                            matches!(self.graph.node(consumer).op, Op::Relu { .. })
                        });
                        if relu_follows {
                            self.pending.insert(
                                id,
                                Pending::LinearAdd {
                                    linear,
                                    add: id,
                                    residual,
                                },
                            );
                        } else {
                            self.emit_gemm(
                                &[linear, id],
                                linear,
                                Some(residual),
                                Activation::Identity,
                            );
                        }
                    }
                    None => {
                        let left_value = self.materialize(*left);
                        let right_value = self.materialize(other);
                        self.emit_elementwise(
                            id,
                            ElementwiseOp::Add,
                            left_value,
                            Some(right_value),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// A flatten of a dense row or of a 1×1 image (after a global pool) is the same values in
    /// the same order, so the node reads its input's value and costs no dispatch.
    ///
    /// A flatten of a larger image differs: PyTorch orders the row (channel, row, column) and
    /// resgraph's images are stored (row, column, channel). Where every reader of the flatten
    /// is a linear layer (a classifier head, VGG's `features → flatten → classifier`), that
    /// order costs nothing either: the layers' weight columns are permuted to resgraph's order
    /// once, at plan time (`emit_gemm`), and they read the image as it is stored. A flatten of
    /// a spatial map read by anything else, or that is the graph's output, is refused.
    fn flatten(&mut self, id: NodeId, input: NodeId, name: &str) -> Result<()> {
        let shape = self.graph.node(input).shape;
        let (height, width, channels) = shape.image_dims();
        if matches!(shape, ValueShape::Dense { .. }) || height * width == 1 {
            let value = self.materialize(input);
            self.values.insert(id, value);
            return Ok(());
        }
        let readers: Vec<&Op> = self
            .graph
            .nodes()
            .iter()
            .skip(id.0 + 1)
            .map(|node| &node.op)
            .filter(|op| op.inputs().contains(&id))
            .collect();
        let only_linear_readers = !readers.is_empty()
            && readers
                .iter()
                .all(|op| matches!(op, Op::Linear { input, .. } if *input == id));
        if !only_linear_readers || id == self.graph.output() {
            return Err(Error::UnsupportedShape {
                kernel: "flatten",
                what: format!(
                    "node {name:?}, which flattens an image {}",
                    shape.describe()
                ),
                reason: "a flattened spatial map must be read by linear layers only (their \
                         weights take PyTorch's channel-first order into account); pool the \
                         image to 1x1 first, or follow the flatten with a linear layer"
                    .to_string(),
            });
        }
        let value = self.materialize(input);
        self.values.insert(id, value);
        self.channel_last_flattens
            .insert(id, (height, width, channels));
        Ok(())
    }

    /// The value of `node`, emitting it first if it is still pending.
    fn materialize(&mut self, node: NodeId) -> ValueId {
        if let Some(value) = self.values.get(&node) {
            return *value;
        }
        match self.pending.remove(&node) {
            Some(Pending::Linear { node: linear }) => {
                self.emit_gemm(&[linear], linear, None, Activation::Identity)
            }
            Some(Pending::LinearAdd {
                linear,
                add,
                residual,
            }) => self.emit_gemm(&[linear, add], linear, Some(residual), Activation::Identity),
            // Every node is visited before anything reads it (the graph is in topological
            // order), so a node with neither a value nor a pending entry cannot be read.
            None => unreachable!("node #{} read before it was visited", node.0),
        }
    }

    fn new_value(&mut self, width: usize) -> ValueId {
        self.fused.value_widths.push(width);
        ValueId(self.fused.value_widths.len() - 1)
    }

    fn emit_gemm(
        &mut self,
        covered: &[NodeId],
        linear: NodeId,
        residual: Option<ValueId>,
        activation: Activation,
    ) -> ValueId {
        let kind = match &self.graph.node(linear).op {
            Op::Linear { input, params } => {
                let (input, mut params) = (*input, params.clone());
                if let Some(&(height, width, channels)) = self.channel_last_flattens.get(&input) {
                    params = params.with_channel_last_columns(height, width, channels);
                }
                let input = self.materialize(input);
                let layer = self.fused.layers.len();
                self.fused.layers.push(params);
                StepKind::Gemm {
                    layer,
                    input,
                    residual,
                    activation,
                }
            }
            Op::Conv2d { input, params } => {
                let (input_node, params) = (*input, params.clone());
                let input = self.materialize(input_node);
                let conv = self.fused.convs.len();
                self.fused.convs.push(params);
                StepKind::Conv {
                    conv,
                    input,
                    input_size: {
                        let (height, width, _) = self.graph.node(input_node).shape.image_dims();
                        (height, width)
                    },
                    residual,
                    activation,
                }
            }
            _ => unreachable!("emit_gemm is only called with linear and convolution nodes"),
        };
        let last = *covered.last().unwrap_or(&linear);
        let output = self.new_value(self.graph.node(last).width);
        self.fused.steps.push(Step {
            kind,
            output,
            name: self.names(covered),
        });
        for node in covered {
            self.values.insert(*node, output);
        }
        output
    }

    fn emit_elementwise(
        &mut self,
        node: NodeId,
        op: ElementwiseOp,
        left: ValueId,
        right: Option<ValueId>,
    ) -> ValueId {
        let output = self.new_value(self.graph.node(node).width);
        self.fused.steps.push(Step {
            kind: StepKind::Elementwise { op, left, right },
            output,
            name: self.names(&[node]),
        });
        self.values.insert(node, output);
        output
    }

    fn emit_pool(&mut self, node: NodeId, op: PoolOp, input: NodeId) {
        let input_shape = self.graph.node(input).shape.image_dims();
        let input = self.materialize(input);
        let output = self.new_value(self.graph.node(node).width);
        self.fused.steps.push(Step {
            kind: StepKind::Pool {
                op,
                input,
                input_shape,
            },
            output,
            name: self.names(&[node]),
        });
        self.values.insert(node, output);
    }

    fn names(&self, nodes: &[NodeId]) -> String {
        nodes
            .iter()
            .map(|node| self.graph.node(*node).name.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }
}

#[cfg(test)]
mod tests {
    use crate::epilogue::Activation;
    use crate::graph::synthetic::{MlpShape, mlp};
    use crate::graph::{GraphBuilder, LinearParams};
    use crate::plan::{Plan, StepKind};

    fn zeros(out_features: usize, in_features: usize) -> LinearParams {
        LinearParams::zeros(out_features, in_features).expect("params")
    }

    #[test]
    fn a_residual_block_fuses_into_two_gemms() {
        let graph = mlp(MlpShape::square(16, 1), 1.0, 1).expect("graph");
        let plan = Plan::new(&graph).expect("plan");
        assert_eq!(plan.dispatch_count(), 2);
        match (&plan.steps[0].kind, &plan.steps[1].kind) {
            (
                StepKind::Gemm {
                    residual: None,
                    activation: first,
                    ..
                },
                StepKind::Gemm {
                    residual: Some(residual),
                    activation: second,
                    ..
                },
            ) => {
                assert_eq!(*first, Activation::Relu);
                assert_eq!(*second, Activation::Relu);
                assert_eq!(*residual, plan.input);
            }
            other => panic!("unexpected steps {other:?}"),
        }
        assert_eq!(
            plan.steps[1].name,
            "blocks.0.fc2+blocks.0.add+blocks.0.relu2"
        );
    }

    #[test]
    fn at_most_two_dispatches_per_block_with_stem_and_head() {
        for depth in [1, 7, 64] {
            let shape = MlpShape {
                input_width: 13,
                width: 24,
                hidden_width: 40,
                depth,
                output_width: 5,
                residual: true,
            };
            let plan = Plan::new(&mlp(shape, 1.0, 2).expect("graph")).expect("plan");
            assert_eq!(plan.dispatch_count(), 2 * depth + 2, "depth {depth}");
        }
    }

    #[test]
    fn relus_and_adds_that_follow_no_linear_layer_stay_elementwise() {
        let mut builder = GraphBuilder::new();
        let x = builder.input("x", 6).expect("input");
        let r = builder.relu("relu_in", x).expect("relu");
        let a = builder.linear("a", r, zeros(6, 6)).expect("a");
        let b = builder.linear("b", r, zeros(6, 6)).expect("b");
        let sum = builder.add("sum", a, b).expect("sum");
        let doubled = builder.add("doubled", sum, sum).expect("doubled");
        let graph = builder.build(doubled).expect("graph");
        let plan = Plan::new(&graph).expect("plan");
        let elementwise = plan
            .steps
            .iter()
            .filter(|step| matches!(step.kind, StepKind::Elementwise { .. }))
            .count();
        // relu(x) and sum + sum are elementwise; a + b fuses b's GEMM with a as the residual.
        assert_eq!(elementwise, 2, "{:#?}", plan.steps);
        assert_eq!(plan.dispatch_count(), 4);
    }
}
