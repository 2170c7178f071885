"""``edge-client``: capture frames, encode them for a task, write the bitstreams.

This version writes each frame to ``--save-dir`` (one ``.icmh`` file per frame); the
gRPC streaming to the cloud server is the next step of the project.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from shared.cli_common import add_codec_options, codec_options, positive_int, run_cli, warn_random_weights
from shared.codec_loader import open_frame_codec
from shared.tasks import Task

from .sources import open_source


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-client`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="edge-client",
        description="Encode camera, video, image-folder or demo frames with a task's SFMA encoder adapters "
                    "and write one bitstream file per frame.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=int, metavar="INDEX", help="live camera (OpenCV index)")
    source.add_argument("--video", type=Path, metavar="FILE", help="video file")
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of images")
    source.add_argument("--demo", action="store_true", help="built-in moving scene (default; needs nothing)")
    parser.add_argument("--task", default=Task.DETECTION.value, choices=[t.value for t in Task],
                        help="task the frames are coded for (default: detection)")
    parser.add_argument("--frames", type=positive_int, default=None, help="stop after N frames (demo default: 16)")
    parser.add_argument("--save-dir", type=Path, required=True, help="folder for frame_NNNNNN.icmh files")
    add_codec_options(parser)
    return parser


def _source(args: argparse.Namespace):
    if args.camera is not None:
        return open_source("camera", args.camera, args.frames)
    if args.video is not None:
        return open_source("video", args.video, args.frames)
    if args.images is not None:
        return open_source("images", args.images, args.frames)
    return open_source("demo", None, args.frames or 16)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    task = Task.parse(args.task)
    if args.random_weights:
        warn_random_weights("edge-client")
    frames = iter(_source(args))
    first = next(frames, None)  # opens the source (and reports a bad one) before the codec loads
    if first is None:
        print("no frames were captured", file=sys.stderr)
        return 1
    frames = itertools.chain([first], frames)
    frame_codec = open_frame_codec(codec_options(args), [task])
    args.save_dir.mkdir(parents=True, exist_ok=True)
    bpps, times = [], []
    for index, image in enumerate(frames):
        start = time.perf_counter()
        encoded = frame_codec.encode([image], task)[0]
        times.append(time.perf_counter() - start)
        (args.save_dir / f"frame_{index:06d}.icmh").write_bytes(encoded.data)
        bpps.append(encoded.bpp)
        print(f"\rframes {index + 1}  mean bpp {statistics.mean(bpps):.4f}  "
              f"encode {1e3 * statistics.median(times):.0f} ms", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"{len(bpps)} frames ({task.value}, {frame_codec.loaded.label}) -> {args.save_dir}: "
          f"mean {statistics.mean(bpps):.4f} bpp, median encode {1e3 * statistics.median(times):.1f} ms")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``edge-client`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
