//! The network as a dataflow graph: inputs, linear layers, ReLU and addition, with the residual
//! and plain blocks built from them. Pure Rust: this module never names a GPU type, so a graph
//! can be built, checked and run on the CPU reference without a device.
//!
//! Every node produces a matrix `[batch, width]`; the batch is left open until the graph runs, and
//! widths are checked as the graph is built, so a layer that does not chain is an error naming the
//! node, not a wrong answer later.

use std::sync::Arc;

pub mod batch_norm;
pub mod synthetic;

use crate::error::{Error, Result};
use crate::shape::check_linear_shape;

/// Identifies a node in the graph being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) usize);

impl NodeId {
    /// The node's position in [`Graph::nodes`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// A linear layer's parameters, in PyTorch's layout: `weight` is `[out_features, in_features]`
/// row-major, `bias` is `[out_features]`. Shared, so that a graph and the models compiled from it
/// hold one copy.
#[derive(Clone, Debug)]
pub struct LinearParams {
    weight: Arc<[f32]>,
    bias: Option<Arc<[f32]>>,
    in_features: usize,
    out_features: usize,
}

impl LinearParams {
    /// Checks the lengths against the stated shape.
    pub fn new(
        out_features: usize,
        in_features: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        check_linear_shape(
            out_features,
            in_features,
            weight.len(),
            bias.as_ref().map(Vec::len),
        )?;
        Ok(LinearParams {
            weight: weight.into(),
            bias: bias.map(Into::into),
            in_features,
            out_features,
        })
    }

    /// A layer of zeros (weights and bias).
    pub fn zeros(out_features: usize, in_features: usize) -> Result<Self> {
        Self::new(
            out_features,
            in_features,
            vec![0.0; out_features.saturating_mul(in_features)],
            Some(vec![0.0; out_features]),
        )
    }

    /// `[out_features, in_features]`, row-major.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// `[out_features]`, if the layer has a bias.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// The input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The output width.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Parameters, counting the bias.
    pub fn parameter_count(&self) -> usize {
        self.weight.len() + self.bias.as_ref().map_or(0, |bias| bias.len())
    }
}

/// What a node computes.
#[derive(Clone, Debug)]
pub enum Op {
    /// A graph input of the node's width.
    Input,
    /// `input · weightᵀ + bias`.
    Linear {
        /// The node it reads.
        input: NodeId,
        /// Its weight and bias.
        params: LinearParams,
    },
    /// `max(input, 0)`.
    Relu {
        /// The node it reads.
        input: NodeId,
    },
    /// `left + right`, elementwise.
    Add {
        /// The first operand.
        left: NodeId,
        /// The second operand.
        right: NodeId,
    },
}

impl Op {
    /// The nodes this one reads.
    pub fn inputs(&self) -> Vec<NodeId> {
        match self {
            Op::Input => Vec::new(),
            Op::Linear { input, .. } | Op::Relu { input } => vec![*input],
            Op::Add { left, right } => vec![*left, *right],
        }
    }
}

/// One node: what it computes, the width of its output, and a name for error messages.
#[derive(Clone, Debug)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// The width (columns) of the node's output.
    pub width: usize,
    /// A readable name, e.g. `blocks.3.fc2`.
    pub name: String,
}

/// A finished graph: nodes in an order where every node comes after the nodes it reads, one
/// input and one output.
#[derive(Clone, Debug)]
pub struct Graph {
    nodes: Vec<Node>,
    input: NodeId,
    output: NodeId,
}

impl Graph {
    /// All nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// The input node.
    pub fn input(&self) -> NodeId {
        self.input
    }

    /// The output node.
    pub fn output(&self) -> NodeId {
        self.output
    }

    /// The input width.
    pub fn input_width(&self) -> usize {
        self.nodes[self.input.0].width
    }

    /// The output width.
    pub fn output_width(&self) -> usize {
        self.nodes[self.output.0].width
    }

    /// Parameters of all linear layers, biases included.
    pub fn parameter_count(&self) -> usize {
        self.linear_layers()
            .map(LinearParams::parameter_count)
            .sum()
    }

    /// Floating-point operations of one forward pass per batch row: `2·in·out` per linear
    /// layer (the adds and ReLUs are not counted, as is usual).
    pub fn flops_per_row(&self) -> u64 {
        self.linear_layers()
            .map(|params| 2 * params.in_features() as u64 * params.out_features() as u64)
            .sum()
    }

    /// The linear layers, in order.
    pub fn linear_layers(&self) -> impl Iterator<Item = &LinearParams> {
        self.nodes.iter().filter_map(|node| match &node.op {
            Op::Linear { params, .. } => Some(params),
            _ => None,
        })
    }

    /// How many nodes read each node (the output counts as one extra reader).
    pub fn consumer_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.nodes.len()];
        for node in &self.nodes {
            for input in node.op.inputs() {
                counts[input.0] += 1;
            }
        }
        counts[self.output.0] += 1;
        counts
    }
}

/// Builds a [`Graph`], checking widths as nodes are added.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    input: Option<NodeId>,
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The width of a node already added, if `id` belongs to this builder.
    pub fn width(&self, id: NodeId) -> Option<usize> {
        self.nodes.get(id.0).map(|node| node.width)
    }

    /// Adds the graph's input, `width` columns wide. A graph has exactly one input.
    pub fn input(&mut self, name: &str, width: usize) -> Result<NodeId> {
        if width == 0 {
            return Err(Error::zero_sized(format!("input {name:?}"), "width"));
        }
        if let Some(existing) = self.input {
            return Err(Error::InvalidGraph {
                node: name.to_string(),
                reason: format!(
                    "the graph already has an input ({:?}); resgraph graphs take one input",
                    self.nodes[existing.0].name
                ),
            });
        }
        let id = self.push(Op::Input, width, name);
        self.input = Some(id);
        Ok(id)
    }

    /// Adds `input · weightᵀ + bias`. The layer's `in_features` must equal the input's width.
    pub fn linear(&mut self, name: &str, input: NodeId, params: LinearParams) -> Result<NodeId> {
        let width = self.width_of(name, input)?;
        if params.in_features() != width {
            return Err(Error::GraphShape {
                node: name.to_string(),
                expected: format!("in_features = {width} (the width of its input)"),
                actual: format!("in_features = {}", params.in_features()),
            });
        }
        let out = params.out_features();
        Ok(self.push(Op::Linear { input, params }, out, name))
    }

    /// Adds `max(input, 0)`.
    pub fn relu(&mut self, name: &str, input: NodeId) -> Result<NodeId> {
        let width = self.width_of(name, input)?;
        Ok(self.push(Op::Relu { input }, width, name))
    }

    /// Adds `left + right`; both must have the same width.
    pub fn add(&mut self, name: &str, left: NodeId, right: NodeId) -> Result<NodeId> {
        let left_width = self.width_of(name, left)?;
        let right_width = self.width_of(name, right)?;
        if left_width != right_width {
            return Err(Error::GraphShape {
                node: name.to_string(),
                expected: format!("operands of equal width ({left_width})"),
                actual: format!("widths {left_width} and {right_width}"),
            });
        }
        Ok(self.push(Op::Add { left, right }, left_width, name))
    }

    /// Adds the residual block `relu(fc2(relu(fc1(x))) + x)`, named `{name}.fc1`, `{name}.fc2`.
    /// `fc1` maps the input's width to a hidden width, `fc2` maps it back.
    pub fn residual_block(
        &mut self,
        name: &str,
        input: NodeId,
        fc1: LinearParams,
        fc2: LinearParams,
    ) -> Result<NodeId> {
        let hidden = self.linear(&format!("{name}.fc1"), input, fc1)?;
        let hidden = self.relu(&format!("{name}.relu1"), hidden)?;
        let branch = self.linear(&format!("{name}.fc2"), hidden, fc2)?;
        let sum = self.add(&format!("{name}.add"), branch, input)?;
        self.relu(&format!("{name}.relu2"), sum)
    }

    /// Adds the same block without the shortcut: `relu(fc2(relu(fc1(x))))`.
    pub fn plain_block(
        &mut self,
        name: &str,
        input: NodeId,
        fc1: LinearParams,
        fc2: LinearParams,
    ) -> Result<NodeId> {
        let hidden = self.linear(&format!("{name}.fc1"), input, fc1)?;
        let hidden = self.relu(&format!("{name}.relu1"), hidden)?;
        let out = self.linear(&format!("{name}.fc2"), hidden, fc2)?;
        self.relu(&format!("{name}.relu2"), out)
    }

    /// Finishes the graph with `output` as its result.
    pub fn build(self, output: NodeId) -> Result<Graph> {
        let input = self.input.ok_or_else(|| Error::InvalidGraph {
            node: "input".to_string(),
            reason: "the graph has no input".to_string(),
        })?;
        if output.0 >= self.nodes.len() {
            return Err(Error::InvalidGraph {
                node: format!("#{}", output.0),
                reason: "the output is not a node of this graph".to_string(),
            });
        }
        Ok(Graph {
            nodes: self.nodes,
            input,
            output,
        })
    }

    fn width_of(&self, name: &str, id: NodeId) -> Result<usize> {
        self.nodes
            .get(id.0)
            .map(|node| node.width)
            .ok_or_else(|| Error::InvalidGraph {
                node: name.to_string(),
                reason: format!("it reads node #{}, which is not in this graph", id.0),
            })
    }

    fn push(&mut self, op: Op, width: usize, name: &str) -> NodeId {
        self.nodes.push(Node {
            op,
            width,
            name: name.to_string(),
        });
        NodeId(self.nodes.len() - 1)
    }
}
