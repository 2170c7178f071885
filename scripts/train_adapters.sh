#!/usr/bin/env bash
# Train the shipped SFMA adapters of mbt2018-mean-small: every quality × detection (yolox-nano),
# segmentation (yolov5n-seg) and classification (mobilenet-v2), on training images only, with the
# λ presets of icmh/training/adapters.py (calibrated with `icmh train --task T --calibrate`).
#
#   scripts/train_adapters.sh                  # runs (or resumes) every run below, in order
#   STEPS=600 QUALITIES="2 1 3 4" TASKS="detection" scripts/train_adapters.sh
#   EXTRA="--importance --prompts" NAME=-importance SHIP=0 TASKS=detection scripts/train_adapters.sh
#                                              # Prompt-ICM variant (docs/importance.md), kept in runs/
#
# Each run keeps a resume checkpoint beside its output; finished runs are skipped. Results are
# copied to shared/adapters/ (float32 safetensors with their metadata: codec, quality, task,
# task model, λ, steps, training images).
set -euo pipefail
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/adapters}"
STEPS="${STEPS:-600}"
QUALITIES="${QUALITIES:-2 1 3 4}"
TASKS="${TASKS:-detection segmentation classification}"
EXTRA="${EXTRA:-}"   # more icmh train options, e.g. --importance --prompts
NAME="${NAME:-}"     # suffix of the file names, e.g. -importance
SHIP="${SHIP:-1}"    # 1: copy the results to shared/adapters/
COMMON=(--codec mbt2018-mean-small --crop 192 --batch-size 8 --lr 1e-3 --schedule multistep --amp bf16
        --checkpoint-every 100 --no-progress)
mkdir -p "$RUNS" shared/adapters

for quality in $QUALITIES; do
    for task in $TASKS; do
        out="$RUNS/mbt2018-mean-small-q$quality-$task$NAME.safetensors"
        if [ -f "$out" ] && [ ! -f "$out.ckpt.safetensors.tmp" ] && \
           "$BIN/python" -c "import sys; from safetensors import safe_open; m=safe_open(sys.argv[1],'pt').metadata(); sys.exit(0 if m.get('steps')==sys.argv[2] else 1)" "$out" "$STEPS"; then
            echo "q$quality $task: done ($out)"
        else
            # shellcheck disable=SC2206
            args=("${COMMON[@]}" $EXTRA --task "$task" --quality "$quality" --steps "$STEPS" --out "$out")
            [ -f "$out.ckpt.safetensors" ] && args+=(--resume)
            echo "q$quality $task: icmh train ${args[*]}"
            "$BIN/icmh" train "${args[@]}"
        fi
        if [ "$SHIP" = 1 ]; then cp "$out" "shared/adapters/mbt2018-mean-small-q$quality-$task$NAME.safetensors"; fi
    done
done
