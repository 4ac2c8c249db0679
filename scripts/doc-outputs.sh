#!/usr/bin/env bash
# Checks that every output block in README.md and docs/*.md (a ```text block whose first line
# is `$ maxbatch ARGS`) is what this build prints: the same words on every line, the figures
# free to differ. With --write, rewrites the blocks from this build instead.
# Runs each documented command once, on the CPU (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--write" ]; then
  export MAXBATCH_WRITE_DOCS=1
elif [ -n "${1:-}" ]; then
  echo "usage: scripts/doc-outputs.sh [--write]" >&2
  exit 2
fi
cargo test --release --test doc_outputs -- --ignored --nocapture
