#!/usr/bin/env bash
# Train the bundled mbt2018-mean-small codec at every quality (the recipe of shared/weights/).
#
#   scripts/train_codec_ladder.sh            # runs (or resumes) every step below, in order
#   RUNS=runs/codec STEPS_ANCHOR=12000 STEPS_FINETUNE=1000 scripts/train_codec_ladder.sh
#
# Quality 2 (λ = 0.0067) is trained from scratch; every other quality is fine-tuned from its
# neighbour towards it (1 and 3 from 2, 4 from 3, 5 from 4). Each run keeps
# a resume checkpoint beside its output, so the script can be stopped and started again at any
# time: finished qualities are skipped, an interrupted one continues where it stopped.
# Training images only (icmh train-codec refuses evaluation images). Finished files are copied
# to shared/weights/ (float16 safetensors with the recipe and the training-image list inside).
set -euo pipefail
BIN="${VENV:-.venv}/bin"
RUNS="${RUNS:-runs/codec}"
STEPS_ANCHOR="${STEPS_ANCHOR:-12000}"
STEPS_FINETUNE="${STEPS_FINETUNE:-1000}"
COMMON=(--codec mbt2018-mean-small --crop 256 --batch-size 8 --amp "${AMP:-bf16}" --checkpoint-every 250)
LAMBDA=([1]=0.0018 [2]=0.0067 [3]=0.0250 [4]=0.0483 [5]=0.0932)  # shared/models/registry.py SMALL_LAMBDAS
mkdir -p "$RUNS"

train() {  # quality steps lr [init quality]
    local q=$1 steps=$2 lr=$3 from=${4:-}
    local out="$RUNS/mbt2018-mean-small-$q.safetensors"
    if [ -f "$out" ] && [ ! -f "$out.ckpt.safetensors.tmp" ] && \
       "$BIN/python" -c "import sys,json; from safetensors import safe_open; m=safe_open(sys.argv[1],'pt').metadata(); sys.exit(0 if m.get('steps')==sys.argv[2] else 1)" "$out" "$steps"; then
        echo "quality $q: done ($out)"
    else
        local args=("${COMMON[@]}" --quality "$q" --lmbda "${LAMBDA[$q]}" --steps "$steps" --lr "$lr" --out "$out")
        [ -n "$from" ] && args+=(--init-weights "$RUNS/mbt2018-mean-small-$from.safetensors")
        [ -f "$out.ckpt.safetensors" ] && args+=(--resume)
        echo "quality $q: icmh train-codec ${args[*]}"
        "$BIN/icmh" train-codec "${args[@]}"
    fi
    cp "$out" "shared/weights/mbt2018-mean-small-$q.safetensors"
}

train 2 "$STEPS_ANCHOR" 5e-4
train 3 "$STEPS_FINETUNE" 1e-4 2
train 1 "$STEPS_FINETUNE" 1e-4 2
train 4 "$STEPS_FINETUNE" 1e-4 3
train 5 "$STEPS_FINETUNE" 1e-4 4
