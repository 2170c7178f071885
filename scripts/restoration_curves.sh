#!/usr/bin/env bash
# Rate–perception curves of the LL-ICM joint adapters (scripts/train_restoration_adapters.sh) against
# coding with the base codec, JPEG or WebP and then restoring, on Set14 (docs/restoration.md).
# Every quality with a trained adapter file in $RUNS is evaluated; BD-rates, plots and tables
# land in $OUT/<task>/.
#
#   scripts/restoration_curves.sh                       # every low-level task with adapters
#   TASKS=deblur DATA=$ICMH_DATA_DIR/kodak scripts/restoration_curves.sh
set -euo pipefail
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/adapters}"
OUT="${OUT:-out/restoration}"
DATA="${DATA:-${ICMH_DATA_DIR:-../shared/data}/sr-bench/set14}"
TASKS="${TASKS:-denoise deblur super-resolution low-light}"
for task in $TASKS; do
    adapters=() qualities=()
    for quality in 1 2 3 4 5; do
        file="$RUNS/mbt2018-mean-small-q$quality-$task.safetensors"
        if [ -f "$file" ]; then adapters+=(--adapters "$file"); qualities+=("$quality"); fi
    done
    if [ ${#qualities[@]} -eq 0 ]; then echo "$task: no adapters in $RUNS (train them first)"; continue; fi
    echo "== $task: qualities ${qualities[*]} ($(date -u +%H:%M))"
    "$BIN/icmh" eval --task "$task" --data "$DATA" --codec mbt2018-mean-small \
        --qualities "$(IFS=,; echo "${qualities[*]}")" --methods base,adapted,jpeg,webp "${adapters[@]}" \
        --out "$OUT/$task" --no-progress
done
