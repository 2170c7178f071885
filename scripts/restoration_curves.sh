#!/usr/bin/env bash
# Rate–perception curves of the LL-ICM joint adapters (scripts/train_restoration_adapters.sh) against
# coding with the base codec, JPEG or WebP and then restoring, on Set14 (docs/restoration.md).
# Every quality with a trained adapter file in $RUNS is evaluated, the base codec at all five (joint
# training moves the curve far enough that fewer would not overlap); per-run tables and plots land in
# $OUT/<task>/{joint,separate}/, the comparison (BD table, plot) in $OUT/compare-<task>.{md,png}.
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
IMAGE_QUALITIES="${IMAGE_QUALITIES:-5,10,20,40,60,80,95}"  # JPEG and WebP: wide, so that their curves overlap
REUSE="${REUSE:-0}"  # 1: keep an earlier run's base/JPEG/WebP points (they do not depend on the adapters)
for task in $TASKS; do
    adapter_files "$RUNS/mbt2018-mean-small-qQ-$task.safetensors"
    if [ -z "$qualities" ]; then echo "$task: no adapters in $RUNS (train them first)"; continue; fi
    echo "== $task: joint adapters at qualities $qualities; base codec at 1–5 ($(date -u +%H:%M))"
    separate="$OUT/$task/separate/eval-$task.json"
    if [ "$REUSE" = 1 ] && [ -f "$separate" ]; then
        echo "reusing $separate"
    else
        "$BIN/icmh" eval --task "$task" --data "$DATA" --codec mbt2018-mean-small --qualities 1,2,3,4,5 \
            --methods base,jpeg,webp --jpeg-qualities "$IMAGE_QUALITIES" --webp-qualities "$IMAGE_QUALITIES" \
            --out "$OUT/$task/separate" --no-progress
    fi
    "$BIN/icmh" eval --task "$task" --data "$DATA" --codec mbt2018-mean-small --qualities "$qualities" \
        --methods adapted "${adapters[@]}" --out "$OUT/$task/joint" --no-progress
    "$BIN/python" scripts/compare_methods.py "$OUT/$task/joint/eval-$task.json:adapted=joint" \
        "$separate:base=base-then-restore" "$separate:jpeg=jpeg-then-restore" "$separate:webp=webp-then-restore" \
        --out "$OUT"
done
