#!/usr/bin/env bash
# Runs the `--features cuda` unit tests that need no GPU (the meters: the out-of-memory classification
# of constructed candle errors) on a machine without one. The test binary links the CUDA
# libraries, so it is started against the toolchain's own (scripts/build-cuda.sh) and the
# generated libcuda stub; no test here calls the driver.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(bash scripts/build-cuda.sh --env)"
stub_dir=$(mktemp -d)
trap 'rm -rf "$stub_dir"' EXIT
ln -s "$CUDA_HOME/lib/stubs/libcuda.so" "$stub_dir/libcuda.so.1"
export LD_LIBRARY_PATH="$CUDA_HOME/lib:$stub_dir:${LD_LIBRARY_PATH:-}"
CARGO_TARGET_DIR=target-cuda cargo test --release --features cuda --lib -- memory::
