#!/usr/bin/env bash
# The GPU checks in one command, for a short lease on a GPU machine: each step under a time cap
# taken from one budget, its log in OUT_DIR, one summary line per step (in OUT_DIR/summary.txt).
#
#   scripts/gpu_checks.sh [DATA_DIR] [OUT_DIR]        # BUDGET=480 seconds by default
#
# Steps, in order of importance: `pytest -m gpu`; the default job on the GPU (diagnostics on);
# `benchmark.py --device cuda` (an epoch of the default model); `--overhead --device cuda`
# (the tiny model's per-step milliseconds); `--loss-layouts --device cuda` (which layout of a pack's
# loss is faster there: actlab.pack.stacked.member_cross_entropy); `--pack 8 --device cuda`.
cd "$(dirname "$0")/.." || exit 1
DATA_DIR=${1:-data}
OUT_DIR=${2:-outputs/gpu_checks}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
START=$(date +%s)
DEADLINE=$((START + ${BUDGET:-480}))
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

step() {  # step NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2 left
  shift 2
  left=$((DEADLINE - $(date +%s)))
  ((left < cap)) && cap=$left
  if ((cap < 10)); then
    echo "$name: skipped (the budget is spent)" | tee -a "$OUT_DIR/summary.txt"
    return
  fi
  local begin=$(date +%s)
  timeout -k 5 "$cap" "$@" >"$OUT_DIR/$name.log" 2>&1
  echo "$name: exit $? in $(($(date +%s) - begin)) s (cap $cap s)" | tee -a "$OUT_DIR/summary.txt"
}

"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >"$OUT_DIR/summary.txt" 2>&1 || {
  cat "$OUT_DIR/summary.txt"
  echo "error: torch sees no CUDA device"
  exit 1
}
step pytest_gpu 170 "$PYTHON" -m pytest -m gpu -o addopts="" -p no:cacheprovider -n 8 --dist load -q -ra tests/test_gpu.py
step train_gpu 60 "$PYTHON" train.py trainer=gpu trainer.max_epochs=2 "data.data_dir=$DATA_DIR" "hydra.run.dir=$OUT_DIR/run"
step bench_epoch 70 "$PYTHON" scripts/benchmark.py --device cuda --rounds 3 --skip-reference --data-dir "$DATA_DIR"
step bench_overhead 100 "$PYTHON" scripts/benchmark.py --overhead --device cuda --rounds 1 --steps 100 --data-dir "$DATA_DIR"
step loss_layouts 20 "$PYTHON" scripts/benchmark.py --loss-layouts --device cuda
step bench_pack 150 "$PYTHON" scripts/benchmark.py --pack 8 --epochs 2 --steps 100 --device cuda --data-dir "$DATA_DIR"
echo "total $(($(date +%s) - START)) s" | tee -a "$OUT_DIR/summary.txt"
