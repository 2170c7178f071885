"""``cloud-server``: decode frames with the task adapters.

This version decodes a folder of frames written by ``edge-client --save-dir`` (offline
mode): one PNG and one JSON line per frame. The gRPC service, task models and metrics
are the next step of the project.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

from shared.cli_common import add_codec_options, codec_options, run_cli, warn_random_weights
from shared.codec_loader import open_frame_codec
from shared.errors import IcmhError, InvalidInputError
from shared.images import save_image
from shared.tasks import Task


def build_parser() -> argparse.ArgumentParser:
    """The ``cloud-server`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cloud-server",
        description="Decode frames with the base codec and the decoder adapters of each frame's task. "
                    "Offline mode: every .icmh file of --input-dir becomes a PNG in --output-dir and a line "
                    "of results.jsonl; a bad frame gets an error line and the rest go on.",
    )
    parser.add_argument("--input-dir", type=Path, required=True, help="folder of .icmh frames")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for PNGs and results.jsonl")
    add_codec_options(parser)
    return parser


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    files = sorted(args.input_dir.glob("*.icmh")) if args.input_dir.is_dir() else []
    if not files:
        raise InvalidInputError(f"no .icmh frames in {args.input_dir}")
    if args.random_weights:
        warn_random_weights("cloud-server")
    # with --random-weights every task gets seeded adapters; otherwise the tasks of the --adapters files
    frame_codec = open_frame_codec(codec_options(args), list(Task) if args.random_weights else [])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    with open(args.output_dir / "results.jsonl", "w", encoding="utf-8") as results:
        for path in files:
            start = time.perf_counter()
            try:
                decoded = frame_codec.decode([path.read_bytes()])[0]
            except IcmhError as exc:
                failures += 1
                results.write(json.dumps({"frame": path.name, "error": type(exc).__name__, "message": str(exc)}) + "\n")
                continue
            elapsed = time.perf_counter() - start
            save_image(decoded.image, args.output_dir / f"{path.stem}.png")
            results.write(json.dumps({
                "frame": path.name, "task": decoded.task.value, "width": decoded.header.width,
                "height": decoded.header.height, "bytes": decoded.size_bytes, "bpp": round(decoded.bpp, 6),
                "decode_ms": round(1e3 * elapsed, 2),
            }) + "\n")
    print(f"decoded {len(files) - failures} of {len(files)} frames ({frame_codec.loaded.label}) -> "
          f"{args.output_dir} (results.jsonl)")
    return 1 if failures else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``cloud-server`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
