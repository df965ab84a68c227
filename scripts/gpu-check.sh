#!/usr/bin/env bash
# gpu-check.sh: the GPU acceptance (issue 29) in one go, under 8 minutes on one GPU, as one Markdown table.
#
#   bash scripts/gpu-check.sh [--cpu] [--dry-run] [--only STEP,STEP] [OUT_DIR]
#
# Steps, by value: sweep (the README's default sweep, `gqa-sweep -m trainer=gpu`), gpt2 (experiment=gpt2_124m
# at G = 1 and 12: tok/s, MFU of the datasheet, compile time), oom (a run forced out of GPU memory must leave a
# failed row while its sweep finishes the other run), decode (bandwidth per G, llama-7b-layer at batch 16 x 8k),
# serve (7B), peak (measured bf16 matmul peak beside the datasheet), tests (tests/test_cuda.py).
# Each step runs under `timeout`; the whole under GPU_CHECK_BUDGET_S (default 470 s): a step that would
# overrun it gets the time left, or none. OUT_DIR (default $OUT, else results/gpu-check) gets gpu-check.md
# (the table), steps.tsv, logs/<step>.log and results/ (stores and bench CSVs).
#   --cpu      every step tiny on the CPU (the script's own test; the oom step needs a GPU and is skipped)
#   --dry-run  print each step's command, run nothing
#   --only     run these steps alone (names as above)
# gpt2 data: GPU_CHECK_TOKENS=DIR (a gqa-prepare output carried to the machine: data=tokens), else tiny
# Shakespeare as BPE 32,768 (the experiment's own data setting), tokenized at the sweep's start.
# Without hydra-core installed, wheels in .whl/ are installed into $SITE first (the device machine has none).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu DRY=0 ONLY="" OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --dry-run) DRY=1 ;;
    --only) ONLY=${2:?--only needs STEP,STEP}; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUTDIR=$1 ;;
  esac
  shift
done
OUTDIR=${OUTDIR:-${OUT:-results/gpu-check}}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
PY=${PYTHON:-python3}

if [ "$DRY" = 0 ]; then
  if ! "$PY" -c 'import hydra, omegaconf' 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
      echo "gpu-check: hydra-core is not installed and .whl/ has no wheels to install it from" >&2; exit 2
    fi
    SITE=${SITE:-/tmp/gpu-check-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  mkdir -p "$OUTDIR/logs" "$OUTDIR/results"
  : > "$OUTDIR/steps.tsv"
fi
R=$OUTDIR/results
SWEEP=("$PY" -m gqa_sweep.cli)
BENCH=("$PY" -m gqa_sweep.bench)
T0=$SECONDS

# step NAME TIMEOUT_S KIND SOURCE WHAT -- COMMAND...: run it (or print it), append its line to steps.tsv.
step() {
  local name=$1 limit=$2 kind=$3 source=$4 what=$5
  shift 6
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  if [ "$DRY" = 1 ]; then printf '%s (timeout %ss): %s\n' "$name" "$limit" "$*"; return; fi
  local left=$((BUDGET - (SECONDS - T0))) status t=$SECONDS
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    status="not run: the ${BUDGET} s budget was spent"
  else
    echo "== $name: $what (timeout ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/logs/$name.log" 2>&1
    local rc=$?
    case $rc in
      0) status=ok ;;
      124|137) status="timeout after ${limit} s" ;;
      *) status="failed (exit $rc)" ;;
    esac
    tail -n 3 "$OUTDIR/logs/$name.log"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t))" "$kind" "$source" "$what" >> "$OUTDIR/steps.tsv"
}

# skip NAME WHY: a step that cannot run here, said in the table.
skip() {
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$1,"* ]]; then return; fi
  if [ "$DRY" = 1 ]; then printf '%s: not run (%s)\n' "$1" "$2"; return; fi
  printf '%s\t%s\t0\tnone\t-\t%s\n' "$1" "not run: $2" "$3" >> "$OUTDIR/steps.tsv"
}

# has_preset KIND PRESET: does this tree's gqa-bench KIND know --model PRESET (the decode engineer's 7B shapes)?
has_preset() { [ "$DRY" = 1 ] || "${BENCH[@]}" "$1" --help 2>/dev/null | grep -q -- "$2"; }

if [ "$MODE" = gpu ]; then
  DEV=(--device cuda --dtype bf16)
  GPT2_DATA=()
  [ -n "${GPU_CHECK_TOKENS:-}" ] && GPT2_DATA=(data=tokens "data.path=$GPU_CHECK_TOKENS")
  step sweep 170 runs "$R/sweep" "README sweep on the GPU: gqa-sweep -m trainer=gpu (every G, 300 steps)" -- \
    "${SWEEP[@]}" -m trainer=gpu logger=none "results_dir=$R/sweep"
  step gpt2 170 runs "$R/gpt2" "experiment=gpt2_124m, G = 1, 12, 300 steps (bf16, compiled)" -- \
    "${SWEEP[@]}" -m experiment=gpt2_124m "${GPT2_DATA[@]}" model.n_kv_heads=1,12 trainer.max_steps=300 \
    trainer.val_check_interval=300 logger=none "results_dir=$R/gpt2"
  step oom 90 runs "$R/oom" "out of memory as a row: GPT-2-small shape, batch 512 x 1,024 then 4 (eager)" -- \
    "${SWEEP[@]}" -m trainer=gpu trainer.compile=false model=gpt2-124m model.n_kv_heads=4 data.block_size=1024 \
    data.batch_size=512,4 trainer.max_steps=20 trainer.val_check_interval=20 logger=none "results_dir=$R/oom"
  DECODE=("${BENCH[@]}" decode --model llama-7b-layer --batch 16 --context 8192 "${DEV[@]}" --out "$R/bench")
  SERVE=("${BENCH[@]}" serve --model llama-7b "${DEV[@]}" --out "$R/bench")
  PEAK=("${BENCH[@]}" peak --device cuda --dtypes bf16 --out "$R/bench")
else
  TINY=(model.d_model=32 model.n_layers=1 data.batch_size=2 data.block_size=32 data.val_batches=1
        trainer.max_steps=6 trainer.val_check_interval=6 trainer.num_threads=1 trainer.precision=32-true
        metrics.decode_batch=1 metrics.decode_prompt_tokens=4 metrics.decode_new_tokens=4 metrics.throughput_warmup=2
        logger=none)
  step sweep 300 runs "$R/sweep" "README sweep, tiny, on the CPU" -- \
    "${SWEEP[@]}" -m "${TINY[@]}" model.n_kv_heads=1,8 "results_dir=$R/sweep"
  step gpt2 300 runs "$R/gpt2" "experiment=gpt2_124m, tiny, on the CPU" -- \
    "${SWEEP[@]}" -m experiment=gpt2_124m trainer=cpu trainer.compile=false "${TINY[@]}" model.n_heads=4 \
    model.n_kv_heads=1,4 data.vocab_size=300 "results_dir=$R/gpt2"
  skip oom "a CPU cannot run out of GPU memory" "out of memory as a row"
  DECODE=("${BENCH[@]}" decode --quick --device cpu --out "$R/bench")
  SERVE=("${BENCH[@]}" serve --quick --device cpu --out "$R/bench")
  PEAK=("${BENCH[@]}" peak --device cpu --dtypes fp32 --out "$R/bench")
fi

if [ "$MODE" = cpu ] || has_preset decode llama-7b-layer; then
  step decode 60 csv "$R/bench/decode.csv" "decode bandwidth per G (llama-7b-layer, batch 16 x 8,192)" -- "${DECODE[@]}"
else
  skip decode "this tree's gqa-bench decode has no --model llama-7b-layer yet" "decode bandwidth per G"
fi
if [ "$MODE" = cpu ] || has_preset serve llama-7b; then
  step serve 60 csv "$R/bench/serve.csv" "serve at 7B (batch doubling until weights + cache fill the GPU)" -- "${SERVE[@]}"
else
  skip serve "this tree's gqa-bench serve has no --model llama-7b yet" "serve at 7B"
fi
step peak 30 csv "$R/bench/peak.csv" "bf16 matmul peak measured beside the datasheet" -- "${PEAK[@]}"
if [ "$DRY" = 0 ] && ! "$PY" -c 'import pytest' 2>/dev/null; then
  skip tests "pytest is not installed here (carry its wheel in .whl/)" "tests/test_cuda.py"
else
  step tests 120 log "$OUTDIR/logs/tests.log" "CUDA tests: graph decode = eager, benches on the device, compiled = eager" -- \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_static_decode.py tests/test_bench_device.py \
    -k "(graph or cuda) and not goes_on and not gpu_honest"
fi

[ "$DRY" = 1 ] && exit 0
{
  WHERE=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU")
print("torch", torch.__version__)' | paste -sd, | sed 's/,/, /')
  echo "# gpu-check ($MODE): $WHERE, $(date -u +%Y-%m-%d), $((SECONDS - T0)) s"
  echo
  "$PY" -m gqa_sweep.report.gpu_check "$OUTDIR/steps.tsv"
} > "$OUTDIR/gpu-check.md"
cat "$OUTDIR/gpu-check.md"
echo "wrote $OUTDIR/gpu-check.md"
