#!/usr/bin/env python3
"""Writes random ResNet-shaped ONNX models (torchvision's resnet18 and resnet50 layouts) and
onnxruntime's outputs for them.

Each case is written as CASE.onnx (with CASE.onnx.data where the weights are external), and per
batch CASE.bN.input.npy (NCHW images, as PyTorch takes them) and CASE.bN.expected.npy ([N,
classes]) into the output folder, with manifest.json listing them. tests/onnx_resnet.rs runs every
case through resgraph and compares with onnxruntime's answer (relative error <= 1e-4).

The models are built with onnx.helper in the two forms torch.onnx.export writes for torchvision's
ResNets at opset 17 to 20:
  - "dynamo" (dynamo=True, the default since torch 2.9): batch norm already folded into each Conv
    (weight and bias), Relu, MaxPool 3x3/2 pad 1, Add, ReduceMean over the spatial axes with
    keepdims=1 (axes an attribute up to opset 17, an int64 input from opset 18; [2, 3], or
    [-1, -2] in the fixed-batch models), Reshape to [1, C] for a model exported with a fixed
    batch of 1 or [-1, C] for one exported with a symbolic batch, Gemm with transB=1; every float
    initializer in one side file CASE.onnx.data (the int64 axes and shapes stay in the model,
    where onnxruntime's shape inference needs them);
  - "torchscript" (dynamo=False): Conv without bias followed by BatchNormalization (epsilon
    1e-5), Identity nodes of some initializers feeding Conv weights, GlobalAveragePool, Flatten,
    Gemm; a symbolic batch; weights inside the model.
onnxruntime runs a model whose input has a fixed batch of 1 only at batch 1, so the ResNet-18
dynamo-form models are written that way ("fixed_batch") and checked at batch 1 only; batch 3 is
checked on the ResNet-50 dynamo-form models, written with a symbolic batch and a [-1, C]
reshape, and on every torchscript-form model. One more torchscript-form ResNet-18 stores its
weights in float16, cast to float32 by Cast nodes.

The architectures are torchvision's: a 7x7/2 stem convolution, batch norm, ReLU and a 3x3/2 max
pool; four stages of basic blocks ([2, 2, 2, 2], ResNet-18) or bottleneck blocks ([3, 4, 6, 3]
with expansion 4 and the stride on the 3x3 convolution, ResNet-50), a 1x1 projection where a
block changes the size or the channels; a global average pool and a linear classifier. The base
width (64 in torchvision) is a parameter so that the cases stay fast on a software adapter: by
default 16 with 100 classes, on 224x224 and 97x61 images (what CI runs); --base-width 64
--classes 1000 gives torchvision's full sizes; --small gives 32x29-sized images and base widths
4 and 2, the set committed in tests/data/onnx_resnet.

The weights are random with He scale (normal, std sqrt(2 / fan_in)), and batch norm statistics
random but sane (gamma in [0.8, 1.2], beta and running_mean in [-0.1, 0.1], running_var in
[0.5, 2]). The last batch norm of every residual branch has gamma in [0.2, 0.4] instead, so that
the sum of identity and branch does not double the activations' variance at every block (what
torchvision's zero_init_residual avoids by a zero gamma, which would hide the branch).

Usage: python3 scripts/onnx_resnet_reference.py OUT_DIR [--seed N] [--small]
                                                [--base-width N] [--classes N]
Pinned versions (see .ci/run): onnx==1.20.1 onnxruntime==1.23.2 numpy==2.3.5.
"""
import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, external_data_helper, helper, numpy_helper

BATCH_NORM_EPSILON = 1e-5

# Blocks per stage and the block type, as torchvision's resnet18 and resnet50.
ARCHITECTURES = {
    "resnet18": {"blocks": [2, 2, 2, 2], "bottleneck": False},
    "resnet50": {"blocks": [3, 4, 6, 3], "bottleneck": True},
}


class ResNetBuilder:
    """Collects the nodes and initializers of one model in one export form."""

    def __init__(self, rng, form, opset, fp16=False):
        assert form in ("dynamo", "torchscript"), form
        self.rng = rng
        self.form = form
        self.opset = opset
        self.fp16 = fp16
        self.nodes = []
        self.initializers = []
        self.count = 0
        self.convolutions = 0

    def fresh(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def node(self, op, inputs, output_prefix, **attributes):
        output = self.fresh(output_prefix)
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"node_{output}",
                                           **attributes))
        return output

    def int64_constant(self, name, values):
        self.initializers.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def weight(self, name, array):
        """A float initializer; with fp16, stored as float16 and cast to float32 by a Cast
        node, as a model converted to half-precision weights is."""
        array = array.astype(np.float16 if self.fp16 else np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        if not self.fp16:
            return name
        return self.node("Cast", [name], name + "_f32", to=TensorProto.FLOAT)

    def conv_bn(self, x, name, in_channels, out_channels, kernel, stride, padding,
                last_in_branch=False):
        """A bias-free convolution followed by batch norm, as torchvision writes them, in the
        export form's shape: folded into one Conv (dynamo) or a Conv then BatchNormalization
        (torchscript)."""
        fan_in = in_channels * kernel * kernel
        weight = self.rng.normal(0.0, np.sqrt(2.0 / fan_in),
                                 (out_channels, in_channels, kernel, kernel))
        gamma_range = (0.2, 0.4) if last_in_branch else (0.8, 1.2)
        gamma = self.rng.uniform(*gamma_range, out_channels)
        beta = self.rng.uniform(-0.1, 0.1, out_channels)
        running_mean = self.rng.uniform(-0.1, 0.1, out_channels)
        running_var = self.rng.uniform(0.5, 2.0, out_channels)
        attributes = dict(kernel_shape=[kernel, kernel], strides=[stride, stride],
                          pads=[padding] * 4, dilations=[1, 1], group=1)
        self.convolutions += 1
        if self.form == "dynamo":
            scale = gamma / np.sqrt(running_var + BATCH_NORM_EPSILON)
            folded_weight = weight * scale[:, None, None, None]
            folded_bias = beta - running_mean * scale
            w = self.weight(name + ".weight", folded_weight)
            b = self.weight(name + ".bias", folded_bias)
            return self.node("Conv", [x, w, b], "conv2d", **attributes)
        w = self.weight(name + ".weight", weight)
        # The torchscript exporter writes an Identity of an initializer for some weights (those
        # it deduplicated); every third convolution reads its weight through one here.
        if self.convolutions % 3 == 0:
            w = self.node("Identity", [w], "onnx::Conv_identity")
        conv = self.node("Conv", [x, w], name.replace(".", "/") + "/Conv_output", **attributes)
        bn_name = name.replace("conv", "bn").replace("downsample.0", "downsample.1")
        bn_inputs = [self.weight(f"{bn_name}.{what}", values) for what, values in
                     (("weight", gamma), ("bias", beta), ("running_mean", running_mean),
                      ("running_var", running_var))]
        return self.node("BatchNormalization", [conv] + bn_inputs,
                         bn_name.replace(".", "/") + "/BatchNormalization_output",
                         epsilon=BATCH_NORM_EPSILON, momentum=0.9)

    def relu(self, x):
        return self.node("Relu", [x], "relu")

    def add(self, branch, identity):
        # torchvision writes `out += identity`: the branch first.
        return self.node("Add", [branch, identity], "add")

    def basic_block(self, x, name, in_channels, planes, stride):
        out = self.relu(self.conv_bn(x, name + ".conv1", in_channels, planes, 3, stride, 1))
        out = self.conv_bn(out, name + ".conv2", planes, planes, 3, 1, 1, last_in_branch=True)
        identity = x
        if stride != 1 or in_channels != planes:
            identity = self.conv_bn(x, name + ".downsample.0", in_channels, planes, 1, stride, 0)
        return self.relu(self.add(out, identity)), planes

    def bottleneck_block(self, x, name, in_channels, planes, stride):
        expanded = planes * 4
        out = self.relu(self.conv_bn(x, name + ".conv1", in_channels, planes, 1, 1, 0))
        out = self.relu(self.conv_bn(out, name + ".conv2", planes, planes, 3, stride, 1))
        out = self.conv_bn(out, name + ".conv3", planes, expanded, 1, 1, 0, last_in_branch=True)
        identity = x
        if stride != 1 or in_channels != expanded:
            identity = self.conv_bn(x, name + ".downsample.0", in_channels, expanded, 1, stride,
                                    0)
        return self.relu(self.add(out, identity)), expanded

    def global_average(self, x, channels, fixed_batch, reduce_axes):
        """torchvision's avgpool and flatten: ReduceMean over `reduce_axes` + Reshape (dynamo) or
        GlobalAveragePool + Flatten (torchscript)."""
        if self.form == "torchscript":
            pooled = self.node("GlobalAveragePool", [x], "/avgpool/GlobalAveragePool_output")
            return self.node("Flatten", [pooled], "/Flatten_output", axis=1)
        if self.opset >= 18:
            axes = self.int64_constant("val_axes", reduce_axes)
            mean = self.node("ReduceMean", [x, axes], "mean", keepdims=1)
        else:
            mean = self.node("ReduceMean", [x], "mean", axes=reduce_axes, keepdims=1)
        shape = self.int64_constant("val_shape", [1 if fixed_batch else -1, channels])
        return self.node("Reshape", [mean, shape], "view")

    def linear(self, x, in_features, out_features):
        bound = 1.0 / np.sqrt(in_features)
        w = self.weight("fc.weight", self.rng.uniform(-bound, bound, (out_features, in_features)))
        b = self.weight("fc.bias", self.rng.uniform(-bound, bound, out_features))
        return self.node("Gemm", [x, w, b], "linear", alpha=1.0, beta=1.0, transB=1)


def build(case, rng):
    """The case's model, checked by onnx.checker."""
    architecture = ARCHITECTURES[case["architecture"]]
    b = ResNetBuilder(rng, case["form"], case["opset"], fp16=case.get("fp16", False))
    height, width = case["image"]
    fixed_batch = case.get("fixed_batch", False)
    batch_dim = 1 if fixed_batch else "batch"
    base = case["base_width"]
    x = b.relu(b.conv_bn("input", "conv1", 3, base, 7, 2, 3))
    x = b.node("MaxPool", [x], "max_pool2d", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1], dilations=[1, 1], ceil_mode=0)
    channels = base
    for stage, blocks in enumerate(architecture["blocks"]):
        planes = base * 2 ** stage
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            block = b.bottleneck_block if architecture["bottleneck"] else b.basic_block
            x, channels = block(x, f"layer{stage + 1}.{index}", channels, planes, stride)
    x = b.global_average(x, channels, fixed_batch, case.get("reduce_axes", [2, 3]))
    out = b.linear(x, channels, case["classes"])
    graph = helper.make_graph(
        b.nodes, case["name"],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_dim, 3, height, width])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch_dim, case["classes"]])],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case["opset"])])
    # The IR versions the exporters write: 8 from the torchscript exporter, 10 from dynamo.
    model.ir_version = 10 if case["form"] == "dynamo" else 8
    onnx.checker.check_model(model)
    return model


def save_with_external_weights(model, model_path, location):
    """Saves `model` as torch.onnx.export(dynamo=True) does through onnx: every float
    initializer in one side file next to the model. The int64 axes and shapes stay in the model:
    onnxruntime's shape inference refuses a Reshape whose shape is external data."""
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=location, size_threshold=0)
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.INT64:
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    onnx.save_model(model, model_path)


def cases(small, base_width, classes):
    def case(architecture, form, image, **kw):
        base = dict(architecture=architecture, form=form, image=image, base_width=base_width,
                    classes=classes, opset=18 if form == "dynamo" else 17, batches=[1, 3])
        base.update(kw)
        if base.get("fixed_batch", False):
            base["batches"] = [1]
        variant = "_fixed_batch" if base.get("fixed_batch", False) else ""
        variant += "_fp16" if base.get("fp16", False) else ""
        base["name"] = (f"{architecture}_{form}{variant}_opset{base['opset']}"
                        f"_w{base['base_width']}_{image[0]}x{image[1]}")
        return base
    if small:
        # Tiny images and base width 4, so that the committed files stay small and the tests
        # fast; one ResNet-50 has base width 2, so that its channel counts (2, 8, ...) are not
        # all multiples of 4 and the kernels' scalar paths run too.
        return [
            # The spatial axes counted from the end, [-1, -2], as the mean over the last two
            # dimensions can be written too.
            case("resnet18", "dynamo", [32, 29], base_width=4, classes=10, fixed_batch=True,
                 opset=17, reduce_axes=[-1, -2]),
            case("resnet18", "torchscript", [29, 32], base_width=4, classes=10),
            case("resnet50", "dynamo", [32, 29], base_width=4, classes=10, opset=20),
            case("resnet50", "torchscript", [21, 19], base_width=2, classes=10),
            case("resnet18", "torchscript", [17, 23], base_width=4, classes=7, fp16=True),
        ]
    all_cases = []
    for image in ([224, 224], [97, 61]):
        all_cases += [
            case("resnet18", "dynamo", image, fixed_batch=True, reduce_axes=[-1, -2]),
            case("resnet18", "torchscript", image),
            case("resnet50", "dynamo", image, opset=20),
            case("resnet50", "torchscript", image),
        ]
    all_cases.append(case("resnet18", "torchscript", [97, 61], fp16=True))
    return all_cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="only the tiny cases (committed)")
    parser.add_argument("--base-width", type=int, default=16,
                        help="channels of the stem and first stage (torchvision: 64)")
    parser.add_argument("--classes", type=int, default=100,
                        help="the classifier's outputs (torchvision: 1000)")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    manifest = []
    for case in cases(args.small, args.base_width, args.classes):
        model = build(case, rng)
        model_path = os.path.join(args.out_dir, case["name"] + ".onnx")
        if case["form"] == "dynamo":
            save_with_external_weights(model, model_path, case["name"] + ".onnx.data")
        else:
            onnx.save(model, model_path)
        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        height, width = case["image"]
        for batch in case["batches"]:
            # Roughly what ImageNet normalisation gives: values of mean 0 and deviation 1.
            x = rng.standard_normal([batch, 3, height, width]).astype(np.float32)
            (y,) = session.run(None, {"input": x})
            stem = f"{case['name']}.b{batch}"
            np.save(os.path.join(args.out_dir, stem + ".input.npy"), x)
            np.save(os.path.join(args.out_dir, stem + ".expected.npy"), y.astype(np.float32))
            manifest.append({"model": case["name"] + ".onnx", "input": stem + ".input.npy",
                             "expected": stem + ".expected.npy", "batch": batch,
                             "architecture": case["architecture"], "form": case["form"],
                             "opset": case["opset"], "image": case["image"],
                             "base_width": case["base_width"], "classes": case["classes"],
                             "fp16": case.get("fp16", False),
                             "fixed_batch": case.get("fixed_batch", False)})
            print(f"{stem}: output std {y.std():.3f}, max |y| {np.abs(y).max():.3f}")
    with open(os.path.join(args.out_dir, "manifest.json"), "w") as f:
        json.dump({"onnx": onnx.__version__, "onnxruntime": ort.__version__,
                   "numpy": np.__version__, "seed": args.seed, "cases": manifest}, f, indent=1)
    print(f"wrote {len(manifest)} cases to {args.out_dir}")


if __name__ == "__main__":
    main()
