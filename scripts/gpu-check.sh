#!/usr/bin/env bash
# GPU acceptance check for a CUDA build of maxbatch, on a machine with an NVIDIA GPU.
#
#   scripts/gpu-check.sh [BINARY]        (default: target-cuda/release/maxbatch)
#
# First the pool self-test: a 1 GiB tensor made through candle raises the pool's bytes in
# use by at least 1 GiB, and dropping it gives them back. Then, for `mlp`,
# `transformer-small`, `transformer-base` and SmolLM2-135M (a --config model, seq 512) on
# cuda:0, it runs the finder and checks that:
#   1. `check --batch-size MAX` fits (exit 0) and `check --batch-size MAX+1` does not (exit 1);
#   2. MAX+1 failed with the driver's own out-of-memory error, not a budget;
#   3. every trial reports leaked_bytes == 0 (clean recovery after out-of-memory);
#   4. the recommended size survives 200 consecutive training steps.
# It prints a table, writes the JSON reports into $OUT (or ./gpu-check-out), and exits
# non-zero on any failure. Needs python3 (for reading the JSON) and the CUDA 13 runtime
# libraries (cudart, cublas, cublasLt, curand): from /usr/local/cuda or PyTorch's
# nvidia-* wheels, which this script adds to LD_LIBRARY_PATH when it finds them.
set -uo pipefail

BIN=${1:-target-cuda/release/maxbatch}
OUT_DIR=${OUT:-gpu-check-out}
mkdir -p "$OUT_DIR"
[ -x "$BIN" ] || { echo "no executable at $BIN: build it with scripts/build-cuda.sh" >&2; exit 2; }

libs=$(python3 - <<'PY' 2>/dev/null
import os
try:
    import nvidia
    print(":".join(p for base in nvidia.__path__ for p in (os.path.join(base, "cu13", "lib"),) if os.path.isdir(p)))
except Exception:
    pass
PY
)
[ -n "$libs" ] && export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
if ldd "$BIN" | grep -q 'not found'; then
  echo "missing CUDA libraries:" >&2; ldd "$BIN" | grep 'not found' >&2; exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT_DIR/gpu.txt"

failures=0
rows=()
record() { # model, check, verdict, detail
  rows+=("$(printf '%-18s %-34s %-5s %s' "$1" "$2" "$3" "$4")")
  [ "$3" = ok ] || failures=$((failures + 1))
}

run_model() { # label, model flags (--model NAME or --config PATH [--seq-len N]), --, search-only flags
  local model=$1; shift
  local flags=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do flags+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  local json="$OUT_DIR/find-$model.json"
  local start=$SECONDS
  "$BIN" "${flags[@]}" --device cuda:0 --no-fallback --no-cache --json "$@" >"$json" 2>"$OUT_DIR/find-$model.log"
  local code=$?
  if [ $code != 0 ]; then
    record "$model" "search" FAIL "exit $code: $(tail -1 "$OUT_DIR/find-$model.log")"; return
  fi
  record "$model" "search" ok "$((SECONDS - start)) s"
  read -r max rec cap leaks n < <(python3 - "$json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["trials"]
leaks = sum(1 for x in t if x.get("leaked_bytes") not in (0, None))
missing = sum(1 for x in t if x.get("leaked_bytes") is None and not x.get("predicted"))
print(r["max_batch_size"], r["recommended_batch_size"] or 0, r["device"]["capacity_bytes"], leaks + missing, len(t))
PY
)
  record "$model" "max $max, recommended $rec ($n trials)" ok "capacity $cap bytes"
  if [ "$leaks" = 0 ]; then record "$model" "leaked_bytes == 0, every trial" ok ""
  else record "$model" "leaked_bytes == 0, every trial" FAIL "$leaks trials leaked or unmeasured"; fi

  local check=("$BIN" check "${flags[@]}" --device cuda:0 --no-fallback --no-cache)
  "${check[@]}" --batch-size "$max" >/dev/null 2>&1
  code=$?
  [ $code = 0 ] && record "$model" "check MAX=$max fits" ok "" || record "$model" "check MAX=$max fits" FAIL "exit $code"
  "${check[@]}" --batch-size "$((max + 1))" --json >"$OUT_DIR/check-next-$model.json" 2>&1
  code=$?
  [ $code = 1 ] && record "$model" "check MAX+1=$((max + 1)) does not" ok "" || record "$model" "check MAX+1=$((max + 1)) does not" FAIL "exit $code"
  if grep -q "device out of memory" "$OUT_DIR/check-next-$model.json"; then
    record "$model" "MAX+1: the driver's out-of-memory" ok ""
  else
    record "$model" "MAX+1: the driver's out-of-memory" FAIL "see check-next-$model.json"
  fi
  if [ "$rec" = 0 ]; then record "$model" "recommended: 200 steps" FAIL "no recommended size"; return; fi
  start=$SECONDS
  "${check[@]}" --batch-size "$rec" --steps-per-trial 200 >/dev/null 2>"$OUT_DIR/steps200-$model.log"
  code=$?
  [ $code = 0 ] && record "$model" "recommended $rec: 200 steps" ok "$((SECONDS - start)) s" \
               || record "$model" "recommended $rec: 200 steps" FAIL "exit $code"
}

"$BIN" pool-self-test --device cuda:0 >"$OUT_DIR/pool-self-test.json" 2>&1
code=$?
[ $code = 0 ] && record pool "1 GiB counted and given back" ok "$(cat "$OUT_DIR/pool-self-test.json")" \
             || record pool "1 GiB counted and given back" FAIL "exit $code: $(cat "$OUT_DIR/pool-self-test.json")"

FIXTURES=$(dirname "$0")/../tests/fixtures
# The mlp's maximum is in the millions on a large card: lift the default cap of 65536.
run_model mlp --model mlp -- --max-batch 16777216
run_model transformer-small --model transformer-small
run_model transformer-base --model transformer-base
run_model smollm2-135m --config "$FIXTURES/smollm2-135m.json" --seq-len 512

printf '\n%-18s %-34s %-5s %s\n' model check ok detail | tee "$OUT_DIR/table.txt"
printf '%s\n' "${rows[@]}" | tee -a "$OUT_DIR/table.txt"
echo "failures: $failures" | tee -a "$OUT_DIR/table.txt"
[ "$failures" = 0 ]
