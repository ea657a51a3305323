//! The network as a dataflow graph: inputs, linear layers, ReLU and addition, with the residual
//! and plain blocks built from them. Pure Rust: this module never names a GPU type, so a graph
//! can be built, checked and run on the CPU reference without a device.
//!
//! Every node produces, per batch entry, a value of a known [`ValueShape`]: a dense row of `width`
//! values, or an image of `height × width` pixels with `channels` values each (stored NHWC). The
//! batch is left open until the graph runs, and shapes are checked as the graph is built, so a
//! layer that does not chain is an error naming the node, not a wrong answer later.

use std::sync::Arc;

pub mod batch_norm;
pub mod layout;
pub mod resnet;
pub mod synthetic;

use crate::error::{Error, Result};
use crate::shape::check_linear_shape;
pub use crate::shape::window_output_size;

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

    /// This layer for an input stored (row, column, channel), as resgraph stores images, when
    /// its weights were made for PyTorch's flatten order (channel, row, column): each weight row
    /// is permuted, so that the layer reads the image as it is stored. `height × width ×
    /// channels` must be `in_features` (the planner calls it only then).
    pub(crate) fn with_channel_last_columns(
        &self,
        height: usize,
        width: usize,
        channels: usize,
    ) -> LinearParams {
        debug_assert_eq!(height * width * channels, self.in_features);
        // Each weight row is one image in PyTorch's order, read as resgraph stores images.
        let weight =
            layout::nchw_to_nhwc(&self.weight, self.out_features, (channels, height, width));
        LinearParams {
            weight: weight.into(),
            bias: self.bias.clone(),
            in_features: self.in_features,
            out_features: self.out_features,
        }
    }
}

/// The shape of one batch entry of a node's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueShape {
    /// A row of `width` values (a dense layer's input or output).
    Dense {
        /// The values in the row.
        width: usize,
    },
    /// An image of `height × width` pixels with `channels` values each, stored NHWC (a pixel's
    /// channels are contiguous).
    Image {
        /// Rows of pixels.
        height: usize,
        /// Pixels per row.
        width: usize,
        /// Values per pixel.
        channels: usize,
    },
}

impl ValueShape {
    /// Values per batch entry.
    pub fn len(&self) -> usize {
        match *self {
            ValueShape::Dense { width } => width,
            ValueShape::Image {
                height,
                width,
                channels,
            } => height * width * channels,
        }
    }

    /// The height, width and channels of an image; a dense row of `n` reads as a 1×1 image of
    /// `n` channels (the planner and the reference only ask this of what the builder let a
    /// convolution or pool read, which is an image).
    pub fn image_dims(&self) -> (usize, usize, usize) {
        match *self {
            ValueShape::Image {
                height,
                width,
                channels,
            } => (height, width, channels),
            ValueShape::Dense { width } => (1, 1, width),
        }
    }

    /// One batch entry's shape as PyTorch writes it: `[width]`, or `[channels, height, width]`
    /// (NCHW) for an image.
    pub fn torch_dims(&self) -> Vec<usize> {
        match *self {
            ValueShape::Dense { width } => vec![width],
            ValueShape::Image {
                height,
                width,
                channels,
            } => vec![channels, height, width],
        }
    }

    /// Whether the shape holds no value (never true of a shape the builder accepted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape as PyTorch would print it per batch entry: `[width]` or `[channels, height,
    /// width]` (PyTorch's NCHW order, whatever resgraph's storage order).
    pub fn describe(&self) -> String {
        match *self {
            ValueShape::Dense { width } => format!("[{width}]"),
            ValueShape::Image {
                height,
                width,
                channels,
            } => format!("[{channels}, {height}, {width}]"),
        }
    }
}

/// A 2-D convolution's parameters: `weight` in PyTorch's layout `[out_channels, in_channels,
/// kernel_h, kernel_w]`, `bias` `[out_channels]`, the stride and the zero padding `(top, left,
/// bottom, right)`. Dilation is 1 and groups is 1. Shared, like [`LinearParams`].
#[derive(Clone, Debug)]
pub struct Conv2dParams {
    weight: Arc<[f32]>,
    bias: Option<Arc<[f32]>>,
    in_channels: usize,
    out_channels: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize, usize, usize),
}

impl Conv2dParams {
    /// Checks the lengths against the stated shape and that no size is zero.
    pub fn new(
        (out_channels, in_channels): (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize, usize, usize),
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let what = format!(
            "convolution {out_channels}x{in_channels}x{}x{}",
            kernel.0, kernel.1
        );
        for (dimension, value) in [
            ("out_channels", out_channels),
            ("in_channels", in_channels),
            ("kernel height", kernel.0),
            ("kernel width", kernel.1),
            ("stride height", stride.0),
            ("stride width", stride.1),
        ] {
            if value == 0 {
                return Err(Error::zero_sized(what, dimension));
            }
        }
        let expected = out_channels
            .checked_mul(in_channels)
            .and_then(|n| n.checked_mul(kernel.0))
            .and_then(|n| n.checked_mul(kernel.1));
        if expected != Some(weight.len()) {
            return Err(Error::shape_mismatch(
                format!("{what} weight"),
                format!(
                    "[{out_channels}, {in_channels}, {}, {}] values",
                    kernel.0, kernel.1
                ),
                format!("{} values", weight.len()),
            ));
        }
        if let Some(bias) = &bias
            && bias.len() != out_channels
        {
            return Err(Error::shape_mismatch(
                format!("{what} bias"),
                format!("{out_channels} values"),
                format!("{} values", bias.len()),
            ));
        }
        Ok(Conv2dParams {
            weight: weight.into(),
            bias: bias.map(Into::into),
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
        })
    }

    /// `[out_channels, in_channels, kernel_h, kernel_w]`, row-major.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// `[out_channels]`, if the convolution has a bias.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Kernel height and width.
    pub fn kernel(&self) -> (usize, usize) {
        self.kernel
    }

    /// Stride along height and width.
    pub fn stride(&self) -> (usize, usize) {
        self.stride
    }

    /// Zero padding `(top, left, bottom, right)`.
    pub fn padding(&self) -> (usize, usize, usize, usize) {
        self.padding
    }

    /// Parameters, counting the bias.
    pub fn parameter_count(&self) -> usize {
        self.weight.len() + self.bias.as_ref().map_or(0, |bias| bias.len())
    }

    /// The output height and width for an input of `height × width`, or `None` when the kernel
    /// does not fit the padded input.
    pub fn output_size(&self, (height, width): (usize, usize)) -> Option<(usize, usize)> {
        window_output_size((height, width), self.kernel, self.stride, self.padding)
    }
}

/// An image shape whose value count fits in memory arithmetic, or an error naming the node: sizes
/// come from model files, and their product must not overflow.
fn checked_image(
    name: &str,
    (height, width, channels): (usize, usize, usize),
) -> Result<ValueShape> {
    let fits = height
        .checked_mul(width)
        .and_then(|pixels| pixels.checked_mul(channels))
        .is_some_and(|values| values <= u32::MAX as usize);
    if !fits {
        return Err(Error::GraphShape {
            node: name.to_string(),
            expected: "an image of at most 2^32 values per batch entry".to_string(),
            actual: format!("{height}x{width} pixels of {channels} channels"),
        });
    }
    Ok(ValueShape::Image {
        height,
        width,
        channels,
    })
}

/// A pooling window: its size, stride and padding `(top, left, bottom, right)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolWindow {
    /// Window height and width.
    pub kernel: (usize, usize),
    /// Stride along height and width.
    pub stride: (usize, usize),
    /// Padding `(top, left, bottom, right)`: never the maximum of a max-pool; zeros counted or
    /// not by an average pool, as its `count_include_pad` says.
    pub padding: (usize, usize, usize, usize),
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
    /// A 2-D convolution of an image, `conv(input, weight) + bias`.
    Conv2d {
        /// The image it reads.
        input: NodeId,
        /// Its weight, bias and geometry.
        params: Conv2dParams,
    },
    /// The maximum over each window of an image, per channel.
    MaxPool2d {
        /// The image it reads.
        input: NodeId,
        /// The window.
        window: PoolWindow,
    },
    /// The mean over each window of an image, per channel.
    AvgPool2d {
        /// The image it reads.
        input: NodeId,
        /// The window.
        window: PoolWindow,
        /// Whether padding counts as zeros in the mean (PyTorch's `count_include_pad`).
        count_include_pad: bool,
    },
    /// The mean over all pixels of an image, per channel: an image becomes a dense row of its
    /// channels.
    GlobalAvgPool {
        /// The image it reads.
        input: NodeId,
    },
    /// An image as a dense row in PyTorch's order (channel, then row, then column), as
    /// `torch.flatten(x, 1)` gives it for an NCHW tensor.
    Flatten {
        /// The image it reads.
        input: NodeId,
    },
}

impl Op {
    /// The nodes this one reads.
    pub fn inputs(&self) -> Vec<NodeId> {
        match self {
            Op::Input => Vec::new(),
            Op::Linear { input, .. }
            | Op::Relu { input }
            | Op::Conv2d { input, .. }
            | Op::MaxPool2d { input, .. }
            | Op::AvgPool2d { input, .. }
            | Op::GlobalAvgPool { input }
            | Op::Flatten { input } => vec![*input],
            Op::Add { left, right } => vec![*left, *right],
        }
    }
}

/// One node: what it computes, the shape of its output, and a name for error messages.
#[derive(Clone, Debug)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// The shape of one batch entry of the node's output.
    pub shape: ValueShape,
    /// Values per batch entry of the node's output (`shape.len()`).
    pub width: usize,
    /// A readable name, e.g. `blocks.3.fc2`.
    pub name: String,
}

impl Node {
    /// Floating-point operations of this node per batch entry (multiply-adds of linear layers
    /// and convolutions, counted as two).
    pub fn flops(&self) -> u64 {
        match &self.op {
            Op::Linear { params, .. } => {
                2 * params.in_features() as u64 * params.out_features() as u64
            }
            Op::Conv2d { params, .. } => {
                let pixels = match self.shape {
                    ValueShape::Image { height, width, .. } => (height * width) as u64,
                    ValueShape::Dense { .. } => 0,
                };
                let (kernel_h, kernel_w) = params.kernel();
                [
                    params.out_channels() as u64,
                    params.in_channels() as u64,
                    kernel_h as u64,
                    kernel_w as u64,
                ]
                .iter()
                .fold(2 * pixels, |total, factor| total.saturating_mul(*factor))
            }
            _ => 0,
        }
    }
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

    /// The input's shape per batch entry.
    pub fn input_shape(&self) -> ValueShape {
        self.nodes[self.input.0].shape
    }

    /// The output's shape per batch entry.
    pub fn output_shape(&self) -> ValueShape {
        self.nodes[self.output.0].shape
    }

    /// Parameters of all linear layers and convolutions, biases included.
    pub fn parameter_count(&self) -> usize {
        self.nodes
            .iter()
            .map(|node| match &node.op {
                Op::Linear { params, .. } => params.parameter_count(),
                Op::Conv2d { params, .. } => params.parameter_count(),
                _ => 0,
            })
            .sum()
    }

    /// Floating-point operations of one forward pass per batch entry: `2·in·out` per linear
    /// layer and `2·out_pixels·out_channels·in_channels·kernel_h·kernel_w` per convolution (the
    /// adds, ReLUs and pools are not counted, as is usual).
    pub fn flops_per_row(&self) -> u64 {
        self.nodes.iter().map(Node::flops).sum()
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

    /// The values per batch entry of a node already added, if `id` belongs to this builder.
    pub fn width(&self, id: NodeId) -> Option<usize> {
        self.nodes.get(id.0).map(|node| node.width)
    }

    /// The shape of a node already added, if `id` belongs to this builder.
    pub fn shape(&self, id: NodeId) -> Option<ValueShape> {
        self.nodes.get(id.0).map(|node| node.shape)
    }

    /// Adds the graph's input, `width` columns wide. A graph has exactly one input.
    pub fn input(&mut self, name: &str, width: usize) -> Result<NodeId> {
        if width == 0 {
            return Err(Error::zero_sized(format!("input {name:?}"), "width"));
        }
        self.add_input(name, ValueShape::Dense { width })
    }

    /// Adds the graph's input as images of `height × width` pixels with `channels` values each
    /// (run inputs are NHWC). A graph has exactly one input.
    pub fn input_image(
        &mut self,
        name: &str,
        (height, width, channels): (usize, usize, usize),
    ) -> Result<NodeId> {
        for (dimension, value) in [("height", height), ("width", width), ("channels", channels)] {
            if value == 0 {
                return Err(Error::zero_sized(format!("input {name:?}"), dimension));
            }
        }
        let shape = checked_image(name, (height, width, channels))?;
        self.add_input(name, shape)
    }

    fn add_input(&mut self, name: &str, shape: ValueShape) -> Result<NodeId> {
        if let Some(existing) = self.input {
            return Err(Error::InvalidGraph {
                node: name.to_string(),
                reason: format!(
                    "the graph already has an input ({:?}); resgraph graphs take one input",
                    self.nodes[existing.0].name
                ),
            });
        }
        let id = self.push(Op::Input, shape, name);
        self.input = Some(id);
        Ok(id)
    }

    /// Adds `input · weightᵀ + bias`. The layer's `in_features` must equal the input's width.
    pub fn linear(&mut self, name: &str, input: NodeId, params: LinearParams) -> Result<NodeId> {
        let width = match self.shape_of(name, input)? {
            ValueShape::Dense { width } => width,
            image => {
                return Err(Error::GraphShape {
                    node: name.to_string(),
                    expected: "a dense input (flatten or pool an image first)".to_string(),
                    actual: format!("an image {}", image.describe()),
                });
            }
        };
        if params.in_features() != width {
            return Err(Error::GraphShape {
                node: name.to_string(),
                expected: format!("in_features = {width} (the width of its input)"),
                actual: format!("in_features = {}", params.in_features()),
            });
        }
        let width = params.out_features();
        Ok(self.push(
            Op::Linear { input, params },
            ValueShape::Dense { width },
            name,
        ))
    }

    /// Adds `max(input, 0)`; a NaN stays NaN, as in PyTorch.
    pub fn relu(&mut self, name: &str, input: NodeId) -> Result<NodeId> {
        let shape = self.shape_of(name, input)?;
        Ok(self.push(Op::Relu { input }, shape, name))
    }

    /// Adds `left + right`; both must have the same shape.
    pub fn add(&mut self, name: &str, left: NodeId, right: NodeId) -> Result<NodeId> {
        let left_shape = self.shape_of(name, left)?;
        let right_shape = self.shape_of(name, right)?;
        if left_shape != right_shape {
            let expected = match left_shape {
                ValueShape::Dense { width } => format!("operands of equal width ({width})"),
                image => format!("operands of equal shape ({})", image.describe()),
            };
            let actual = match (left_shape, right_shape) {
                (ValueShape::Dense { width: l }, ValueShape::Dense { width: r }) => {
                    format!("widths {l} and {r}")
                }
                (l, r) => format!("shapes {} and {}", l.describe(), r.describe()),
            };
            return Err(Error::GraphShape {
                node: name.to_string(),
                expected,
                actual,
            });
        }
        Ok(self.push(Op::Add { left, right }, left_shape, name))
    }

    /// Adds a 2-D convolution of an image whose channels are the convolution's `in_channels`.
    pub fn conv2d(&mut self, name: &str, input: NodeId, params: Conv2dParams) -> Result<NodeId> {
        let (height, width, channels) = self.image_of(name, input)?;
        if channels != params.in_channels() {
            return Err(Error::GraphShape {
                node: name.to_string(),
                expected: format!("in_channels = {channels} (the channels of its input)"),
                actual: format!("in_channels = {}", params.in_channels()),
            });
        }
        let (out_h, out_w) = params.output_size((height, width)).ok_or_else(|| {
            let (kernel_h, kernel_w) = params.kernel();
            Error::GraphShape {
                node: name.to_string(),
                expected: format!("a {kernel_h}x{kernel_w} kernel that fits the padded input"),
                actual: format!(
                    "an input of {height}x{width} padded by {:?}",
                    params.padding()
                ),
            }
        })?;
        let shape = checked_image(name, (out_h, out_w, params.out_channels()))?;
        Ok(self.push(Op::Conv2d { input, params }, shape, name))
    }

    /// Adds a max-pool over `window` (padding never wins).
    pub fn max_pool2d(&mut self, name: &str, input: NodeId, window: PoolWindow) -> Result<NodeId> {
        let shape = self.pooled_shape(name, input, window)?;
        Ok(self.push(Op::MaxPool2d { input, window }, shape, name))
    }

    /// Adds an average pool over `window`; `count_include_pad` says whether padding counts as
    /// zeros in the mean.
    pub fn avg_pool2d(
        &mut self,
        name: &str,
        input: NodeId,
        window: PoolWindow,
        count_include_pad: bool,
    ) -> Result<NodeId> {
        let shape = self.pooled_shape(name, input, window)?;
        let op = Op::AvgPool2d {
            input,
            window,
            count_include_pad,
        };
        Ok(self.push(op, shape, name))
    }

    /// Adds the mean over all pixels of an image, per channel: a dense row of its channels.
    pub fn global_avg_pool(&mut self, name: &str, input: NodeId) -> Result<NodeId> {
        let (_, _, channels) = self.image_of(name, input)?;
        let shape = ValueShape::Dense { width: channels };
        Ok(self.push(Op::GlobalAvgPool { input }, shape, name))
    }

    /// Adds an image flattened to a dense row in PyTorch's (channel, row, column) order.
    pub fn flatten(&mut self, name: &str, input: NodeId) -> Result<NodeId> {
        // A dense row is already flat; the node is kept either way, so that names and shapes
        // stay as the model declares them.
        let width = self.shape_of(name, input)?.len();
        Ok(self.push(Op::Flatten { input }, ValueShape::Dense { width }, name))
    }

    /// Adds torchvision's basic residual block: `relu(bn2(conv2(relu(bn1(conv1(x))))) +
    /// shortcut(x))`, with batch norm already folded into the convolutions, and the shortcut
    /// `downsample` (a 1×1 projection) or the identity. Named `{name}.conv1`, `{name}.conv2`,
    /// `{name}.downsample.0`.
    pub fn basic_block(
        &mut self,
        name: &str,
        input: NodeId,
        conv1: Conv2dParams,
        conv2: Conv2dParams,
        downsample: Option<Conv2dParams>,
    ) -> Result<NodeId> {
        let hidden = self.conv2d(&format!("{name}.conv1"), input, conv1)?;
        let hidden = self.relu(&format!("{name}.relu1"), hidden)?;
        let branch = self.conv2d(&format!("{name}.conv2"), hidden, conv2)?;
        self.finish_block(name, input, branch, downsample)
    }

    /// Adds torchvision's bottleneck residual block: 1×1 reduce, 3×3, 1×1 expand, each with its
    /// batch norm folded in, a ReLU after the first two, and the shortcut `downsample` or the
    /// identity added before the last ReLU. Named `{name}.conv1` to `{name}.conv3`.
    pub fn bottleneck_block(
        &mut self,
        name: &str,
        input: NodeId,
        [conv1, conv2, conv3]: [Conv2dParams; 3],
        downsample: Option<Conv2dParams>,
    ) -> Result<NodeId> {
        let hidden = self.conv2d(&format!("{name}.conv1"), input, conv1)?;
        let hidden = self.relu(&format!("{name}.relu1"), hidden)?;
        let hidden = self.conv2d(&format!("{name}.conv2"), hidden, conv2)?;
        let hidden = self.relu(&format!("{name}.relu2"), hidden)?;
        let branch = self.conv2d(&format!("{name}.conv3"), hidden, conv3)?;
        self.finish_block(name, input, branch, downsample)
    }

    /// The end of a convolutional residual block: `relu(branch + shortcut)`.
    fn finish_block(
        &mut self,
        name: &str,
        input: NodeId,
        branch: NodeId,
        downsample: Option<Conv2dParams>,
    ) -> Result<NodeId> {
        let shortcut = match downsample {
            Some(projection) => self.conv2d(&format!("{name}.downsample.0"), input, projection)?,
            None => input,
        };
        let sum = self.add(&format!("{name}.add"), branch, shortcut)?;
        self.relu(&format!("{name}.relu"), sum)
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

    fn shape_of(&self, name: &str, id: NodeId) -> Result<ValueShape> {
        self.nodes
            .get(id.0)
            .map(|node| node.shape)
            .ok_or_else(|| Error::InvalidGraph {
                node: name.to_string(),
                reason: format!("it reads node #{}, which is not in this graph", id.0),
            })
    }

    /// The height, width and channels of an image input, or an error naming the node.
    fn image_of(&self, name: &str, id: NodeId) -> Result<(usize, usize, usize)> {
        match self.shape_of(name, id)? {
            ValueShape::Image {
                height,
                width,
                channels,
            } => Ok((height, width, channels)),
            ValueShape::Dense { width } => Err(Error::GraphShape {
                node: name.to_string(),
                expected: "an image input".to_string(),
                actual: format!("a dense row of {width}"),
            }),
        }
    }

    /// The shape of an image after `window`, or an error when the window does not fit or its
    /// padding is more than half the window (PyTorch's rule, which keeps every window partly
    /// inside the image).
    fn pooled_shape(&self, name: &str, input: NodeId, window: PoolWindow) -> Result<ValueShape> {
        let (height, width, channels) = self.image_of(name, input)?;
        let (top, left, bottom, right) = window.padding;
        let (kernel_h, kernel_w) = window.kernel;
        if top.max(bottom) > kernel_h / 2 || left.max(right) > kernel_w / 2 {
            return Err(Error::GraphShape {
                node: name.to_string(),
                expected: format!("padding of at most half the {kernel_h}x{kernel_w} window"),
                actual: format!("padding {:?}", window.padding),
            });
        }
        let (out_h, out_w) = window_output_size(
            (height, width),
            window.kernel,
            window.stride,
            window.padding,
        )
        .ok_or_else(|| Error::GraphShape {
            node: name.to_string(),
            expected: format!(
                "a {}x{} window with a non-zero stride that fits the padded input",
                window.kernel.0, window.kernel.1
            ),
            actual: format!(
                "an input of {height}x{width} padded by {:?}, stride {:?}",
                window.padding, window.stride
            ),
        })?;
        checked_image(name, (out_h, out_w, channels))
    }

    fn push(&mut self, op: Op, shape: ValueShape, name: &str) -> NodeId {
        self.nodes.push(Node {
            op,
            shape,
            width: shape.len(),
            name: name.to_string(),
        });
        NodeId(self.nodes.len() - 1)
    }
}
