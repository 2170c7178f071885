#!/usr/bin/env bash
# The main job end to end on loopback: a cloud-server, and the edge-client streaming real
# photos for detection over gRPC; one line per frame (bytes, bpp, round trip, the objects
# found), the summary, results.jsonl and the decoded frames with their detections drawn.
#
# Everything is real and trained: the project's own codec (shared/weights) with its trained
# detection adapters (shared/adapters) and YOLOX-nano from ../shared/models. No camera,
# network or download is needed. Settings (environment):
#   ICMH_DATA_DIR    real images (default ../shared/data); absent: a synthetic scene, labelled
#   ICMH_MODELS_DIR  the task models (default ../shared/models)
#   DEMO_OUT, DEMO_FRAMES, DEMO_TASK, DEMO_QUALITY
set -euo pipefail
BIN="${VENV:-.venv}/bin"
OUT="${DEMO_OUT:-out/demo}"
FRAMES="${DEMO_FRAMES:-6}"
TASK="${DEMO_TASK:-detection}"
QUALITY=(--quality "${DEMO_QUALITY:-3}")
DATA="${ICMH_DATA_DIR:-../shared/data}"
rm -rf "$OUT" && mkdir -p "$OUT/frames" "$OUT/annotated"

# the first annotated COCO val images (objects known), linked, not copied
if [ -d "$DATA/coco-mini/val2017" ]; then
    "$BIN/python" - "$DATA/coco-mini" "$OUT/frames" "$FRAMES" <<'PY'
import json, os, sys
root, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
images = json.load(open(os.path.join(root, "annotations", "instances_val2017.json")))["images"]
for entry in sorted(images, key=lambda e: e["id"])[:count]:
    os.symlink(os.path.abspath(os.path.join(root, "val2017", entry["file_name"])), os.path.join(out, entry["file_name"]))
PY
    SOURCE=(--images "$OUT/frames")
    echo "demo: $FRAMES COCO val photos from $DATA/coco-mini, task $TASK"
else
    SOURCE=(--demo)
    echo "demo: $DATA/coco-mini not found: streaming a SYNTHETIC scene (coloured discs; no real objects to find)"
fi

PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/cloud-server" --port "$PORT" --metrics-port 0 --tasks "$TASK" "${QUALITY[@]}" > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
    grep -q "listening on" "$OUT/server.log" && break
    kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
    sleep 0.5
done
sed -n 's/^cloud-server //p' "$OUT/server.log" | head -1
"$BIN/edge-client" "${SOURCE[@]}" --frames "$FRAMES" --task "$TASK" "${QUALITY[@]}" --server "127.0.0.1:$PORT" \
    --output "$OUT/results.jsonl" --annotate "$OUT/annotated"
echo "results: $OUT/results.jsonl; decoded frames with their detections drawn: $OUT/annotated/"
