#!/usr/bin/env bash
# Train the bundled first-wave tiny codec (mbt2018-mean-tiny, N=64, M=96) at its four qualities:
# the fast codec of the tests, the smoke runs and the benchmarks. Training images only (the
# default sets of icmh train-codec: BSDS500 train, COCO-mini train, un-annotated COCO-mini val).
#
#   scripts/train_tiny_codec.sh          # about 15 minutes on one CPU thread; resumable
#
# Quality 1 (λ 0.0067) from scratch; 2, 3 and 4 fine-tuned from the quality below towards their
# λ (shared/models/registry.py TINY_LAMBDAS). Results go to shared/weights/.
set -euo pipefail
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/tiny}"
COMMON=(--codec mbt2018-mean-tiny --crop 128 --batch-size 8 --checkpoint-every 250)
LAMBDA=([1]=0.0067 [2]=0.0130 [3]=0.0250 [4]=0.0483)
STEPS=([1]=1500 [2]=400 [3]=400 [4]=400)
mkdir -p "$RUNS"

for q in 1 2 3 4; do
    out="$RUNS/mbt2018-mean-tiny-$q.safetensors"
    if [ -f "$out" ] && [ ! -f "$out.ckpt.safetensors" ]; then
        echo "quality $q: done ($out)"
    else
        args=("${COMMON[@]}" --quality "$q" --lmbda "${LAMBDA[$q]}" --steps "${STEPS[$q]}" --out "$out")
        if [ "$q" = 1 ]; then args+=(--lr 1e-3); else args+=(--lr 3e-4 --init-weights "$RUNS/mbt2018-mean-tiny-$((q - 1)).safetensors"); fi
        [ -f "$out.ckpt.safetensors" ] && args+=(--resume)
        echo "quality $q: icmh train-codec ${args[*]}"
        "$BIN/icmh" train-codec "${args[@]}"
        rm -f "$out.ckpt.safetensors"
    fi
    cp "$out" "shared/weights/mbt2018-mean-tiny-$q.safetensors"
done
