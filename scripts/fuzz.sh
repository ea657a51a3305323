#!/usr/bin/env bash
# Runs every fuzz target for a fixed time: the three cargo-fuzz targets of the file loaders
# (libFuzzer, coverage-guided, from the seed corpora in fuzz/corpus/) and the structure-aware
# ONNX graph fuzzer (tests/onnx_graph_fuzz.rs: random valid graphs, checked against their own
# f64 evaluation on the test adapter).
#
#   scripts/fuzz.sh            # 60 s per cargo-fuzz target, 2000 random graphs
#   FUZZ_SECONDS=600 FUZZ_GRAPHS=20000 scripts/fuzz.sh
#
# Installs cargo-fuzz when it is missing. cargo-fuzz needs nightly compiler features; on a
# stable toolchain RUSTC_BOOTSTRAP=1 enables them. A crash leaves its input in
# fuzz/artifacts/<target>/: fix the bug, then keep the input in tests/data/fuzz/<target>/,
# where tests/fuzz_regressions.rs replays it in the ordinary suite.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
graphs=${FUZZ_GRAPHS:-2000}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

status=0
for target in onnx safetensors npy; do
    echo "== cargo fuzz run $target for ${seconds}s"
    # A private copy of the seed corpus, so that a run never adds files to the repository.
    corpus=$(mktemp -d)
    cp -r "fuzz/corpus/$target/." "$corpus/"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10; then
        echo "!! $target found a crash; its input is in fuzz/artifacts/$target/"
        status=1
    fi
    rm -rf "$corpus"
done

echo "== structure-aware ONNX graphs: $graphs cases"
if ! PROPTEST_CASES=$graphs cargo test --release --test onnx_graph_fuzz; then
    echo "!! a random ONNX graph disagreed with its f64 evaluation (proptest printed the case)"
    status=1
fi
exit $status
