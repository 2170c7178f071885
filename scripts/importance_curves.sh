#!/usr/bin/env bash
# BD-rate of importance-map allocation + task prompts (Prompt-ICM, docs/importance.md) against the SFMA
# adapters alone, the base codec, JPEG and WebP, per high-level task. Needs the importance adapters
# (EXTRA="--importance --prompts" NAME=-importance SHIP=0 RUNS=runs/importance scripts/train_adapters.sh)
# and the results suite's runs in $RESULTS (icmh eval --suite --out out/results).
#
#   scripts/importance_curves.sh                   # every task with importance adapters
#   TASKS=segmentation scripts/importance_curves.sh
set -euo pipefail
# shellcheck source=scripts/adapter_files.sh
source "$(dirname "$0")/adapter_files.sh"
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/importance}"
RESULTS="${RESULTS:-out/results}"
OUT="${OUT:-out/importance}"
DATA_DIR="${ICMH_DATA_DIR:-../shared/data}"
TASKS="${TASKS:-detection segmentation classification}"
for task in $TASKS; do
    case "$task" in classification) data="$DATA_DIR/imagenet-100" ;; *) data="$DATA_DIR/coco-mini" ;; esac
    adapter_files "$RUNS/mbt2018-mean-small-qQ-$task-importance.safetensors"
    if [ -z "$qualities" ]; then echo "$task: no importance adapters in $RUNS (train them first)"; continue; fi
    echo "== $task: qualities $qualities ($(date -u +%H:%M))"
    "$BIN/icmh" eval --task "$task" --data "$data" --codec mbt2018-mean-small --methods adapted \
        --qualities "$qualities" "${adapters[@]}" --out "$OUT/$task" --no-progress
    suite="$RESULTS/$task/eval-$task.json"
    "$BIN/python" scripts/compare_methods.py "$OUT/$task/eval-$task.json:adapted=importance" \
        "$suite:adapted=sfma" "$suite:base" "$suite:jpeg" "$suite:webp" --out "$OUT"
done
