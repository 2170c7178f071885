#!/usr/bin/env bash
# Train LL-ICM joint adapters of mbt2018-mean-small for the low-level tasks (docs/restoration.md):
# each training crop is degraded, coded, restored by the task's shipped network, and the error of
# the restored crop to the clean one plus λ·rate is minimised, with λ = the codec's own λ·255².
# Training images only; results stay in runs/ (not shipped).
#
#   scripts/train_restoration_adapters.sh                          # every task × q1–q4, resumable
#   TASKS="deblur low-light" QUALITIES="2" scripts/train_restoration_adapters.sh
set -euo pipefail
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/adapters}"
STEPS="${STEPS:-300}"
QUALITIES="${QUALITIES:-1 2 3 4}"
TASKS="${TASKS:-denoise deblur super-resolution low-light}"
declare -A LMBDA=([1]=117.0 [2]=435.7 [3]=1625.6 [4]=3140.7 [5]=6060.0)
mkdir -p "$RUNS"
for task in $TASKS; do
    for quality in $QUALITIES; do
        out="$RUNS/mbt2018-mean-small-q$quality-$task.safetensors"
        if [ -f "$out" ] && [ ! -f "$out.ckpt.safetensors.tmp" ]; then echo "q$quality $task: done ($out)"; continue; fi
        crop=192; [ "$task" = super-resolution ] && crop=256   # the codec codes the ×½ crop: sides of 128
        args=(--codec mbt2018-mean-small --task "$task" --quality "$quality" --lmbda "${LMBDA[$quality]}"
              --steps "$STEPS" --crop "$crop" --batch-size 8 --lr 1e-3 --schedule multistep --amp bf16
              --checkpoint-every 100 --no-progress --out "$out")
        [ -f "$out.ckpt.safetensors" ] && args+=(--resume)
        echo "q$quality $task: icmh train ${args[*]} ($(date -u +%H:%M))"
        "$BIN/icmh" train "${args[@]}"
    done
done
