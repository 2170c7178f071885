#!/usr/bin/env bash
# Train universal coding (docs/universal.md) for mbt2018-mean-small at every quality: task-agnostic
# shared encoder adapters and one decoder head per consumer, loss bpp + Σ λ_t·D_t, on training
# images only. The machine head is supervised by the stand-in (the two classifiers' features), so
# the detectors stay unseen by it.
#
#   scripts/train_universal.sh                               # runs (or resumes) every quality
#   STEPS=600 QUALITIES="2" HEADS=human,detection scripts/train_universal.sh
#
# Each quality trains into RUNS/q<q> (its log and resume checkpoint beside it); the files are then
# gathered in RUNS/all, the folder `icmh eval --methods universal --adapters` takes.
set -euo pipefail
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/universal}"
STEPS="${STEPS:-300}"
QUALITIES="${QUALITIES:-2 1 3 4}"
HEADS="${HEADS:-human,detection,classification,machine}"
COMMON=(--codec mbt2018-mean-small --crop 192 --batch-size 8 --lr 1e-3 --schedule multistep --amp bf16
        --checkpoint-every 50 --no-progress)
mkdir -p "$RUNS/all"

for quality in $QUALITIES; do
    out="$RUNS/q$quality"
    encoder="$out/mbt2018-mean-small-q$quality-universal-encoder.safetensors"
    if [ -f "$encoder" ] && \
       "$BIN/python" -c "import sys; from safetensors import safe_open; m=safe_open(sys.argv[1],'pt').metadata(); sys.exit(0 if m.get('steps')==sys.argv[2] else 1)" "$encoder" "$STEPS"; then
        echo "q$quality: done ($out)"
    else
        args=("${COMMON[@]}" --heads "$HEADS" --quality "$quality" --steps "$STEPS" --out "$out")
        compgen -G "$out*.ckpt.safetensors" > /dev/null && args+=(--resume)
        echo "q$quality: icmh train ${args[*]}"
        "$BIN/icmh" train "${args[@]}"
    fi
    cp "$out"/*.safetensors "$RUNS/all/"
done
