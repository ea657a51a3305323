//! The convolutional part of the ONNX importer: `Conv` (with a following `BatchNormalization`
//! folded into its weights and bias), `BatchNormalization`, `MaxPool`, `AveragePool`,
//! `GlobalAveragePool` and `ReduceMean` over the spatial axes, as `torch.onnx.export` writes them
//! for torchvision's ResNets with `dynamo=True` and `dynamo=False`.
//!
//! Only what resgraph runs is accepted: dilation 1, one group, explicit padding, floor rounding.
//! Anything else is one error line naming the operator, the node and the attribute.

use crate::error::Result;
use crate::graph::batch_norm::{BatchNorm, fold_batch_norm};
use crate::graph::{Conv2dParams, NodeId, PoolWindow, ValueShape};

use super::proto;
use super::{Importer, Value};

/// A convolution whose batch norm may still follow: it is added to the graph when something
/// other than a `BatchNormalization` reads it.
#[derive(Clone, Debug)]
pub(super) struct PendingConv {
    pub(super) input: NodeId,
    pub(super) params: Conv2dParams,
    pub(super) name: String,
}

/// The integer list attribute `name` of `node`, if present.
fn attribute_ints<'n>(node: &'n proto::NodeProto, name: &str) -> Option<&'n [i64]> {
    node.attribute
        .iter()
        .find(|attribute| attribute.name.as_deref() == Some(name))
        .map(|attribute| attribute.ints.as_slice())
}

/// The string attribute `name` of `node`, if present.
fn attribute_string(node: &proto::NodeProto, name: &str) -> Option<String> {
    node.attribute
        .iter()
        .find(|attribute| attribute.name.as_deref() == Some(name))
        .and_then(|attribute| attribute.s.as_ref())
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
}

/// The window attributes shared by `Conv`, `MaxPool` and `AveragePool`.
struct Window {
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize, usize, usize),
}

impl Importer<'_> {
    /// One error line naming the operator, the node and what is unsupported about it.
    fn unsupported_attribute(&self, op: &str, name: &str, attribute: String) -> crate::Error {
        self.error(format!(
            "{op} node {name:?} has {attribute}, which resgraph does not support"
        ))
    }

    /// Reads `kernel_shape` (or `kernel` when the op has no such attribute), `strides`, `pads`,
    /// and refuses `dilations` other than 1, `auto_pad` other than `NOTSET` and `ceil_mode`.
    fn window(
        &self,
        node: &proto::NodeProto,
        op: &str,
        name: &str,
        kernel: Option<(usize, usize)>,
    ) -> Result<Window> {
        let pair = |values: &[i64], what: &str| -> Result<(usize, usize)> {
            match values {
                [h, w] if *h > 0 && *w > 0 => Ok((*h as usize, *w as usize)),
                other => Err(self.unsupported_attribute(op, name, format!("{what}={other:?}"))),
            }
        };
        let kernel = match (attribute_ints(node, "kernel_shape"), kernel) {
            (Some(values), _) => pair(values, "kernel_shape")?,
            (None, Some(kernel)) => kernel,
            (None, None) => {
                return Err(self.error(format!("{op} node {name:?} has no kernel_shape")));
            }
        };
        let stride = match attribute_ints(node, "strides") {
            Some(values) => pair(values, "strides")?,
            None => (1, 1),
        };
        let padding = match attribute_ints(node, "pads") {
            Some([top, left, bottom, right])
                if [*top, *left, *bottom, *right].iter().all(|pad| *pad >= 0) =>
            {
                (
                    *top as usize,
                    *left as usize,
                    *bottom as usize,
                    *right as usize,
                )
            }
            Some(other) => {
                return Err(self.unsupported_attribute(op, name, format!("pads={other:?}")));
            }
            None => (0, 0, 0, 0),
        };
        if let Some(dilations) = attribute_ints(node, "dilations")
            && dilations.iter().any(|&dilation| dilation != 1)
        {
            return Err(self.unsupported_attribute(op, name, format!("dilations={dilations:?}")));
        }
        if let Some(auto_pad) = attribute_string(node, "auto_pad")
            && auto_pad != "NOTSET"
        {
            return Err(self.unsupported_attribute(op, name, format!("auto_pad={auto_pad}")));
        }
        if let Some(ceil_mode) = super::attribute_int(node, "ceil_mode")
            && ceil_mode != 0
        {
            return Err(self.unsupported_attribute(op, name, format!("ceil_mode={ceil_mode}")));
        }
        Ok(Window {
            kernel,
            stride,
            padding,
        })
    }

    /// `Conv(x, W[, B])`: kept pending, so that a following batch norm folds into it.
    pub(super) fn conv(
        &mut self,
        node: &proto::NodeProto,
        name: &str,
        (input, weight, bias): (&str, &str, Option<&str>),
    ) -> Result<Value> {
        if let Some(group) = super::attribute_int(node, "group")
            && group != 1
        {
            return Err(self.unsupported_attribute(
                "Conv",
                name,
                format!("group={group} (grouped and depthwise convolutions)"),
            ));
        }
        let x = self.activation(input, &format!("Conv node {name:?}"))?;
        let weight = self.constant_input(weight, name)?;
        let dims: Vec<usize> = match weight.dims.as_slice() {
            [m, c, h, w] if [*m, *c, *h, *w].iter().all(|dim| *dim > 0) => {
                vec![*m as usize, *c as usize, *h as usize, *w as usize]
            }
            other => {
                return Err(self.error(format!(
                    "Conv node {name:?} has a weight of dims {other:?}; expected [out, in, kh, kw]"
                )));
            }
        };
        let window = self.window(node, "Conv", name, Some((dims[2], dims[3])))?;
        if window.kernel != (dims[2], dims[3]) {
            return Err(self.error(format!(
                "Conv node {name:?} declares kernel_shape {:?} but its weight is {}x{}",
                window.kernel, dims[2], dims[3]
            )));
        }
        let bias = bias
            .map(|bias| self.constant_input(bias, name))
            .transpose()?
            .map(|bias| bias.values);
        let params = Conv2dParams::new(
            (dims[0], dims[1]),
            window.kernel,
            window.stride,
            window.padding,
            weight.values,
            bias,
        )?;
        Ok(Value::Conv(PendingConv {
            input: x,
            params,
            name: name.to_string(),
        }))
    }

    /// `BatchNormalization(x, scale, B, mean, var)` in inference form, folded into the pending
    /// convolution that produces `x`.
    pub(super) fn batch_norm(
        &mut self,
        node: &proto::NodeProto,
        name: &str,
        inputs: [&str; 5],
    ) -> Result<Value> {
        if let Some(training) = super::attribute_int(node, "training_mode")
            && training != 0
        {
            return Err(self.unsupported_attribute(
                "BatchNormalization",
                name,
                format!("training_mode={training}"),
            ));
        }
        let Some(Value::Conv(pending)) = self.values.get(inputs[0]).cloned() else {
            return Err(self.error(format!(
                "BatchNormalization node {name:?} reads {:?}, which is not a convolution's output; \
                 resgraph folds batch norm into the convolution before it",
                inputs[0]
            )));
        };
        let [scale, bias, mean, variance] =
            [1, 2, 3, 4].map(|i| self.constant_input(inputs[i], name));
        let (scale, bias, mean, variance) = (scale?, bias?, mean?, variance?);
        let epsilon = super::attribute_float(node, "epsilon").unwrap_or(1e-5);
        let params = &pending.params;
        let (weight, folded_bias) = fold_batch_norm(
            params.weight(),
            params.bias(),
            params.out_channels(),
            &BatchNorm {
                weight: &scale.values,
                bias: &bias.values,
                running_mean: &mean.values,
                running_var: &variance.values,
                epsilon,
            },
        )
        .map_err(|error| self.error(format!("BatchNormalization node {name:?}: {error}")))?;
        let folded = Conv2dParams::new(
            (params.out_channels(), params.in_channels()),
            params.kernel(),
            params.stride(),
            params.padding(),
            weight,
            Some(folded_bias),
        )?;
        Ok(Value::Conv(PendingConv {
            params: folded,
            ..pending
        }))
    }

    /// `MaxPool` or `AveragePool`.
    pub(super) fn pool(
        &mut self,
        node: &proto::NodeProto,
        op: &str,
        name: &str,
        input: &str,
    ) -> Result<Value> {
        if let Some(order) = super::attribute_int(node, "storage_order")
            && order != 0
        {
            return Err(self.unsupported_attribute(op, name, format!("storage_order={order}")));
        }
        let x = self.activation(input, &format!("{op} node {name:?}"))?;
        let window = self.window(node, op, name, None)?;
        let window = PoolWindow {
            kernel: window.kernel,
            stride: window.stride,
            padding: window.padding,
        };
        let id = if op == "MaxPool" {
            self.builder.max_pool2d(name, x, window)?
        } else {
            let count_include_pad = super::attribute_int(node, "count_include_pad").unwrap_or(0);
            self.builder
                .avg_pool2d(name, x, window, count_include_pad != 0)?
        };
        Ok(Value::Node(id))
    }

    /// `GlobalAveragePool`, or `ReduceMean` over exactly the two spatial axes (how
    /// `dynamo=True` writes torchvision's average pool), given as the `axes` attribute (opset up
    /// to 17) or as a constant second input (opset 18 on).
    pub(super) fn global_average(
        &mut self,
        node: &proto::NodeProto,
        op: &str,
        name: &str,
        input: &str,
        axes_input: Option<&str>,
    ) -> Result<Value> {
        if op == "ReduceMean" {
            let axes: Vec<i64> = match (attribute_ints(node, "axes"), axes_input) {
                (Some(axes), _) => axes.to_vec(),
                (None, Some(axes)) => self
                    .integer_input(axes, name)?
                    .values
                    .iter()
                    .map(|&axis| axis as i64)
                    .collect(),
                (None, None) => Vec::new(),
            };
            let mut spatial: Vec<i64> = axes
                .iter()
                .map(|&axis| if axis < 0 { axis + 4 } else { axis })
                .collect();
            spatial.sort_unstable();
            if spatial != [2, 3] {
                return Err(self.unsupported_attribute(
                    op,
                    name,
                    format!("axes={axes:?} (only the mean over the two spatial axes is supported)"),
                ));
            }
        }
        let x = self.activation(input, &format!("{op} node {name:?}"))?;
        match self.builder.shape(x) {
            Some(ValueShape::Image { .. }) => {}
            other => {
                return Err(self.error(format!(
                    "{op} node {name:?} reads a value of shape {:?}; expected an image",
                    other.map(|shape| shape.describe())
                )));
            }
        }
        Ok(Value::Node(self.builder.global_avg_pool(name, x)?))
    }

    /// Adds a pending convolution to the graph.
    pub(super) fn emit_conv(&mut self, pending: PendingConv) -> Result<NodeId> {
        self.builder
            .conv2d(&pending.name, pending.input, pending.params)
    }
}
