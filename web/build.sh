#!/usr/bin/env bash
# Builds the JavaScript package: web/pkg/resgraph_web.js and resgraph_web_bg.wasm, for
# `import init, { Engine } from "./pkg/resgraph_web.js"` (see web/index.html). Needs the
# wasm32-unknown-unknown target and wasm-bindgen-cli at the version in Cargo.lock on PATH
# (.ci/web-tests installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p resgraph-web --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir web/pkg \
  target/wasm32-unknown-unknown/release/resgraph_web.wasm
ls -l web/pkg
