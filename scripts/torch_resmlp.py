#!/usr/bin/env python3
"""The residual MLP of `resgraph bench` in PyTorch on CUDA: the datacenter-GPU peer.

For each shape and precision it prints one JSON object per line with the median of CUDA-event
timings of the forward pass alone (`forward_ms`) and of a full run like resgraph's `bench`
(input copied to the GPU, forward, output copied back: `full_ms`), after warm-up.
f32 runs with TF32 disabled, so both engines do true f32 arithmetic.

Usage: python3 scripts/torch_resmlp.py [--shapes 1024x8x256,4096x8x1024,512x8x1] [--iters 50]
"""
import argparse
import json
import statistics

import torch


class ResMLP(torch.nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleList([torch.nn.Linear(width, width), torch.nn.Linear(width, width)])
            for _ in range(depth))

    def forward(self, x):
        for fc1, fc2 in self.blocks:
            x = torch.relu(fc2(torch.relu(fc1(x))) + x)
        return x


def time_ms(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="1024x8x256,4096x8x1024,512x8x1")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    for shape in args.shapes.split(","):
        width, depth, batch = (int(v) for v in shape.split("x"))
        for precision, dtype in (("f32", torch.float32), ("f16", torch.float16)):
            torch.manual_seed(42)
            model = ResMLP(width, depth).to(device=device, dtype=dtype).eval()
            host_input = torch.rand(batch, width).mul_(2).sub_(1).to(dtype).pin_memory()
            device_input = host_input.to(device)
            flops = depth * 2 * 2 * batch * width * width
            with torch.inference_mode():
                forward = time_ms(lambda: model(device_input), args.iters, args.warmup)
                full = time_ms(lambda: model(host_input.to(device, non_blocking=True)).cpu(),
                               args.iters, args.warmup)
            print(json.dumps({
                "engine": "torch", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "precision": precision, "width": width, "depth": depth, "batch": batch,
                "forward_ms": forward[0], "full_ms": full[0], "full_min_ms": full[1],
                "gflops_forward": flops / forward[0] / 1e6, "gflops_full": flops / full[0] / 1e6,
            }), flush=True)


if __name__ == "__main__":
    main()
