#!/usr/bin/env bash
# One command for a CUDA machine: the encoder tests, the encoder table, precision agreement on the
# trained pair, question latency (one at a time and micro-batched) and the ingest table.
# Each step is time-boxed, and on a GPU all of them together get at most $BUDGET_S seconds
# (default 470, under 8 minutes): a step gets what is left when its own box is larger, and a step
# with no time left is skipped and counted as failed. The tests run first: they matter most.
#
#   bench/gpu_check.sh [OUT_DIR] [--cpu]
#
# Outputs: OUT_DIR (default: $OUT, else ./gpu_check-DATE) gets one NN-step.txt per step, the
# tests' JUnit XML (tests.xml) and summary.txt (exit status and seconds of each step). Without a
# CUDA GPU, or with --cpu (which hides the GPUs from every step), the same steps run on the CPU
# with small sizes and no overall budget unless BUDGET_S is set, to check the script itself
# (7 to 10 minutes on a shared 2-core Xeon). PY picks the interpreter (default .venv/bin/python).
# The ingest step runs bench/bench_pipeline.py where it exists (with $PIPELINE_ARGS), else
# bench/bench_ingest.py. The exit status is 1 when any step failed, ran out of time or was skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

device=auto
out=""
for arg in "$@"; do
  case "$arg" in
    --cpu) device=cpu ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg (expected [OUT_DIR] [--cpu])" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
out=${out:-${OUT:-gpu_check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$out" || exit 2
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1
if [ "$device" = cpu ]; then
  export CUDA_VISIBLE_DEVICES=""
elif "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  device=cuda
else
  device=cpu
  echo "no CUDA device visible to torch: running the CPU variant (small sizes)"
fi

summary="$out/summary.txt"
: > "$summary"
failed=0
number=0
grace=10  # seconds between the INT at a step's limit and the KILL
if [ "$device" = cuda ] || [ -n "${BUDGET_S:-}" ]; then deadline=$((SECONDS + ${BUDGET_S:-470})); else deadline=""; fi
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  number=$((number + 1))
  local file
  file=$(printf '%s/%02d-%s.txt' "$out" "$number" "$name")
  if [ -n "$deadline" ]; then
    local left=$((deadline - SECONDS - grace))
    if [ "$left" -lt 10 ]; then
      echo "== $name: skipped, the overall budget is spent" | tee "$file"
      failed=1
      printf '%-10s %-15s exit %-3s %4ss  %s\n' "$name" "skipped" "-" 0 "$file" | tee -a "$summary"
      return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  local started=$SECONDS
  echo "== $name ($device, at most ${limit}s): $*" | tee "$file"
  timeout --signal=INT --kill-after=$grace "$limit" "$@" 2>&1 | tee -a "$file"
  local rc=${PIPESTATUS[0]}
  local note=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note="ran out of time"; elif [ "$rc" != 0 ]; then note=failed; fi
  [ "$note" = ok ] || failed=1
  printf '%-10s %-15s exit %-3s %4ss  %s\n' "$name" "$note" "$rc" "$((SECONDS - started))" "$file" | tee -a "$summary"
}

tests=(tests/test_encoders.py tests/test_graphs.py tests/test_precision.py tests/test_offline_models.py
       tests/test_ingest_encoder.py tests/test_service_batching.py)

step environment 60 bash -c "
  date -u; git rev-parse --short HEAD 2>/dev/null; nvidia-smi 2>/dev/null || echo 'nvidia-smi: none';
  lscpu 2>/dev/null | grep -E 'Model name|^CPU\(s\)' ;
  \"$PY\" -c 'import torch, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda,
    \"available\", torch.cuda.is_available(), \"transformers\", transformers.__version__)'"
if [ "$device" = cuda ]; then
  step tests 200 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$out/tests.xml" "${tests[@]}"
  step encoders 150 "$PY" bench/bench_encoders.py --device cuda --passages 4096 --questions 200 --repeats 3
  step precision 50 "$PY" bench/bench_precision.py --device cuda --passages 600
  step questions 60 "$PY" bench/bench_questions.py --device cuda --questions 500 --callers 32 --per-caller 16
  ingest_limit=120
  ingest_args=(-n 20000 --methods dpr_pg --reingest-n 2000 --base-n 4000 --base-precision auto)
else
  step tests 1800 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$out/tests.xml" "${tests[@]}"
  step encoders 900 "$PY" bench/bench_encoders.py --device cpu --passages 6 --questions 3 --repeats 1 \
    --precisions fp32,bf16
  step precision 600 "$PY" bench/bench_precision.py --device cpu --passages 60
  step questions 600 "$PY" bench/bench_questions.py --device cpu --questions 6 --callers 4 --per-caller 2
  ingest_limit=900
  ingest_args=(-n 2000 --methods dpr_pg --reingest-n 200 --base-n 16 --base-precision auto --no-index-build)
fi
if [ -f bench/bench_pipeline.py ]; then
  # shellcheck disable=SC2086  # PIPELINE_ARGS is a list of words
  step ingest "$ingest_limit" "$PY" bench/bench_pipeline.py ${PIPELINE_ARGS:-}
else
  step ingest "$ingest_limit" "$PY" bench/bench_ingest.py "${ingest_args[@]}"
fi

echo
echo "summary ($device), outputs in $out:"
cat "$summary"
exit "$failed"
