#!/usr/bin/env python3
"""Writes random residual-MLP ONNX models and onnxruntime's outputs for them.

Each case is written as CASE.onnx, CASE.input.npy and CASE.expected.npy into the output folder,
with manifest.json listing the cases. tests/onnx.rs runs every case through resgraph and compares
with onnxruntime's answer (relative error <= 1e-5).

The models are built with onnx.helper the way exporters write them:
  - PyTorch's exporter: Gemm(x, W[out, in], b) with transB = 1;
  - MatMul(x, W[in, out]) followed by Add(., b);
  - Gemm with alpha, beta and transB = 0;
  - float16 initializers cast to float32 (Cast), Flatten of a [batch, a, b] input, Identity;
  - residual blocks (Add of the block input) and plain blocks, stem and head layers of other widths;
  - weights in a side file (CASE.onnx.data, every initializer's data_location EXTERNAL), as
    PyTorch's default exporter (dynamo, since torch 2.9) writes them with onnx's external-data
    helper.

Usage: python3 scripts/onnx_reference.py OUT_DIR [--seed N] [--small]
Pinned versions (see .ci/run): onnx==1.20.1 onnxruntime==1.23.2 numpy==2.3.5.
"""
import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, rng, fp16=False):
        self.rng = rng
        self.fp16 = fp16
        self.nodes = []
        self.initializers = []
        self.count = 0

    def fresh(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def constant(self, name, array):
        array = array.astype(np.float16 if self.fp16 else np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        if not self.fp16:
            return name
        cast = self.fresh(name + "_f32")
        self.nodes.append(helper.make_node("Cast", [name], [cast], to=TensorProto.FLOAT, name=cast))
        return cast

    def linear(self, x, n_in, n_out, style, name):
        bound = 1.0 / np.sqrt(n_in)
        w = self.rng.uniform(-bound, bound, (n_out, n_in))
        b = self.rng.uniform(-bound, bound, (n_out,))
        out = self.fresh(name)
        if style == "gemm_transB":
            wn = self.constant(name + ".weight", w)
            bn = self.constant(name + ".bias", b)
            self.nodes.append(helper.make_node("Gemm", [x, wn, bn], [out], transB=1, name=name))
        elif style == "gemm_alpha_beta":
            # y = alpha * x @ B + beta * C with B = W^T / alpha and C = b / beta: the same layer.
            alpha, beta = 0.5, 2.0
            wn = self.constant(name + ".weight", w.T / alpha)
            bn = self.constant(name + ".bias", b / beta)
            self.nodes.append(helper.make_node(
                "Gemm", [x, wn, bn], [out], alpha=alpha, beta=beta, transB=0, name=name))
        elif style == "matmul_add":
            wn = self.constant(name + ".weight", w.T)
            bn = self.constant(name + ".bias", b)
            mm = self.fresh(name + "_mm")
            self.nodes.append(helper.make_node("MatMul", [x, wn], [mm], name=name + "_matmul"))
            self.nodes.append(helper.make_node("Add", [mm, bn], [out], name=name + "_bias"))
        else:
            raise ValueError(style)
        return out

    def relu(self, x):
        out = self.fresh("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def add(self, a, b):
        out = self.fresh("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out


def build(case, rng):
    b = Builder(rng, fp16=case.get("fp16", False))
    in_shape = case.get("input_shape", [case["input_width"]])
    x = "input"
    if len(in_shape) > 1:
        flat = b.fresh("flat")
        b.nodes.append(helper.make_node("Flatten", [x], [flat], axis=1, name="flatten"))
        x = flat
    ident = b.fresh("ident")
    b.nodes.append(helper.make_node("Identity", [x], [ident], name="identity"))
    x = ident
    width, style = case["width"], case["style"]
    in_width = int(np.prod(in_shape))
    if in_width != width:
        x = b.linear(x, in_width, width, style, "stem")
    for i in range(case["depth"]):
        h = b.relu(b.linear(x, width, case["hidden"], style, f"blocks.{i}.fc1"))
        y = b.linear(h, case["hidden"], width, style, f"blocks.{i}.fc2")
        x = b.relu(b.add(y, x) if case["residual"] else y)
    if case["output_width"] != width:
        x = b.linear(x, width, case["output_width"], style, "head")
    out = b.fresh("output")
    b.nodes.append(helper.make_node("Identity", [x], [out], name="output_identity"))
    graph = helper.make_graph(
        b.nodes, case["name"],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch"] + in_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", case["output_width"]])],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, in_shape


def cases(small):
    def case(name, **kw):
        base = dict(name=name, style="gemm_transB", residual=True, depth=2)
        base.update(kw)
        base.setdefault("hidden", base["width"])
        base.setdefault("output_width", base["width"])
        base.setdefault("input_width", base["width"])
        return base
    all_cases = [
        case("pytorch_gemm_w17_stem_head", input_width=13, width=17, output_width=5, batches=[1, 7]),
        case("matmul_add_w33_hidden65", width=33, hidden=65, style="matmul_add", batches=[1, 3]),
        case("plain_no_shortcut_w24", input_width=9, width=24, output_width=11, residual=False, batches=[5]),
        case("fp16_gemm_w40", input_width=16, width=40, output_width=7, fp16=True, batches=[1, 9]),
        case("fp16_matmul_add_w19", width=19, style="matmul_add", fp16=True, batches=[2]),
        case("gemm_alpha_beta_w21", width=21, style="gemm_alpha_beta", depth=1, batches=[4]),
        case("flatten_3x7_w21", input_shape=[3, 7], width=21, output_width=6, depth=1, batches=[1, 3]),
        case("external_data_w23_stem_head", input_width=11, width=23, output_width=4,
             external_data=True, batches=[1, 6]),
    ]
    if not small:
        all_cases += [
            case("pytorch_gemm_w257", width=257, depth=3, batches=[1, 17]),
            case("matmul_add_w513", width=513, depth=2, style="matmul_add", batches=[1, 5]),
            case("fp16_gemm_w513_stem_head", input_width=100, width=513, output_width=10, fp16=True,
                 depth=1, batches=[3]),
            case("plain_gemm_w257", width=257, residual=False, depth=2, batches=[1]),
            case("external_data_w300", width=300, depth=2, external_data=True, batches=[1, 9]),
        ]
    return all_cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="only the small cases")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    manifest = []
    for case in cases(args.small):
        model, in_shape = build(case, rng)
        model_path = os.path.join(args.out_dir, case["name"] + ".onnx")
        if case.get("external_data", False):
            # What torch.onnx.export(dynamo=True) does through onnx: every initializer in one
            # side file next to the model, at aligned offsets.
            onnx.save_model(model, model_path, save_as_external_data=True,
                            all_tensors_to_one_file=True,
                            location=case["name"] + ".onnx.data", size_threshold=0)
        else:
            onnx.save(model, model_path)
        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        for batch in case["batches"]:
            x = rng.uniform(-1.0, 1.0, [batch] + in_shape).astype(np.float32)
            (y,) = session.run(None, {"input": x})
            stem = f"{case['name']}.b{batch}"
            # resgraph takes [batch, features]: flatten the input's feature dimensions.
            np.save(os.path.join(args.out_dir, stem + ".input.npy"), x.reshape(batch, -1))
            np.save(os.path.join(args.out_dir, stem + ".expected.npy"), y.astype(np.float32))
            manifest.append({"model": case["name"] + ".onnx", "input": stem + ".input.npy",
                             "expected": stem + ".expected.npy", "batch": batch,
                             "fp16": case.get("fp16", False)})
    with open(os.path.join(args.out_dir, "manifest.json"), "w") as f:
        json.dump({"onnx": onnx.__version__, "onnxruntime": ort.__version__,
                   "numpy": np.__version__, "seed": args.seed, "cases": manifest}, f, indent=1)
    print(f"wrote {len(manifest)} cases to {args.out_dir}")


if __name__ == "__main__":
    main()
