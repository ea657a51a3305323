#!/usr/bin/env bash
# The GPU check: run on the lent GPU machine (one H100 or H200, Vulkan driver, PyTorch, no Rust,
# no network) with a release binary built here. It prints `info`, then `bench --check --json` for
# the throughput shape (1024x8x256), a large one (4096x8x1024) and the latency shape (512x8x1) in
# f32 and f16, every kernel candidate's time per layer shape (`tune`), the same three networks
# in PyTorch (scripts/torch_resmlp.py), and one table.
# Budget: meant to finish within 6 minutes on an H100/H200 (the tune step has not been timed
# there yet); every step has its own timeout.
#
# Usage: scripts/gpu-check.sh [path/to/resgraph] [output folder]
# On the device tool, from the repository root (see ../.library/device/README.md for .gl):
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; bash scripts/gpu-check.sh target/release/resgraph $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/resgraph}"
out="${2:-${OUT:-/tmp/gpu-check}}"
mkdir -p "$out"
results="$out/results.jsonl"
# wgpu's GL probe wants a runtime folder; a private one keeps it quiet.
XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export XDG_RUNTIME_DIR
: > "$results"

if [ -z "$(ldconfig -p | grep libvulkan)" ]; then
  echo "gpu-check: no Vulkan loader (libvulkan.so.1) on this machine; carry .gl (see the device README)" >&2
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi

echo "=== resgraph info"
timeout 60 "$bin" info 2>&1 | tee "$out/info.txt"

# Prefer the NVIDIA adapter when several are present (lavapipe may be installed too).
adapter_args=()
if grep -qi nvidia "$out/info.txt"; then adapter_args=(--adapter nvidia); fi

for shape in 1024x8x256 4096x8x1024 512x8x1; do
  IFS=x read -r width depth batch <<< "$shape"
  iters=50; [ "$batch" -ge 1024 ] && iters=20
  for precision in f32 f16; do
    echo "=== resgraph bench $shape $precision"
    line=$(timeout 120 "$bin" bench "${adapter_args[@]}" --width "$width" --depth "$depth" \
      --batch "$batch" --iters "$iters" --warmup 5 --precision "$precision" --check --json 2>"$out/bench-$shape-$precision.err")
    status=$?
    if [ $status -eq 0 ] && [ -n "$line" ]; then
      echo "$line" | tee -a "$results"
    else
      reason=$(grep -v XDG_RUNTIME "$out/bench-$shape-$precision.err" | grep -m1 -i "error" | tr -d '"\\')
      [ -n "$reason" ] || reason="no output (timed out?)"
      echo "{\"engine\": \"resgraph\", \"precision\": \"$precision\", \"width\": $width, \"depth\": $depth, \"batch\": $batch, \"error\": \"exit $status: $reason\"}" | tee -a "$results"
    fi
  done
done

# Every kernel candidate's time per layer shape, as the tuner measured them (its cache is fresh
# on a new machine, so each shape is measured): the tensor-core and small-batch GEMMs against
# the others and every point of the tiled GEMM family the search reached, for the one-layer
# benchmark shape and the latency shape.
echo "=== resgraph tune (every candidate's time per shape)"
# The one-layer shape searches the whole tiled GEMM family (72 points; about 0.1-0.2 s each on
# an H200 is the guess, so 20 s should reach them all); the others keep the default budget.
for shape in 4096x1x1024 512x8x1 1024x8x256; do
  IFS=x read -r width depth batch <<< "$shape"
  search_ms=3000; [ "$shape" = 4096x1x1024 ] && search_ms=20000
  for precision in f32 f16; do
    echo "--- tune $shape $precision" | tee -a "$out/tune.txt"
    timeout 90 "$bin" tune "${adapter_args[@]}" --width "$width" --depth "$depth" --batch "$batch" \
      --precision "$precision" --tiled-search-ms "$search_ms" 2>&1 | grep -v XDG_RUNTIME | tee -a "$out/tune.txt"
  done
done

echo "=== PyTorch"
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  timeout 240 python3 scripts/torch_resmlp.py 2>"$out/torch.err" | tee -a "$results"
else
  echo "gpu-check: PyTorch with CUDA is not available here; no torch rows" | tee "$out/torch.err"
fi

echo "=== table"
python3 - "$results" <<'PY' | tee "$out/table.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def key(r): return (r["width"], r["depth"], r["batch"], r["precision"])
ours = {key(r): r for r in rows if r.get("engine", "resgraph") == "resgraph" and "adapter" in r or "error" in r}
torch = {key(r): r for r in rows if r.get("engine") == "torch"}
device = next((r["adapter"]["name"] for r in rows if "adapter" in r), "?")
print(f"| shape (width x depth x batch) | precision | resgraph full run ms (median) | resgraph GFLOP/s | resgraph max rel err | resgraph kernels | torch full ms | torch forward ms | resgraph / torch (full) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for k in sorted(set(ours) | set(torch)):
    o, t = ours.get(k, {}), torch.get(k, {})
    shape = f"{k[0]}x{k[1]}x{k[2]}"
    if "error" in o:
        mine = ("error: " + o["error"], "", "", "")
    elif o:
        # Which kernels the tuner chose: gemm_cooperative* are the tensor-core GEMMs, gemm_tiled/...
        # a point of the tiled family, residual_block
        # the whole-block kernel.
        kernels = " ".join(o.get("kernels", []))
        mine = (f"{o['median_ms']:.3f}", f"{o['gflops']:.1f}", f"{o.get('max_rel_err', float('nan')):.1e}", kernels)
    else:
        mine = ("-", "", "", "")
    tf = f"{t['full_ms']:.3f}" if t else "-"
    tw = f"{t['forward_ms']:.3f}" if t else "-"
    ratio = f"{o['median_ms'] / t['full_ms']:.2f}" if o and t and "median_ms" in o else "-"
    print(f"| {shape} | {k[3]} | {mine[0]} | {mine[1]} | {mine[2]} | {mine[3]} | {tf} | {tw} | {ratio} |")
print(f"\nresgraph adapter: {device}")
PY
