"""``icmh bench universal``: one universal frame for several consumers against one frame per consumer.

For each image (COCO-mini val photos where ``$ICMH_DATA_DIR`` has them) the benchmark
encodes one single-task frame per consumer (``human``: the base codec) and one universal
frame, and reports, measured in the same run:

* the upload: bytes of the universal frame against the sum of the per-consumer frames
  (what a camera sends when all consumers share one frame instead of one frame each);
* the server's decoding: the universal frame decoded for every consumer (latent once,
  each head on it) against decoding every per-consumer frame, median milliseconds.

Rate–accuracy of the universal frames per task (BD-rate against the per-task frames, the
base codec, JPEG and WebP) is ``icmh eval --methods base,adapted,universal,jpeg,webp``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, List

import torch

from icmh.cli.common import add_codec_options, codec_options, positive_int, warn_random_weights
from icmh.codec.loader import open_frame_codec
from icmh.errors import InvalidInputError
from icmh.images import load_image
from icmh.paths import default_data_dir
from icmh.tasks import Task

from icmh.cli.commands.timing import time_interleaved

DEFAULT_CONSUMERS = "detection,classification,human"


def register(benches: argparse._SubParsersAction) -> None:
    """Add the ``bench universal`` parser."""
    parser = benches.add_parser(
        "universal", help="one universal frame for several consumers vs one frame per consumer: upload and decoding",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consumers", default=DEFAULT_CONSUMERS,
                        help=f"consumers sharing a frame, comma-separated (default {DEFAULT_CONSUMERS})")
    parser.add_argument("--images", type=positive_int, default=8, help="number of photos (default 8)")
    parser.add_argument("--data", type=Path, help="image folder (default: $ICMH_DATA_DIR/coco-mini/val2017)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed decodes per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_codec_options(parser)
    parser.set_defaults(func=run)


def _photos(folder: Path, count: int) -> List[torch.Tensor]:
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
    if not files:
        raise InvalidInputError(f"no images in {folder} (set --data or ICMH_DATA_DIR)")
    return [load_image(path) for path in files[:count]]


def run(args: argparse.Namespace) -> int:
    """Measure and print the comparison; returns 0."""
    consumers = [Task.parse(name.strip()) for name in args.consumers.split(",") if name.strip()]
    warn_random_weights("bench universal", args)
    frame_codec = open_frame_codec(codec_options(args), [c for c in consumers if c.uses_adapters])
    missing = [c.value for c in consumers if c not in frame_codec.consumers]
    if missing:
        raise InvalidInputError(f"no universal decoder head for {', '.join(missing)}: pass --adapters DIR (made by "
                                f"'icmh train --heads ...') or --random-adapters for a smoke run")
    images = _photos(args.data or default_data_dir() / "coco-mini" / "val2017", args.images)
    per_consumer_bytes, universal_bytes, times = [], [], {"per-consumer frames": [], "universal frame": []}
    for image in images:
        frames = {c: frame_codec.encode([image], c)[0].data for c in consumers}
        universal = frame_codec.encode_universal([image])[0].data
        per_consumer_bytes.append(sum(len(data) for data in frames.values()))
        universal_bytes.append(len(universal))
        parsed = frame_codec.parse(universal)[0]
        measured = time_interleaved({
            "per-consumer frames": lambda: [frame_codec.decode([data]) for data in frames.values()],
            "universal frame": lambda: frame_codec.decode_consumers(parsed, None, consumers),
        }, args.repeats)
        for name, ms in measured.items():
            times[name].append(ms)
    report = _report(frame_codec, consumers, images, per_consumer_bytes, universal_bytes, times)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['codec']}; consumers {', '.join(report['consumers'])}; {report['images']} photos; "
          f"{'RANDOM adapters/heads (sizes and times valid, not accuracy)' if report['random'] else 'trained adapters'}")
    print(f"  upload per photo: {report['per_consumer_bytes']:.0f} B as one frame per consumer, "
          f"{report['universal_bytes']:.0f} B as one universal frame: {report['upload_saved_percent']:.1f} % saved")
    print(f"  server decoding per photo: {report['decode_ms']['per-consumer frames']:.0f} ms for the per-consumer "
          f"frames, {report['decode_ms']['universal frame']:.0f} ms for the universal frame "
          f"({report['decode_ratio']:.2f}×)")
    return 0


def _report(frame_codec, consumers, images, per_consumer_bytes, universal_bytes, times) -> Dict[str, object]:
    per_consumer, universal = statistics.mean(per_consumer_bytes), statistics.mean(universal_bytes)
    decode = {name: statistics.median(values) for name, values in times.items()}
    random = not frame_codec.loaded.pretrained or any(
        meta.random_weights for meta in [*frame_codec.adapter_metadata.values(), *frame_codec.head_metadata.values()]
    ) or len(frame_codec.adapter_metadata) + len(frame_codec.head_metadata) == 0
    return {"codec": frame_codec.loaded.label, "consumers": [c.value for c in consumers], "images": len(images),
            "per_consumer_bytes": per_consumer, "universal_bytes": universal,
            "upload_saved_percent": 100 * (1 - universal / per_consumer), "decode_ms": decode,
            "decode_ratio": decode["universal frame"] / decode["per-consumer frames"], "random": random}
