#!/usr/bin/env bash
# The main job on the embedded default: a cloud server on loopback, the edge client
# streaming the built-in demo scene for detection, results and a summary printed.
# No camera, network or download is needed: weights are seeded random (loudly labelled)
# unless the torch hub cache holds pretrained ones and you drop --random-weights.
set -euo pipefail
BIN="${VENV:-.venv}/bin"
OUT="${DEMO_OUT:-out/demo}"
FRAMES="${DEMO_FRAMES:-8}"
CODEC=(--codec "${DEMO_CODEC:-mbt2018-mean-tiny}" --quality "${DEMO_QUALITY:-1}" --random-weights)
mkdir -p "$OUT"
PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/cloud-server" --port "$PORT" --metrics-port 0 --tasks detection "${CODEC[@]}" --detector-min-size 320 \
    > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
    grep -q "listening on" "$OUT/server.log" && break
    kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
    sleep 0.5
done
grep "listening on" "$OUT/server.log"
"$BIN/edge-client" --demo --frames "$FRAMES" --task detection "${CODEC[@]}" --server "127.0.0.1:$PORT" \
    --output "$OUT/results.jsonl"
"$BIN/python" - "$OUT/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    dets = r.get("result", {}).get("detections", [])
    top = ", ".join(f"{d['label_name']} {d['score']:.2f}" for d in dets[:3]) or "no detections"
    print(f"frame {r['frame_id']:3d}: {r['bytes']:6d} B  {r['bpp']:.4f} bpp  round trip {r['round_trip_ms']:7.1f} ms  {top}")
print("results (random task-model weights: labels are meaningless):", sys.argv[1])
PY
