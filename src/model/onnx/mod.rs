//! ONNX import of MLP-style residual networks, as PyTorch's exporter and `onnx.helper` write them.
//!
//! Supported: `Gemm` (alpha, beta, transB; transA = 0), `MatMul` by an initializer (followed by an
//! `Add` of a bias initializer, which is folded into the layer), `Relu`, `Add` of two activations
//! (the residual), `Identity`, `Flatten` and `Reshape` to 2-D, `Constant`, `Cast` to float32 (of
//! float16 weights, or a no-op on activations); initializers in float32 or float16; a symbolic
//! batch dimension. The result is an ordinary [`Graph`], so the planner's
//! fusion applies exactly as for a graph built by hand. Anything else is an error naming the
//! operator and the node.

use std::collections::HashMap;

use prost::Message;

use crate::error::{Error, Result};
use crate::graph::{Graph, GraphBuilder, LinearParams, NodeId};
use crate::model::external_data::{
    ExternalData, ExternalLocation, read_external_bytes, slice_external_bytes,
};

/// The protobuf types generated from `proto/onnx.proto` at build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

mod images;

use images::PendingConv;
use proto::tensor_proto::DataType;

/// A constant tensor: an initializer or a `Constant` node's value, converted to f32.
#[derive(Clone, Debug)]
struct Constant {
    dims: Vec<i64>,
    values: Vec<f32>,
    /// Stored as int64 (a shape or axes), which no weight may be.
    integer: bool,
}

/// A linear layer from `MatMul` whose bias add may still follow.
#[derive(Clone, Debug)]
struct PendingMatMul {
    input: NodeId,
    params: LinearParams,
    name: String,
}

/// What an ONNX tensor name refers to while importing.
#[derive(Clone, Debug)]
enum Value {
    Node(NodeId),
    Constant(Constant),
    MatMul(PendingMatMul),
    /// A convolution whose batch norm may still follow.
    Conv(PendingConv),
}

/// Parses ONNX bytes into a graph; `path` names the source in errors. Tensors stored as
/// external data are read from `external_data`: the model's folder (confined to it), or the
/// side file's bytes.
pub fn import_onnx(bytes: &[u8], path: &str, external_data: ExternalData<'_>) -> Result<Graph> {
    let model = proto::ModelProto::decode(bytes).map_err(|error| Error::Model {
        path: path.to_string(),
        reason: format!(
            "not a valid ONNX protobuf: {}",
            clip_message(&error.to_string())
        ),
    })?;
    let graph = model.graph.ok_or_else(|| Error::Model {
        path: path.to_string(),
        reason: "the model has no graph".to_string(),
    })?;
    Importer {
        path,
        external_data,
        buffer_location: std::cell::RefCell::new(None),
        values: HashMap::new(),
        builder: GraphBuilder::new(),
        fixed_batch: None,
        multi_axis: HashMap::new(),
    }
    .import(&graph)
}

struct Importer<'p> {
    path: &'p str,
    external_data: ExternalData<'p>,
    /// The `location` the first external tensor named, when the side file came as bytes: every
    /// other must name the same, since the bytes are of one file.
    buffer_location: std::cell::RefCell<Option<String>>,
    values: HashMap<String, Value>,
    builder: GraphBuilder,
    /// The batch the graph's input declares, when it declares a number rather than a symbol
    /// (`torch.onnx.export` with dynamo=True and no `dynamic_shapes` fixes it): a `Reshape` to
    /// `[that batch, -1]` keeps the batch.
    fixed_batch: Option<i64>,
    /// Values of more than two axes (the input's `[batch, a, b, ...]` after the batch, and what
    /// elementwise ops make of it), which resgraph holds flattened: a Gemm or MatMul of one would
    /// act on its last axis, so it is refused until a Flatten or Reshape.
    multi_axis: HashMap<String, Vec<usize>>,
}

impl Importer<'_> {
    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Model {
            path: self.path.to_string(),
            reason: reason.into(),
        }
    }

    fn import(mut self, graph: &proto::GraphProto) -> Result<Graph> {
        for tensor in &graph.initializer {
            let name = tensor.name.clone().unwrap_or_default();
            let constant = self.constant(tensor, &format!("initializer {name:?}"))?;
            self.values.insert(name, Value::Constant(constant));
        }
        let inputs: Vec<&proto::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|input| {
                !self
                    .values
                    .contains_key(input.name.as_deref().unwrap_or_default())
            })
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(self.error(format!(
                "resgraph imports graphs with exactly one input, this one has {}",
                inputs.len()
            )));
        };
        let input_name = input.name.clone().unwrap_or_default();
        self.fixed_batch = declared_batch(input);
        let id = match self.input_dims(input)?.as_slice() {
            // [batch, channels, height, width]: images, which resgraph stores NHWC.
            &[channels, height, width] if self.is_image_input(input) => self
                .builder
                .input_image(&input_name, (height, width, channels))?,
            dims => {
                if dims.len() > 1 {
                    // [batch, a, b, ...] is read as rows of a·b·… values, which is right for
                    // a Flatten or an elementwise op, and wrong for a Gemm or MatMul (they act
                    // on the last axis): `multi_axis` remembers it until a Flatten.
                    self.multi_axis.insert(input_name.clone(), dims.to_vec());
                }
                self.builder.input(&input_name, dims.iter().product())?
            }
        };
        self.values.insert(input_name, Value::Node(id));

        for (index, node) in graph.node.iter().enumerate() {
            self.node(node, index)?;
        }

        let [output] = graph.output.as_slice() else {
            return Err(self.error(format!(
                "resgraph imports graphs with exactly one output, this one has {}",
                graph.output.len()
            )));
        };
        let output_name = output.name.clone().unwrap_or_default();
        let declared = self.declared_width(output);
        let output = self.activation(&output_name, "the graph output")?;
        let width = self.builder.width(output).unwrap_or(0);
        if let Some(declared) = declared
            && declared != width
        {
            return Err(self.error(format!(
                "output {output_name:?} is declared {declared} wide but the graph computes {width}"
            )));
        }
        let built = self.builder.build(output)?;
        Ok(built)
    }

    /// Whether `input` is a rank-4 `[batch, channels, height, width]` image input.
    fn is_image_input(&self, input: &proto::ValueInfoProto) -> bool {
        use proto::type_proto::Value as Type;
        matches!(
            input.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(Type::TensorType(tensor))
                if tensor.shape.as_ref().is_some_and(|shape| shape.dim.len() == 4)
        )
    }

    /// The dimensions of a `[batch, ...]` input after the batch, each static and positive.
    fn input_dims(&self, input: &proto::ValueInfoProto) -> Result<Vec<usize>> {
        use proto::tensor_shape_proto::dimension::Value as Dim;
        use proto::type_proto::Value as Type;
        let name = input.name.as_deref().unwrap_or_default();
        let Some(Type::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(self.error(format!("input {name:?} is not a tensor")));
        };
        let elem = tensor.elem_type.unwrap_or_default();
        if elem != DataType::Float as i32 {
            return Err(self.error(format!(
                "input {name:?} has element type {} ({}); resgraph takes float32 inputs",
                elem,
                data_type_name(elem)
            )));
        }
        let dims = tensor
            .shape
            .as_ref()
            .map(|shape| shape.dim.as_slice())
            .unwrap_or_default();
        if dims.len() < 2 {
            return Err(self.error(format!(
                "input {name:?} has rank {}; expected [batch, features]",
                dims.len()
            )));
        }
        let mut width = 1usize;
        let mut sizes = Vec::with_capacity(dims.len() - 1);
        for dim in &dims[1..] {
            match dim.value {
                Some(Dim::DimValue(value)) if value > 0 => {
                    width = width
                        .checked_mul(value as usize)
                        .ok_or_else(|| self.error(format!("input {name:?} is too wide")))?;
                    sizes.push(value as usize);
                }
                _ => {
                    return Err(self.error(format!(
                        "input {name:?} has a symbolic or non-positive feature dimension; only \
                         the batch (first) dimension may be symbolic"
                    )));
                }
            }
        }
        Ok(sizes)
    }

    /// The static feature width a `[batch, width]` value declares, if it declares one.
    fn declared_width(&self, value: &proto::ValueInfoProto) -> Option<usize> {
        use proto::tensor_shape_proto::dimension::Value as Dim;
        use proto::type_proto::Value as Type;
        let Some(Type::TensorType(tensor)) = value.r#type.as_ref()?.value.as_ref() else {
            return None;
        };
        match tensor.shape.as_ref()?.dim.as_slice() {
            [_, feature] => match feature.value {
                Some(Dim::DimValue(width)) if width > 0 => Some(width as usize),
                _ => None,
            },
            _ => None,
        }
    }

    /// The bytes of a tensor stored as external data, read from the model's folder (`None` for
    /// a tensor stored in the model itself).
    fn external_bytes(
        &self,
        tensor: &proto::TensorProto,
        what: &str,
        count: usize,
        data_type: i32,
    ) -> Result<Option<Vec<u8>>> {
        if tensor.data_location != Some(proto::tensor_proto::DataLocation::External as i32) {
            return Ok(None);
        }
        let element_bytes: u64 = if data_type == DataType::Float as i32 {
            4
        } else if data_type == DataType::Float16 as i32 {
            2
        } else if data_type == DataType::Int64 as i32 {
            8
        } else {
            return Err(self.error(format!(
                "{what} has data type {} ({}); resgraph reads float32 and float16 weights",
                data_type,
                data_type_name(data_type)
            )));
        };
        let entries = tensor.external_data.iter().map(|entry| {
            (
                entry.key.as_deref().unwrap_or_default(),
                entry.value.as_deref().unwrap_or_default(),
            )
        });
        let location =
            ExternalLocation::from_entries(entries, what).map_err(|reason| self.error(reason))?;
        let expected = (count as u64).saturating_mul(element_bytes);
        match self.external_data {
            ExternalData::Folder(folder) => {
                read_external_bytes(folder, &location, expected, what, self.path).map(Some)
            }
            ExternalData::Buffer(data) => {
                let mut first = self.buffer_location.borrow_mut();
                match first.as_deref() {
                    Some(first) if first != location.location => {
                        return Err(self.error(format!(
                            "{what} stores its data in {:?}, but the external data given as \
                             bytes is {first:?}, which an earlier tensor named; a model whose \
                             tensors live in several files must be loaded from its folder",
                            location.location
                        )));
                    }
                    Some(_) => {}
                    None => *first = Some(location.location.clone()),
                }
                slice_external_bytes(data, &location, expected, what, self.path).map(Some)
            }
            ExternalData::Unavailable => Err(self.error(format!(
                "{what} stores its data externally in {:?}, which was not given: load the model \
                 from its folder, or pass that file's bytes too",
                location.location
            ))),
        }
    }

    fn constant(&self, tensor: &proto::TensorProto, what: &str) -> Result<Constant> {
        let count = tensor
            .dims
            .iter()
            .try_fold(1usize, |acc, &dim| {
                usize::try_from(dim)
                    .ok()
                    .and_then(|dim| acc.checked_mul(dim))
            })
            .ok_or_else(|| self.error(format!("{what} has invalid dims {:?}", tensor.dims)))?;
        let data_type = tensor.data_type.unwrap_or_default();
        let external = self.external_bytes(tensor, what, count, data_type)?;
        let raw = external.as_deref().or(tensor.raw_data.as_deref());
        let values: Vec<f32> = if data_type == DataType::Float as i32 {
            match raw {
                Some(raw) => {
                    if raw.len() != count.saturating_mul(4) {
                        return Err(self.error(format!(
                            "{what}: dims {:?} need {} bytes of float32 but raw_data has {}",
                            tensor.dims,
                            count.saturating_mul(4),
                            raw.len()
                        )));
                    }
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                None => tensor.float_data.clone(),
            }
        } else if data_type == DataType::Float16 as i32 {
            match raw {
                Some(raw) => {
                    if raw.len() != count.saturating_mul(2) {
                        return Err(self.error(format!(
                            "{what}: dims {:?} need {} bytes of float16 but raw_data has {}",
                            tensor.dims,
                            count.saturating_mul(2),
                            raw.len()
                        )));
                    }
                    raw.chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect()
                }
                // float16 values live in the low 16 bits of int32_data.
                None => tensor
                    .int32_data
                    .iter()
                    .map(|&bits| half::f16::from_bits(bits as u16).to_f32())
                    .collect(),
            }
        } else if data_type == DataType::Int64 as i32 {
            // Only shapes (for Reshape) are int64; they are small.
            match raw {
                Some(raw) if raw.len() == count.saturating_mul(8) => raw
                    .chunks_exact(8)
                    .map(|c| {
                        i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect(),
                Some(_) => return Err(self.error(format!("{what}: raw_data does not match dims"))),
                None => tensor.int64_data.iter().map(|&v| v as f32).collect(),
            }
        } else {
            return Err(self.error(format!(
                "{what} has data type {} ({}); resgraph reads float32 and float16 weights",
                data_type,
                data_type_name(data_type)
            )));
        };
        if values.len() != count {
            return Err(self.error(format!(
                "{what}: dims {:?} need {count} values but the tensor holds {}",
                tensor.dims,
                values.len()
            )));
        }
        Ok(Constant {
            dims: tensor.dims.clone(),
            values,
            integer: data_type == DataType::Int64 as i32,
        })
    }

    /// The activation node behind `name`, emitting a pending MatMul without bias if needed.
    fn activation(&mut self, name: &str, user: &str) -> Result<NodeId> {
        match self.values.get(name).cloned() {
            Some(Value::Node(id)) => Ok(id),
            Some(Value::MatMul(pending)) => {
                let id = self
                    .builder
                    .linear(&pending.name, pending.input, pending.params)?;
                self.values.insert(name.to_string(), Value::Node(id));
                Ok(id)
            }
            Some(Value::Conv(pending)) => {
                let id = self.emit_conv(pending)?;
                self.values.insert(name.to_string(), Value::Node(id));
                Ok(id)
            }
            Some(Value::Constant(_)) => Err(self.error(format!(
                "{user} uses the constant {name:?} as an activation; not supported"
            ))),
            None => Err(self.error(format!("{user} reads {name:?}, which nothing produces"))),
        }
    }

    fn node(&mut self, node: &proto::NodeProto, index: usize) -> Result<()> {
        let op = node.op_type.clone().unwrap_or_default();
        let name = match node.name.as_deref() {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => node
                .output
                .first()
                .cloned()
                .unwrap_or_else(|| format!("node {index}")),
        };
        let path = self.path.to_string();
        let input = |position: usize| -> Result<String> {
            node.input
                .get(position)
                .filter(|name| !name.is_empty())
                .cloned()
                .ok_or_else(|| Error::Model {
                    path: path.clone(),
                    reason: format!("{op} node {name:?} lacks input {position}"),
                })
        };
        let output = node
            .output
            .first()
            .cloned()
            .ok_or_else(|| self.error(format!("{op} node {name:?} has no output")))?;
        self.check_node_form(node, &op, &name, &output)?;
        self.track_multi_axis(node, &op, &name, &output)?;
        let value = match op.as_str() {
            "Gemm" => {
                let x = self.activation(&input(0)?, &format!("Gemm node {name:?}"))?;
                let params = self.gemm_params(node, &name)?;
                Value::Node(self.builder.linear(&name, x, params)?)
            }
            "MatMul" => {
                let x = self.activation(&input(0)?, &format!("MatMul node {name:?}"))?;
                let weight = self.constant_input(&input(1)?, &name)?;
                let [k, n] = self.matrix_dims(&weight, &name)?;
                // ONNX MatMul multiplies by a [K, N] matrix; resgraph stores [N, K].
                let transposed = transpose(&weight.values, k, n);
                let params = LinearParams::new(n, k, transposed, None)?;
                Value::MatMul(PendingMatMul {
                    input: x,
                    params,
                    name: name.clone(),
                })
            }
            "Add" => self.add(&input(0)?, &input(1)?, &name)?,
            "Relu" => {
                let x = self.activation(&input(0)?, &format!("Relu node {name:?}"))?;
                Value::Node(self.builder.relu(&name, x)?)
            }
            "Identity" => match self.values.get(&input(0)?).cloned() {
                // dynamo=False writes an Identity of an initializer for weights it shares.
                Some(Value::Constant(constant)) => Value::Constant(constant),
                _ => Value::Node(self.activation(&input(0)?, &format!("{op} node {name:?}"))?),
            },
            "Flatten" => {
                let axis = attribute_int(node, "axis").unwrap_or(1);
                if axis != 1 {
                    return Err(self.error(format!(
                        "Flatten node {name:?} has axis {axis}; only axis 1 keeps the batch"
                    )));
                }
                let x = self.activation(&input(0)?, &format!("{op} node {name:?}"))?;
                match self.builder.shape(x) {
                    Some(crate::graph::ValueShape::Image { .. }) => {
                        Value::Node(self.builder.flatten(&name, x)?)
                    }
                    _ => Value::Node(x),
                }
            }
            "Conv" => {
                let bias = node.input.get(2).filter(|bias| !bias.is_empty());
                self.conv(
                    node,
                    &name,
                    (&input(0)?, &input(1)?, bias.map(String::as_str)),
                )?
            }
            "BatchNormalization" => {
                let inputs = [input(0)?, input(1)?, input(2)?, input(3)?, input(4)?];
                self.batch_norm(node, &name, inputs.each_ref().map(String::as_str))?
            }
            "MaxPool" | "AveragePool" => self.pool(node, &op, &name, &input(0)?)?,
            "GlobalAveragePool" | "ReduceMean" => {
                let axes = node.input.get(1).filter(|axes| !axes.is_empty());
                self.global_average(node, &op, &name, &input(0)?, axes.map(String::as_str))?
            }
            "Reshape" => self.reshape(&input(0)?, &input(1)?, &name)?,
            "Cast" => self.cast(node, &input(0)?, &name)?,
            "Constant" => Value::Constant(self.constant_node(node, &name)?),
            _ => {
                return Err(Error::UnsupportedOp {
                    path: self.path.to_string(),
                    op,
                    node: name,
                });
            }
        };
        self.values.insert(output, value);
        Ok(())
    }

    /// The value of a `Constant` node, from whichever of its attributes holds it: `value` (a
    /// tensor), `value_float`/`value_floats` or `value_int`/`value_ints`. A sparse tensor or a
    /// string is an error that names the attribute.
    fn constant_node(&self, node: &proto::NodeProto, name: &str) -> Result<Constant> {
        let [attribute] = node.attribute.as_slice() else {
            return Err(self.error(format!(
                "Constant node {name:?} has {} attributes; ONNX gives a Constant exactly one \
                 (value, value_float, value_floats, value_int or value_ints)",
                node.attribute.len()
            )));
        };
        let attribute_name = attribute.name.as_deref().unwrap_or_default();
        let scalar = |values: Vec<f32>, integer: bool| Constant {
            dims: Vec::new(),
            values,
            integer,
        };
        let vector = |values: Vec<f32>, integer: bool| Constant {
            dims: vec![values.len() as i64],
            values,
            integer,
        };
        match attribute_name {
            "value" => match attribute.t.as_ref() {
                Some(tensor) => self.constant(tensor, &format!("Constant node {name:?}")),
                None => Err(self.error(format!(
                    "Constant node {name:?}: its value attribute holds no tensor"
                ))),
            },
            "value_float" => Ok(scalar(vec![attribute.f.unwrap_or_default()], false)),
            "value_floats" => Ok(vector(attribute.floats.clone(), false)),
            "value_int" => Ok(scalar(vec![attribute.i.unwrap_or_default() as f32], true)),
            "value_ints" => Ok(vector(
                attribute.ints.iter().map(|&value| value as f32).collect(),
                true,
            )),
            other => Err(self.error(format!(
                "Constant node {name:?} holds its value in attribute {other:?}; resgraph reads \
                 value, value_float, value_floats, value_int and value_ints"
            ))),
        }
    }

    /// Carries "more than two axes" from a node's inputs to its output through the elementwise
    /// operators, and refuses a `Gemm` or `MatMul` of such a value, which ONNX computes along
    /// its last axis (resgraph would multiply the flattened rows).
    fn track_multi_axis(
        &mut self,
        node: &proto::NodeProto,
        op: &str,
        name: &str,
        output: &str,
    ) -> Result<()> {
        let Some(dims) = node
            .input
            .iter()
            .find_map(|input| self.multi_axis.get(input))
            .cloned()
        else {
            return Ok(());
        };
        match op {
            "Relu" | "Identity" | "Cast" | "Add" => {
                self.multi_axis.insert(output.to_string(), dims);
                Ok(())
            }
            "Gemm" | "MatMul" => Err(self.error(format!(
                "{op} node {name:?} multiplies a value of shape [batch, {}] along its last axis; \
                 resgraph multiplies rows, so flatten it first (Flatten with axis 1)",
                dims.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses what onnxruntime refuses before resgraph reads a node's meaning: an operator of a
    /// domain other than the standard one, an input count its operator does not take, a second
    /// output, and an output name already given to a value (ONNX assigns each name once).
    /// Unknown operators are left to the caller's `UnsupportedOp`.
    fn check_node_form(
        &self,
        node: &proto::NodeProto,
        op: &str,
        name: &str,
        output: &str,
    ) -> Result<()> {
        let domain = node.domain.as_deref().unwrap_or_default();
        if !domain.is_empty() && domain != "ai.onnx" {
            return Err(self.error(format!(
                "{op} node {name:?} is of domain {domain:?}; resgraph runs the standard ONNX \
                 operators (domain \"\" or \"ai.onnx\") only"
            )));
        }
        let Some((fewest, most)) = input_counts(op) else {
            return Ok(());
        };
        // Trailing empty names are omitted optional inputs.
        let given = node
            .input
            .iter()
            .rposition(|input| !input.is_empty())
            .map_or(0, |last| last + 1);
        if given < fewest || given > most {
            let takes = if fewest == most {
                format!("{fewest}")
            } else {
                format!("{fewest} to {most}")
            };
            return Err(self.error(format!(
                "{op} node {name:?} has {given} inputs; {op} takes {takes}"
            )));
        }
        if let Some(extra) = node.output.iter().skip(1).find(|name| !name.is_empty()) {
            return Err(self.error(format!(
                "{op} node {name:?} has a second output {extra:?}; resgraph computes one output \
                 per node (MaxPool's indices and training-mode batch norm are not supported)"
            )));
        }
        if output.is_empty() {
            return Err(self.error(format!("{op} node {name:?} has an empty output name")));
        }
        if self.values.contains_key(output) {
            return Err(self.error(format!(
                "{op} node {name:?} writes {output:?}, a name already given to the input, an \
                 initializer or an earlier node's output; ONNX assigns each name once"
            )));
        }
        Ok(())
    }

    /// A `Reshape` that keeps one row per batch entry, which resgraph's row-major matrices
    /// already are: `[0 or -1, width]`, `[0, -1]`, or the model's declared fixed batch in place
    /// of the 0. Any other target moves values between batch entries (`[8, -1]` of a `[5, 8]`
    /// value is `[8, 5]`) and is refused, naming the node and the shape.
    fn reshape(&mut self, source: &str, shape: &str, name: &str) -> Result<Value> {
        let x = self.activation(source, &format!("Reshape node {name:?}"))?;
        let shape = self.integer_input(shape, name)?;
        let width = self.builder.width(x).unwrap_or(0) as i64;
        let target: Vec<i64> = shape.values.iter().map(|&v| v as i64).collect();
        let keeps_batch = |rows: i64| rows == 0 || Some(rows) == self.fixed_batch;
        let supported = match target.as_slice() {
            [rows, cols] if *cols == width => *rows == -1 || keeps_batch(*rows),
            [rows, -1] => keeps_batch(*rows),
            _ => false,
        };
        if !supported {
            let batch = match self.fixed_batch {
                Some(batch) => format!("the model's fixed batch {batch}"),
                None => "a symbolic batch".to_string(),
            };
            return Err(self.error(format!(
                "Reshape node {name:?} reshapes a [batch, {width}] value ({batch}) to \
                 {target:?}, which moves values between batch entries or changes the width; \
                 resgraph supports reshapes that keep the batch: [0 or -1, {width}] or [0, -1]"
            )));
        }
        // An image pooled to one pixel and reshaped to [batch, channels] (an older export of
        // torchvision's average pool) is a flatten in PyTorch's order.
        match self.builder.shape(x) {
            Some(crate::graph::ValueShape::Image { .. }) => {
                Ok(Value::Node(self.builder.flatten(name, x)?))
            }
            _ => Ok(Value::Node(x)),
        }
    }

    /// A `Cast` to float32 of a constant (weights stored in float16) or of an activation; a cast
    /// to any other type is an error, since resgraph computes in float32.
    fn cast(&mut self, node: &proto::NodeProto, source: &str, name: &str) -> Result<Value> {
        let to = attribute_int(node, "to").unwrap_or_default();
        match self.values.get(source).cloned() {
            // Weights stored in float16 and cast to float32: keep them as constants (they are
            // already converted to f32).
            Some(Value::Constant(constant)) if to == DataType::Float as i64 => {
                Ok(Value::Constant(Constant {
                    integer: false,
                    ..constant
                }))
            }
            Some(Value::Constant(_)) => Err(self.error(format!(
                "Cast node {name:?} casts a constant to {} ({}); resgraph computes in float32",
                to,
                data_type_name(to as i32)
            ))),
            _ if to == DataType::Float as i64 => Ok(Value::Node(
                self.activation(source, &format!("Cast node {name:?}"))?,
            )),
            _ => Err(self.error(format!(
                "Cast node {name:?} casts an activation to {} ({}); resgraph computes in float32",
                to,
                data_type_name(to as i32)
            ))),
        }
    }

    fn add(&mut self, left: &str, right: &str, name: &str) -> Result<Value> {
        let left_value = self.values.get(left).cloned();
        let right_value = self.values.get(right).cloned();
        // A bias add right after a MatMul folds into the layer.
        let bias_add = match (&left_value, &right_value) {
            (Some(Value::MatMul(pending)), Some(Value::Constant(bias)))
            | (Some(Value::Constant(bias)), Some(Value::MatMul(pending))) => {
                Some((pending.clone(), bias.clone()))
            }
            _ => None,
        };
        if let Some((pending, bias)) = bias_add {
            if bias.integer {
                return Err(self.error(format!(
                    "Add node {name:?} adds an int64 tensor as a bias; biases are float32 or \
                     float16"
                )));
            }
            let n = pending.params.out_features();
            let is_vector = bias.values.len() == n
                && (bias.dims.len() == 1 || (bias.dims.len() == 2 && bias.dims[0] == 1));
            if !is_vector {
                return Err(self.error(format!(
                    "Add node {name:?} adds a constant of dims {:?} to a MatMul of width {n}; \
                     only a bias of [{n}] is supported",
                    bias.dims
                )));
            }
            let params = LinearParams::new(
                n,
                pending.params.in_features(),
                pending.params.weight().to_vec(),
                Some(bias.values),
            )?;
            let id = self.builder.linear(&pending.name, pending.input, params)?;
            return Ok(Value::Node(id));
        }
        let left = self.activation(left, &format!("Add node {name:?}"))?;
        let right = self.activation(right, &format!("Add node {name:?}"))?;
        Ok(Value::Node(self.builder.add(name, left, right)?))
    }

    /// The float constant (a weight, bias or batch-norm statistic) behind input `name` of
    /// `node`; an activation or an int64 tensor there is an error.
    fn constant_input(&self, name: &str, node: &str) -> Result<Constant> {
        match self.values.get(name) {
            Some(Value::Constant(constant)) if constant.integer => Err(self.error(format!(
                "node {node:?} uses the int64 tensor {name:?} as a weight; weights are float32 \
                 or float16"
            ))),
            Some(Value::Constant(constant)) => Ok(constant.clone()),
            _ => Err(self.error(format!(
                "node {node:?} needs {name:?} to be an initializer or constant; resgraph does \
                 not multiply two activations"
            ))),
        }
    }

    /// The int64 constant (a shape or axes) behind input `name` of `node`, as ONNX requires.
    fn integer_input(&self, name: &str, node: &str) -> Result<Constant> {
        match self.values.get(name) {
            Some(Value::Constant(constant)) if constant.integer => Ok(constant.clone()),
            Some(Value::Constant(_)) => Err(self.error(format!(
                "node {node:?} takes {name:?} as a shape or axes, which ONNX stores as int64; \
                 this tensor is float"
            ))),
            _ => Err(self.error(format!(
                "node {node:?} needs {name:?} to be an initializer or constant (a shape or axes)"
            ))),
        }
    }

    fn matrix_dims(&self, constant: &Constant, node: &str) -> Result<[usize; 2]> {
        match constant.dims.as_slice() {
            [rows, cols] if *rows > 0 && *cols > 0 => Ok([*rows as usize, *cols as usize]),
            dims => Err(self.error(format!(
                "node {node:?} has a weight of dims {dims:?}; expected a 2-D matrix"
            ))),
        }
    }

    fn gemm_params(&self, node: &proto::NodeProto, name: &str) -> Result<LinearParams> {
        let alpha = attribute_float(node, "alpha").unwrap_or(1.0);
        let beta = attribute_float(node, "beta").unwrap_or(1.0);
        if attribute_int(node, "transA").unwrap_or(0) != 0 {
            return Err(self.error(format!(
                "Gemm node {name:?} has transA = 1; resgraph keeps activations as [batch, features]"
            )));
        }
        let trans_b = attribute_int(node, "transB").unwrap_or(0) != 0;
        let b_name = node.input.get(1).cloned().unwrap_or_default();
        let b = self.constant_input(&b_name, name)?;
        let [rows, cols] = self.matrix_dims(&b, name)?;
        // transB = 1 is PyTorch's [out, in]; transB = 0 is [in, out].
        let (n, k, mut weight) = if trans_b {
            (rows, cols, b.values.clone())
        } else {
            (cols, rows, transpose(&b.values, rows, cols))
        };
        if alpha != 1.0 {
            weight.iter_mut().for_each(|w| *w *= alpha);
        }
        let bias = match node.input.get(2).filter(|c| !c.is_empty()) {
            Some(c_name) => {
                let c = self.constant_input(c_name, name)?;
                let is_vector = c.values.len() == n
                    && (c.dims.len() == 1 || (c.dims.len() == 2 && c.dims[0] == 1));
                let is_scalar = c.values.len() == 1;
                if !(is_vector || is_scalar) {
                    return Err(self.error(format!(
                        "Gemm node {name:?} has C of dims {:?}; only [{n}], [1, {n}] or a scalar \
                         is supported",
                        c.dims
                    )));
                }
                let values: Vec<f32> = if is_vector {
                    c.values.iter().map(|v| v * beta).collect()
                } else {
                    vec![c.values[0] * beta; n]
                };
                Some(values)
            }
            None => None,
        };
        LinearParams::new(n, k, weight, bias)
    }
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn attribute_int(node: &proto::NodeProto, name: &str) -> Option<i64> {
    node.attribute
        .iter()
        .find(|attribute| attribute.name.as_deref() == Some(name))
        .and_then(|attribute| attribute.i)
}

fn attribute_float(node: &proto::NodeProto, name: &str) -> Option<f32> {
    node.attribute
        .iter()
        .find(|attribute| attribute.name.as_deref() == Some(name))
        .and_then(|attribute| attribute.f)
}

fn data_type_name(data_type: i32) -> &'static str {
    DataType::try_from(data_type).map_or("unknown", |t| t.as_str_name())
}

/// The batch (first) dimension `input` declares, when it is a positive number rather than a
/// symbol.
fn declared_batch(input: &proto::ValueInfoProto) -> Option<i64> {
    use proto::tensor_shape_proto::dimension::Value as Dim;
    use proto::type_proto::Value as Type;
    let Some(Type::TensorType(tensor)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    match tensor.shape.as_ref()?.dim.first()?.value {
        Some(Dim::DimValue(batch)) if batch > 0 => Some(batch),
        _ => None,
    }
}

/// The fewest and most inputs each operator resgraph imports takes (optional trailing inputs
/// included), as the ONNX operator set defines them; `None` for an operator it does not import.
fn input_counts(op: &str) -> Option<(usize, usize)> {
    Some(match op {
        "Constant" => (0, 0),
        "Relu" | "Identity" | "Flatten" | "Cast" | "MaxPool" | "AveragePool"
        | "GlobalAveragePool" => (1, 1),
        "ReduceMean" => (1, 2),
        "MatMul" | "Add" | "Reshape" => (2, 2),
        "Gemm" | "Conv" => (2, 3),
        "BatchNormalization" => (5, 5),
        _ => return None,
    })
}

/// `message` cut to one readable line: prost's decode errors list every enclosing field, which
/// for a deeply nested (hostile) message runs to kilobytes.
fn clip_message(message: &str) -> String {
    const HEAD: usize = 160;
    const TAIL: usize = 80;
    let characters: Vec<char> = message.chars().collect();
    if characters.len() <= HEAD + TAIL {
        return message.to_string();
    }
    let head: String = characters[..HEAD].iter().collect();
    let tail: String = characters[characters.len() - TAIL..].iter().collect();
    format!(
        "{head} … ({} characters left out) … {tail}",
        characters.len() - HEAD - TAIL
    )
}
