//! resgraph's native model format: one safetensors file holding the weights, named as PyTorch's
//! `state_dict` names them (`blocks.0.fc1.weight`), and the architecture as JSON in the header's
//! `__metadata__` under the key `resgraph.graph`.
//!
//! Two architecture forms are read:
//! - `layers`, convenient to write from Python: a sequence of `{"op": "linear", "name": "stem"}`,
//!   `{"op": "relu"}`, `{"op": "residual_block", "name": "blocks.0"}` (reads `blocks.0.fc1.*`
//!   and `blocks.0.fc2.*`) and `{"op": "plain_block", "name": ...}`;
//! - `nodes`, general, what `resgraph convert` writes: every node with its inputs by index;
//! - `arch`, a torchvision ResNet by name: `{"arch": "resnet50", "num_classes": 1000}` (and
//!   optionally `"image": 224`, the input size the graph is built for), reading the weights
//!   under torchvision's `state_dict` names (`conv1.weight`, `bn1.running_var`,
//!   `layer1.0.downsample.0.weight`, `fc.bias`) with every batch norm folded into its
//!   convolution.
//!
//! Weights may be float32, float16 or bfloat16; every tensor's dtype, shape and presence is
//! checked, and the shapes must chain, before anything reaches a device.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};
use serde_json::{Value as Json, json};

use crate::error::{Error, Result};
use crate::graph::batch_norm::{BatchNorm, fold_batch_norm};
use crate::graph::resnet::{ResNetArch, ResNetConv, ResNetWeights, build_resnet};
use crate::graph::{
    Conv2dParams, Graph, GraphBuilder, LinearParams, NodeId, Op, PoolWindow, ValueShape,
};

/// The `__metadata__` key that holds the architecture.
pub const GRAPH_METADATA_KEY: &str = "resgraph.graph";

/// Parses a safetensors file into a graph; `path` only names the source in errors.
pub fn import_safetensors(bytes: &[u8], path: &str) -> Result<Graph> {
    let error = |reason: String| Error::Model {
        path: path.to_string(),
        reason,
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| error(format!("not a valid safetensors file: {e}")))?;
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| error(format!("not a valid safetensors file: {e}")))?;
    let architecture = metadata
        .metadata()
        .as_ref()
        .and_then(|entries| entries.get(GRAPH_METADATA_KEY))
        .ok_or_else(|| {
            error(format!(
                "the header's __metadata__ has no {GRAPH_METADATA_KEY:?} entry describing the \
                 architecture (see README: saving a PyTorch model)"
            ))
        })?;
    let architecture: Json = serde_json::from_str(architecture)
        .map_err(|e| error(format!("{GRAPH_METADATA_KEY} is not valid JSON: {e}")))?;
    let reader = Reader {
        path,
        tensors: &tensors,
    };
    if let Some(arch) = architecture.get("arch") {
        reader.resnet(arch, &architecture)
    } else if let Some(layers) = architecture.get("layers") {
        reader.layers(layers, &architecture)
    } else if let Some(nodes) = architecture.get("nodes") {
        reader.nodes(nodes, &architecture)
    } else {
        Err(error(format!(
            "{GRAPH_METADATA_KEY} has none of \"arch\", \"layers\" and \"nodes\""
        )))
    }
}

/// torchvision's batch-norm epsilon, which its `state_dict` does not store.
const TORCHVISION_BATCH_NORM_EPSILON: f32 = 1e-5;

/// A ResNet's weights from a `state_dict`, each batch norm folded into its convolution.
struct StateDictResNetWeights<'r, 'a, 'data> {
    reader: &'r Reader<'a, 'data>,
}

impl ResNetWeights for StateDictResNetWeights<'_, '_, '_> {
    fn conv(&mut self, conv: &ResNetConv<'_>) -> Result<Conv2dParams> {
        let reader = self.reader;
        let weight_name = format!("{}.weight", conv.name);
        let (shape, weight) = reader.tensor(&weight_name)?;
        let (out_channels, in_channels) = conv.channels;
        let expected = [out_channels, in_channels, conv.kernel, conv.kernel];
        if shape != expected {
            return Err(reader.error(format!(
                "tensor {weight_name:?} has shape {shape:?}; the architecture needs {expected:?}"
            )));
        }
        let mut statistics = Vec::with_capacity(4);
        for part in ["weight", "bias", "running_mean", "running_var"] {
            let name = format!("{}.{part}", conv.batch_norm);
            let (shape, values) = reader.tensor(&name)?;
            if shape != [out_channels] {
                return Err(reader.error(format!(
                    "tensor {name:?} has shape {shape:?}; expected [{out_channels}]"
                )));
            }
            statistics.push(values);
        }
        let batch_norm = BatchNorm {
            weight: &statistics[0],
            bias: &statistics[1],
            running_mean: &statistics[2],
            running_var: &statistics[3],
            epsilon: TORCHVISION_BATCH_NORM_EPSILON,
        };
        let (folded_weight, folded_bias) =
            fold_batch_norm(&weight, None, out_channels, &batch_norm).map_err(|error| {
                reader.error(format!(
                    "folding {} into {}: {error}",
                    conv.batch_norm, conv.name
                ))
            })?;
        Conv2dParams::new(
            conv.channels,
            (conv.kernel, conv.kernel),
            (conv.stride, conv.stride),
            (conv.padding, conv.padding, conv.padding, conv.padding),
            folded_weight,
            Some(folded_bias),
        )
    }

    fn linear(
        &mut self,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<LinearParams> {
        let params = self.reader.linear(name)?;
        if (params.out_features(), params.in_features()) != (out_features, in_features) {
            return Err(self.reader.error(format!(
                "tensor \"{name}.weight\" is [{}, {}]; the architecture needs [{out_features}, \
                 {in_features}]",
                params.out_features(),
                params.in_features()
            )));
        }
        Ok(params)
    }
}

struct Reader<'a, 'data> {
    path: &'a str,
    tensors: &'a SafeTensors<'data>,
}

impl Reader<'_, '_> {
    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Model {
            path: self.path.to_string(),
            reason: reason.into(),
        }
    }

    /// A float tensor as f32 values with its shape.
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| self.error(format!("missing tensor {name:?}")))?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(self.error(format!(
                    "tensor {name:?} has dtype {other:?}; resgraph reads F32, F16 and BF16"
                )));
            }
        };
        Ok((view.shape().to_vec(), values))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.tensor(name).is_ok()
    }

    /// The linear layer stored as `{name}.weight` `[out, in]` and optional `{name}.bias` `[out]`.
    fn linear(&self, name: &str) -> Result<LinearParams> {
        let weight_name = format!("{name}.weight");
        let (shape, weight) = self.tensor(&weight_name)?;
        let [out_features, in_features] = shape.as_slice() else {
            return Err(self.error(format!(
                "tensor {weight_name:?} has shape {shape:?}; a linear weight is [out, in]"
            )));
        };
        let bias_name = format!("{name}.bias");
        let bias = if self.has(&bias_name) {
            let (bias_shape, bias) = self.tensor(&bias_name)?;
            if bias_shape != [*out_features] {
                return Err(self.error(format!(
                    "tensor {bias_name:?} has shape {bias_shape:?}; expected [{out_features}]"
                )));
            }
            Some(bias)
        } else {
            None
        };
        LinearParams::new(*out_features, *in_features, weight, bias)
    }

    /// The `arch` form: a torchvision ResNet by name, with `num_classes` (default 1000) and the
    /// input `image` size (default 224).
    fn resnet(&self, arch: &Json, architecture: &Json) -> Result<Graph> {
        let name = arch
            .as_str()
            .ok_or_else(|| self.error("\"arch\" is not a string"))?;
        let arch = ResNetArch::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = ResNetArch::ALL.iter().map(|arch| arch.name()).collect();
            self.error(format!(
                "unknown architecture {name:?}; expected one of {}",
                known.join(", ")
            ))
        })?;
        let positive = |key: &str, default: usize| -> Result<usize> {
            match architecture.get(key) {
                None => Ok(default),
                Some(value) => value
                    .as_u64()
                    .filter(|&value| value > 0 && value <= 1 << 20)
                    .map(|value| value as usize)
                    .ok_or_else(|| {
                        self.error(format!("\"{key}\" is {value}; expected a positive integer"))
                    }),
            }
        };
        let classes = positive("num_classes", 1000)?;
        let image = positive("image", 224)?;
        build_resnet(
            arch,
            image,
            classes,
            &mut StateDictResNetWeights { reader: self },
        )
    }

    /// A width given in the metadata: a positive integer, `what` naming where it was given.
    fn positive_width(&self, value: &Json, what: &str) -> Result<usize> {
        value
            .as_u64()
            .filter(|&width| width > 0)
            .and_then(|width| usize::try_from(width).ok())
            .ok_or_else(|| self.error(format!("{what} is {value}; expected a positive integer")))
    }

    fn name_of<'j>(&self, entry: &'j Json, index: usize) -> Result<&'j str> {
        entry
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| self.error(format!("entry {index} has no \"name\"")))
    }

    fn layers(&self, layers: &Json, architecture: &Json) -> Result<Graph> {
        let layers = layers
            .as_array()
            .ok_or_else(|| self.error("\"layers\" is not a list"))?;
        let mut builder = GraphBuilder::new();
        let declared_width = architecture
            .get("input_width")
            .map(|width| self.positive_width(width, "\"input_width\""))
            .transpose()?;
        let mut x: Option<NodeId> = None;
        for (index, layer) in layers.iter().enumerate() {
            let op = layer
                .get("op")
                .and_then(Json::as_str)
                .ok_or_else(|| self.error(format!("layer {index} has no \"op\"")))?;
            if !matches!(op, "linear" | "relu" | "residual_block" | "plain_block") {
                return Err(self.error(format!(
                    "layer {index} has op {op:?}; expected linear, relu, residual_block or \
                     plain_block"
                )));
            }
            // The input's width is declared, or read off the first layer's weight.
            let input = match x {
                Some(node) => node,
                None => {
                    let width = match declared_width {
                        Some(width) => width,
                        None if op == "relu" => {
                            return Err(self.error(format!(
                                "layer {index} is a relu, which has no weight to read the \
                                 input's width from; give \"input_width\" in the metadata"
                            )));
                        }
                        None => self.first_in_features(op, layer, index)?,
                    };
                    builder.input("input", width)?
                }
            };
            x = Some(match op {
                "linear" => {
                    let name = self.name_of(layer, index)?;
                    builder.linear(name, input, self.linear(name)?)?
                }
                "relu" => builder.relu(&format!("relu{index}"), input)?,
                "residual_block" | "plain_block" => {
                    let name = self.name_of(layer, index)?;
                    let fc1 = self.linear(&format!("{name}.fc1"))?;
                    let fc2 = self.linear(&format!("{name}.fc2"))?;
                    if op == "residual_block" {
                        builder.residual_block(name, input, fc1, fc2)?
                    } else {
                        builder.plain_block(name, input, fc1, fc2)?
                    }
                }
                other => {
                    return Err(self.error(format!(
                        "layer {index} has op {other:?}; expected linear, relu, residual_block \
                         or plain_block"
                    )));
                }
            });
        }
        let output = x.ok_or_else(|| self.error("\"layers\" is empty"))?;
        builder.build(output)
    }

    fn first_in_features(&self, op: &str, layer: &Json, index: usize) -> Result<usize> {
        let name = self.name_of(layer, index)?;
        let weight = match op {
            "linear" => format!("{name}.weight"),
            _ => format!("{name}.fc1.weight"),
        };
        let (shape, _) = self.tensor(&weight)?;
        shape.get(1).copied().ok_or_else(|| {
            self.error(format!(
                "tensor {weight:?} has shape {shape:?}; expected [out, in]"
            ))
        })
    }

    /// An `input` node: `"width"` for dense rows, or `"shape": [channels, height, width]` for
    /// images.
    fn input_node(&self, builder: &mut GraphBuilder, node: &Json, name: &str) -> Result<NodeId> {
        if let Some(shape) = node.get("shape") {
            let [channels, height, width] = self.sizes::<3>(shape, name, "shape")?;
            return builder.input_image(name, (height, width, channels));
        }
        let width = node.get("width").ok_or_else(|| {
            self.error(format!(
                "input node {name:?} has neither \"width\" nor \"shape\""
            ))
        })?;
        let width = self.positive_width(width, &format!("input node {name:?}'s \"width\""))?;
        builder.input(name, width)
    }

    /// `N` non-negative sizes under `key` of node `name`.
    fn sizes<const N: usize>(&self, value: &Json, name: &str, key: &str) -> Result<[usize; N]> {
        let sizes: Option<Vec<usize>> = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|item| item.as_u64().filter(|&v| v <= 1 << 24).map(|v| v as usize))
                .collect()
        });
        sizes
            .and_then(|sizes| <[usize; N]>::try_from(sizes).ok())
            .ok_or_else(|| {
                self.error(format!(
                    "node {name:?}: {key:?} is {value}; expected {N} non-negative integers"
                ))
            })
    }

    /// The stride and padding of a convolution or pool node, `[1, 1]` and no padding by default.
    fn stride_and_padding(&self, node: &Json, name: &str) -> Result<(Pair, Padding)> {
        let stride = match node.get("stride") {
            Some(value) => self.sizes::<2>(value, name, "stride")?,
            None => [1, 1],
        };
        let padding = match node.get("padding") {
            Some(value) => self.sizes::<4>(value, name, "padding")?,
            None => [0, 0, 0, 0],
        };
        Ok((
            (stride[0], stride[1]),
            (padding[0], padding[1], padding[2], padding[3]),
        ))
    }

    /// A pool node's window: `"kernel"`, `"stride"` and `"padding"`.
    fn window(&self, node: &Json, name: &str) -> Result<PoolWindow> {
        let kernel = node
            .get("kernel")
            .ok_or_else(|| self.error(format!("node {name:?} has no \"kernel\"")))?;
        let [kernel_h, kernel_w] = self.sizes::<2>(kernel, name, "kernel")?;
        let (stride, padding) = self.stride_and_padding(node, name)?;
        Ok(PoolWindow {
            kernel: (kernel_h, kernel_w),
            stride,
            padding,
        })
    }

    /// The convolution stored as `{name}.weight` `[out, in, kh, kw]` and optional `{name}.bias`,
    /// with the node's stride and padding.
    fn conv2d(&self, node: &Json, name: &str) -> Result<Conv2dParams> {
        let weight_name = format!("{name}.weight");
        let (shape, weight) = self.tensor(&weight_name)?;
        let [out_channels, in_channels, kernel_h, kernel_w] = shape.as_slice() else {
            return Err(self.error(format!(
                "tensor {weight_name:?} has shape {shape:?}; a convolution weight is [out, in, \
                 kh, kw]"
            )));
        };
        let bias_name = format!("{name}.bias");
        let bias = if self.has(&bias_name) {
            Some(self.tensor(&bias_name)?.1)
        } else {
            None
        };
        let (stride, padding) = self.stride_and_padding(node, name)?;
        Conv2dParams::new(
            (*out_channels, *in_channels),
            (*kernel_h, *kernel_w),
            stride,
            padding,
            weight,
            bias,
        )
    }

    fn nodes(&self, nodes: &Json, architecture: &Json) -> Result<Graph> {
        let nodes = nodes
            .as_array()
            .ok_or_else(|| self.error("\"nodes\" is not a list"))?;
        let mut builder = GraphBuilder::new();
        let mut ids: Vec<NodeId> = Vec::with_capacity(nodes.len());
        for (index, node) in nodes.iter().enumerate() {
            let op = node
                .get("op")
                .and_then(Json::as_str)
                .ok_or_else(|| self.error(format!("node {index} has no \"op\"")))?;
            let name = self.name_of(node, index)?;
            let inputs: Vec<NodeId> = node
                .get("inputs")
                .and_then(Json::as_array)
                .map(|inputs| {
                    inputs
                        .iter()
                        .map(|input| {
                            input
                                .as_u64()
                                .and_then(|i| ids.get(i as usize).copied())
                                .ok_or_else(|| {
                                    self.error(format!(
                                        "node {index} ({name:?}) reads {input}, which is not an \
                                         earlier node"
                                    ))
                                })
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?
                .unwrap_or_default();
            let arity_error = |expected: usize| {
                self.error(format!(
                    "node {index} ({name:?}, {op}) has {} inputs; expected {expected}",
                    inputs.len()
                ))
            };
            let id = match (op, inputs.as_slice()) {
                ("input", []) => self.input_node(&mut builder, node, name)?,
                ("linear", [x]) => builder.linear(name, *x, self.linear(name)?)?,
                ("relu", [x]) => builder.relu(name, *x)?,
                ("add", [a, b]) => builder.add(name, *a, *b)?,
                ("conv2d", [x]) => builder.conv2d(name, *x, self.conv2d(node, name)?)?,
                ("max_pool2d", [x]) => builder.max_pool2d(name, *x, self.window(node, name)?)?,
                ("avg_pool2d", [x]) => {
                    let count_include_pad = node
                        .get("count_include_pad")
                        .and_then(Json::as_bool)
                        .unwrap_or(false);
                    let window = self.window(node, name)?;
                    builder.avg_pool2d(name, *x, window, count_include_pad)?
                }
                ("global_avg_pool", [x]) => builder.global_avg_pool(name, *x)?,
                ("flatten", [x]) => builder.flatten(name, *x)?,
                ("input", _) => return Err(arity_error(0)),
                (
                    "linear" | "relu" | "conv2d" | "max_pool2d" | "avg_pool2d" | "global_avg_pool"
                    | "flatten",
                    _,
                ) => return Err(arity_error(1)),
                ("add", _) => return Err(arity_error(2)),
                (other, _) => {
                    return Err(self.error(format!(
                        "node {index} has op {other:?}; expected input, linear, relu, add, \
                         conv2d, max_pool2d, avg_pool2d, global_avg_pool or flatten"
                    )));
                }
            };
            ids.push(id);
        }
        // Without "output" the last node is the output; a given "output" must name a node.
        let output = match architecture.get("output") {
            None => ids
                .last()
                .copied()
                .ok_or_else(|| self.error("the graph has no nodes"))?,
            Some(output) => output
                .as_u64()
                .and_then(|index| ids.get(usize::try_from(index).ok()?).copied())
                .ok_or_else(|| {
                    self.error(format!(
                        "\"output\" is {output}; expected the index of a node, 0 to {}",
                        ids.len().saturating_sub(1)
                    ))
                })?,
        };
        builder.build(output)
    }
}

/// A height-and-width pair.
type Pair = (usize, usize);
/// Padding `(top, left, bottom, right)`.
type Padding = (usize, usize, usize, usize);

/// Little-endian float32 bytes.
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// A pool window's keys in the `nodes` form.
fn window_json(window: &PoolWindow) -> Json {
    let (top, left, bottom, right) = window.padding;
    json!({"kernel": [window.kernel.0, window.kernel.1],
           "stride": [window.stride.0, window.stride.1],
           "padding": [top, left, bottom, right]})
}

/// Serialises a graph to resgraph's safetensors format (`nodes` form, float32 weights).
pub fn export_safetensors(graph: &Graph) -> Result<Vec<u8>> {
    // Tensor names come from node names; a name used twice gets the node's index appended so
    // that every tensor name is unique.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for node in graph.nodes() {
        *seen.entry(node.name.as_str()).or_default() += 1;
    }
    let mut nodes_json = Vec::new();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (index, node) in graph.nodes().iter().enumerate() {
        let name = if seen[node.name.as_str()] > 1 || node.name.is_empty() {
            format!("{}#{index}", node.name)
        } else {
            node.name.clone()
        };
        let inputs: Vec<usize> = node.op.inputs().iter().map(|id| id.index()).collect();
        let entry = match &node.op {
            Op::Input => match node.shape {
                ValueShape::Image {
                    height,
                    width,
                    channels,
                } => json!({"op": "input", "name": name, "shape": [channels, height, width]}),
                ValueShape::Dense { width } => json!({"op": "input", "name": name, "width": width}),
            },
            Op::Linear { params, .. } => {
                let weight: Vec<u8> = params
                    .weight()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                tensors.push((
                    format!("{name}.weight"),
                    weight,
                    vec![params.out_features(), params.in_features()],
                ));
                if let Some(bias) = params.bias() {
                    let bias: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
                    tensors.push((format!("{name}.bias"), bias, vec![params.out_features()]));
                }
                json!({"op": "linear", "name": name, "inputs": inputs})
            }
            Op::Relu { .. } => json!({"op": "relu", "name": name, "inputs": inputs}),
            Op::Add { .. } => json!({"op": "add", "name": name, "inputs": inputs}),
            Op::Conv2d { params, .. } => {
                let (kernel_h, kernel_w) = params.kernel();
                let shape = vec![
                    params.out_channels(),
                    params.in_channels(),
                    kernel_h,
                    kernel_w,
                ];
                tensors.push((format!("{name}.weight"), f32_bytes(params.weight()), shape));
                if let Some(bias) = params.bias() {
                    let shape = vec![params.out_channels()];
                    tensors.push((format!("{name}.bias"), f32_bytes(bias), shape));
                }
                let (stride, (top, left, bottom, right)) = (params.stride(), params.padding());
                json!({"op": "conv2d", "name": name, "inputs": inputs,
                       "stride": [stride.0, stride.1], "padding": [top, left, bottom, right]})
            }
            Op::MaxPool2d { window, .. } => {
                let mut entry = window_json(window);
                entry["op"] = json!("max_pool2d");
                entry["name"] = json!(name);
                entry["inputs"] = json!(inputs);
                entry
            }
            Op::AvgPool2d {
                window,
                count_include_pad,
                ..
            } => {
                let mut entry = window_json(window);
                entry["op"] = json!("avg_pool2d");
                entry["name"] = json!(name);
                entry["inputs"] = json!(inputs);
                entry["count_include_pad"] = json!(count_include_pad);
                entry
            }
            Op::GlobalAvgPool { .. } => {
                json!({"op": "global_avg_pool", "name": name, "inputs": inputs})
            }
            Op::Flatten { .. } => json!({"op": "flatten", "name": name, "inputs": inputs}),
        };
        nodes_json.push(entry);
    }
    let architecture = json!({
        "version": 1,
        "nodes": nodes_json,
        "output": graph.output().index(),
    });
    let metadata = HashMap::from([
        (GRAPH_METADATA_KEY.to_string(), architecture.to_string()),
        ("format".to_string(), "resgraph".to_string()),
    ]);
    let views = tensors
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Model {
            path: "<export>".to_string(),
            reason: e.to_string(),
        })?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Model {
        path: "<export>".to_string(),
        reason: e.to_string(),
    })
}
