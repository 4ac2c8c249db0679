#!/usr/bin/env bash
# The GPU acceptance check: one prepared run of at most about six minutes that measures, on
# cuda:0, what reading the code could not settle (docs/design.md, "The GPU check"):
#   1. the pool self-test: a 1 GiB tensor made through candle is counted by the pool and
#      given back;
#   2. a transformer-small search on the whole device, nvidia-smi's memory.used sampled
#      every 100 ms: the device's own peak against the meter's (pool reservation + overhead),
#      the pool's fragmentation at the maximum, every out-of-memory trial's error, every
#      trial's leaked_bytes;
#   3. `check` at MAX and MAX+1, then again with CUDA_MODULE_LOADING=EAGER: same verdicts;
#   4. where cuBLAS's workspace lives: batch size 1 with and without
#      CUBLAS_WORKSPACE_CONFIG=:0:0;
#   5. the 2^31-element cap: candle's kernels timed on one tensor at and past it (the
#      hidden `element-probe`), `check` refusing a size past it, and on a card with room for
#      it a training step on both sides of it;
#   6. 50 consecutive steps at the recommended size, and the search's maximum against the
#      estimate from shapes for the same capacity;
#   7. a generation search (--mode generate, transformer-small, 128-token prompts and 384
#      new tokens): the most sequences, the estimate against the first trial's peak, the KV
#      cache's bytes per token, the prefill and decode throughput.
#
#   scripts/gpu-check.sh [BINARY]                  (default: gpu-bin/maxbatch, else
#                                                   target-cuda/release/maxbatch)
#   scripts/gpu-check.sh --cpu-stand-in [BINARY]   the same checks on the CPU with a tiny
#                                                   model (default: target/release/maxbatch);
#                                                   what needs a GPU says it was skipped
#   GPU_CHECK_BREAK=NAME scripts/gpu-check.sh ...  make check NAME expect the opposite,
#                                                   to see the script fail
#
# Writes exactly two files under $OUT (default ./gpu-check-out): summary.json (every check,
# its verdict and figures) and logs.tgz (every command's output). Exit 0 when every check
# that ran passed, 1 when one failed. Needs python3, the binary, and on the GPU machine the
# NVIDIA driver (CUDA 13.0 or newer) and the CUDA 13 runtime libraries (from
# /usr/local/cuda, or PyTorch's nvidia-* wheels, which it finds by itself); no Rust, no
# CUDA toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."
stand_in=()
if [ "${1:-}" = --cpu-stand-in ]; then
  stand_in=(--cpu-stand-in)
  shift
  bin=${1:-target/release/maxbatch}
elif [ -n "${1:-}" ]; then
  bin=$1
elif [ -x gpu-bin/maxbatch ]; then
  bin=gpu-bin/maxbatch
else
  bin=target-cuda/release/maxbatch
fi
exec python3 scripts/gpu_check.py "$bin" --fixtures tests/fixtures "${stand_in[@]}"
