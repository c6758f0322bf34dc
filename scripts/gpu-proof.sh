#!/usr/bin/env bash
# The GPU proof in one call (docs/benchmarks.md, "The GPU proof"): the `gpu` tests, `bltkit bench`
# at bench-S beside Hugging Face's BLT (train, patch, generate batch 1 and 32, with profiles of the
# train step and the decode step), the compiled decode step, and a 400m training step, every
# result written as a file under OUT, then summary.md (each figure beside its target).
#
#   scripts/gpu-proof.sh [OUT]           # on a CUDA machine: at most ~8 minutes on an H100/H200
#   scripts/gpu-proof.sh --smoke [OUT]   # on a CPU (CI): the same stages at tiny sizes, seconds
#
# Each stage has its own time limit, so one slow stage cannot eat the others' time; a stage that
# fails or times out is recorded in OUT/stages.tsv and the script goes on. Exit status: 0 when
# every stage ran, 1 otherwise. Needs bltkit installed (the README's first command).
set -uo pipefail

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-gpu-proof-out}
mkdir -p "$OUT/profiles"
PY=${PYTHON:-python3}
: > "$OUT/stages.tsv"
FAILED=0

stage() {  # stage NAME LIMIT_S OUTFILE CMD...: run CMD with a time limit, stdout to OUTFILE, stderr to NAME.log
  local name=$1 limit=$2 outfile=$3; shift 3
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)" >&2
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$outfile" 2> "$OUT/$name.log"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/stages.tsv"
  if [ "$rc" -ne 0 ]; then FAILED=1; echo "   $name: exit $rc (see $OUT/$name.log)" >&2; fi
}

stage env 60 env.txt "$PY" -c "
import platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu (no CUDA)')
try:
    import transformers; print('transformers', transformers.__version__)
except ImportError:
    print('transformers: not installed (no HF peer figures)')
"

if [ "$SMOKE" = 1 ]; then
  # No GPU: the gpu tests can only be collected (they must exist and import); every bench stage
  # runs at the tiny size on the CPU.
  mapfile -t GPU_FILES < <(grep -l "mark.gpu" tests/test_*.py)
  stage gpu-tests 120 gpu-tests.txt "$PY" -m pytest -q -p no:cacheprovider -m gpu --collect-only "${GPU_FILES[@]}"
  stage bench 480 bench.jsonl "$PY" -m bltkit.cli bench --config tiny --rows 2 --bytes 128 --steps 1 --warmup 1 \
      --entropy-config tiny --prompt-bytes 16 --new-bytes 4 --gen-batch 1 --hf-generate-bytes 2 --json \
      --profile "$OUT/profiles"
  stage bench-compiled 300 bench-compiled.jsonl "$PY" -m bltkit.cli bench --config tiny --only generate --no-hf \
      --entropy-config tiny --prompt-bytes 16 --new-bytes 2 --gen-batch 1 --json --compile --compile-backend eager
  stage train-400m 300 train-400m.jsonl "$PY" -m bltkit.cli bench --config tiny --only train --rows 2 --bytes 128 \
      --steps 1 --warmup 1 --no-hf --json --profile "$OUT/profiles-400m"
else
  stage gpu-tests 150 gpu-tests.txt "$PY" -m pytest -q -p no:cacheprovider -m gpu tests --junitxml="$OUT/gpu-tests.xml"
  # HF's generate is uncached (a full forward a byte): time-box it to 64 new bytes a row.
  stage bench 200 bench.jsonl "$PY" -m bltkit.cli bench --json --hf-generate-bytes 64 --profile "$OUT/profiles"
  stage bench-compiled 180 bench-compiled.jsonl "$PY" -m bltkit.cli bench --only generate --compile --no-hf --json
  stage train-400m 100 train-400m.jsonl "$PY" -m bltkit.cli bench --config 400m --only train --rows 4 --json \
      --profile "$OUT/profiles-400m"
fi

SUMMARY_ARGS=("$OUT"); [ "$SMOKE" = 1 ] && SUMMARY_ARGS=(--smoke "$OUT")
stage summary 60 summary.md "$PY" -m bltkit.bench.proof "${SUMMARY_ARGS[@]}"
cat "$OUT/stages.tsv" >&2
exit $FAILED
