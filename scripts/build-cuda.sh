#!/usr/bin/env bash
# Build maxbatch with `--features cuda` on a machine WITHOUT a GPU or a system CUDA
# install (Debian 12 / Ubuntu 22.04+, x86-64), for running on an NVIDIA GPU whose driver
# supports CUDA 13.0. Derived from the team's candle CUDA recipe (shared/cuda-build).
#
# The CUDA 13.0.x compiler and link-time libraries come from NVIDIA's PyPI wheels
# (sha256-pinned, unpacked under $CUDA13_DIR, never installed system-wide); libcuda.so
# (the driver API) is replaced at link time by a generated stub with SONAME libcuda.so.1.
# On the GPU machine the real driver and the CUDA 13 runtime libraries are used (README).
#
# Usage:
#   scripts/build-cuda.sh [CARGO ARGS]  # cargo build --release --features cuda [ARGS]
#   scripts/build-cuda.sh --setup       # only prepare the toolchain
#   scripts/build-cuda.sh --env         # prepare, then print `export ...` lines:
#                                       #   eval "$(scripts/build-cuda.sh --env)"; cargo clippy --features cuda
#
# Env knobs:
#   CUDA13_DIR        toolchain/cache dir            (default /tmp/cuda13)
#   CUDA_COMPUTE_CAP  target GPU arch for nvcc       (default 90: H100/H200, sm_90a)
#   CUDA_RPATH        RUNPATH baked into the binary  (default see below)
#   CARGO_TARGET_DIR  (default target-cuda, so the rpath RUSTFLAGS do not invalidate the
#                      CPU build in target/)
# Idempotent: wheels are downloaded once (sha256-pinned) and unpacked once.
set -euo pipefail

CUDA13_DIR=${CUDA13_DIR:-/tmp/cuda13}
CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# $ORIGIN first (libs shipped next to the binary), then a conventional CUDA install.
CUDA_RPATH=${CUDA_RPATH:-'$ORIGIN:$ORIGIN/cuda-libs:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib'}

WHEELS="$CUDA13_DIR/wheels"
ROOT="$CUDA13_DIR/root"
CUDA_HOME_DIR="$ROOT/nvidia/cu13"
log() { echo "[build-cuda] $*" >&2; }

# CUDA 13.0 update-2 components (nvcc 13.0.88 => PTX ISA 9.0, loadable by a 13.0 driver).
# cublas 13.0.0.19 / curand 10.4.0.35 are the 13.0 GA libs: only used at link time,
# the binary binds by SONAME (libcublas.so.13, libcurand.so.10) to whatever the target has.
write_requirements() {
  local req="$WHEELS/requirements.txt"
  cat > "$req.new" <<'EOF'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
nvidia-cublas==13.0.0.19 --hash=sha256:f6723af2e8e2600a11dc384037d90d9bf93070e346c24ef2e8f9001658c99896
EOF
  # rewrite only when the pins change (its mtime triggers a re-unpack)
  if cmp -s "$req.new" "$req"; then rm -f "$req.new"; else mv -f "$req.new" "$req"; fi
}

# Driver-API symbols candle 0.11.1 actually imports (fallback if cudarc sources are not found).
FALLBACK_CU_SYMS="cuInit cuDeviceGet cuDeviceGetAttribute cuDevicePrimaryCtxRetain cuDevicePrimaryCtxRelease_v2
cuCtxGetCurrent cuCtxSetCurrent cuCtxDestroy_v2 cuGetErrorString cuModuleLoad cuModuleLoadData cuModuleUnload
cuModuleGetFunction cuLaunchKernel cuStreamDestroy_v2 cuStreamSynchronize cuStreamWaitEvent cuStreamIsCapturing
cuEventCreate cuEventDestroy_v2 cuEventRecord cuMemAlloc_v2 cuMemFree_v2 cuMemAllocAsync cuMemFreeAsync
cuMemsetD8Async cuMemcpyPeerAsync cuMemcpyDtoDAsync_v2 cuMemcpyDtoHAsync_v2 cuMemcpyHtoDAsync_v2"

PROJECT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

setup_toolchain() {
  mkdir -p "$WHEELS" "$ROOT"
  write_requirements
  local n; n=$(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l)
  if [ "$n" -lt 8 ]; then
    log "downloading CUDA 13.0 wheels into $WHEELS (~680 MB, cublas is 420 MB)"
    python3 -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes -r "$WHEELS/requirements.txt" -d "$WHEELS" >&2
  fi
  if [ ! -f "$ROOT/.unpacked" ] || [ "$WHEELS/requirements.txt" -nt "$ROOT/.unpacked" ]; then
    log "unpacking wheels into $ROOT"
    rm -rf "$ROOT"; mkdir -p "$ROOT"
    for w in "$WHEELS"/*.whl; do
      python3 -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$ROOT"
    done
    rm -rf "$ROOT"/*.dist-info
    chmod +x "$CUDA_HOME_DIR"/bin/* "$CUDA_HOME_DIR"/nvvm/bin/* 2>/dev/null || true
    # unversioned names for `-lcublas` etc. (wheels only ship the SONAME files)
    ( cd "$CUDA_HOME_DIR/lib"
      for l in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
        ln -sfn "$l" "${l%.*}"; done )
    touch "$ROOT/.unpacked"
  fi
  # Stub libcuda.so (SONAME libcuda.so.1) so that `-lcuda` links; the real one
  # (delete the stub to regenerate it, e.g. after `cargo fetch` of a newer cudarc)
  # comes from the NVIDIA driver on the GPU machine. Placed in lib/stubs, which
  # cudarc's build.rs adds to the link search path when CUDA_HOME is set.
  local stub="$CUDA_HOME_DIR/lib/stubs/libcuda.so"
  # The stub exports every driver function cudarc can load, read from cudarc's sources:
  # fetch them first (a build without --features cuda never downloads cudarc), and
  # regenerate the stub whenever that list changes (a stub made before the fetch lacked the
  # memory-pool functions, and the CUDA binary failed to link).
  ( cd "$PROJECT_DIR" && cargo fetch >&2 )
  local syms="$CUDA13_DIR/cuda_syms.txt"
  { echo "$FALLBACK_CU_SYMS" | tr ' ' '\n'
    for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs; do
      if [ -f "$f" ]; then grep -oE 'load::<_F>\("cu[A-Za-z0-9_]+"\)' "$f" | sed -E 's/.*\("([^"]+)"\)/\1/' || true; fi
    done; } | grep -E '^cu' | sort -u > "$syms.new"
  if [ ! -f "$stub" ] || ! cmp -s "$syms.new" "$syms"; then
    log "generating stub $stub"
    mkdir -p "$(dirname "$stub")"
    mv "$syms.new" "$syms"
    awk '{print "void " $1 "(void) {}"}' "$syms" > "$CUDA13_DIR/stub_libcuda.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$CUDA13_DIR/stub_libcuda.c"
    log "stub exports $(wc -l < "$syms") symbols"
  else
    rm -f "$syms.new"
  fi
  "$CUDA_HOME_DIR/bin/nvcc" --version | grep -q 'release 13.0' || { log "nvcc is not 13.0"; exit 1; }
}

print_env() {
  cat <<EOF
export CUDA_HOME='$CUDA_HOME_DIR'
export CUDA_PATH='$CUDA_HOME_DIR'
export NVCC='$CUDA_HOME_DIR/bin/nvcc'
export PATH='$CUDA_HOME_DIR/bin':"\$PATH"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP='$CUDA_COMPUTE_CAP'
export CUDAFORGE_THREADS='$(nproc)'
export RUSTFLAGS='-C link-arg=-Wl,-rpath,$CUDA_RPATH'
EOF
}

case "${1:-}" in
  --setup) setup_toolchain; exit 0 ;;
  --env)   setup_toolchain; print_env; exit 0 ;;
esac

setup_toolchain
eval "$(print_env)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PROJECT_DIR/target-cuda}
log "cargo build --release --features cuda $* in $PROJECT_DIR (target dir $CARGO_TARGET_DIR)"
start=$(date +%s)
( cd "$PROJECT_DIR" && cargo build --release --features cuda "$@" )
log "build took $(( $(date +%s) - start ))s"
f="$CARGO_TARGET_DIR/release/maxbatch"
if [ -f "$f" ]; then
  log "$f: $(stat -c %s "$f") bytes"
  readelf -d "$f" | grep -E 'NEEDED|RUNPATH' >&2 || true
fi
