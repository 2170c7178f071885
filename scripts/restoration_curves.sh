#!/usr/bin/env bash
# Rate–perception curves of the LL-ICM joint adapters (scripts/train_restoration_adapters.sh) against
# coding with the base codec, JPEG or WebP and then restoring, on Set14 (docs/restoration.md).
# Every quality with a trained adapter file in $RUNS is evaluated; BD-rates, plots and tables
# land in $OUT/<task>/.
#
#   scripts/restoration_curves.sh                       # every low-level task with adapters
#   TASKS=deblur DATA=$ICMH_DATA_DIR/kodak scripts/restoration_curves.sh
set -euo pipefail
# shellcheck source=scripts/adapter_files.sh
source "$(dirname "$0")/adapter_files.sh"
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/adapters}"
OUT="${OUT:-out/restoration}"
DATA="${DATA:-${ICMH_DATA_DIR:-../shared/data}/sr-bench/set14}"
TASKS="${TASKS:-denoise deblur super-resolution low-light}"
for task in $TASKS; do
    adapter_files "$RUNS/mbt2018-mean-small-qQ-$task.safetensors"
    if [ -z "$qualities" ]; then echo "$task: no adapters in $RUNS (train them first)"; continue; fi
    echo "== $task: qualities $qualities ($(date -u +%H:%M))"
    "$BIN/icmh" eval --task "$task" --data "$DATA" --codec mbt2018-mean-small \
        --qualities "$qualities" --methods base,adapted,jpeg,webp "${adapters[@]}" \
        --out "$OUT/$task" --no-progress
done
