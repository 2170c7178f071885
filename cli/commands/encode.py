"""``icmh encode IMAGE -o FILE``: one image to one frame."""

from __future__ import annotations

import argparse
from pathlib import Path

from icmh.cli.common import add_codec_options, check_file_output, codec_options, warn_random_weights, write_output
from icmh.codec.loader import open_frame_codec
from icmh.images import load_image
from icmh.tasks import Task


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``encode`` parser."""
    parser = subparsers.add_parser(
        "encode", help="encode an image into a bitstream file",
        description="Encode IMAGE with the base codec and the adapters of --task into one frame "
                    "(header + entropy-coded strings). Bits per pixel count every byte of the file.",
    )
    parser.add_argument("image", type=Path, help="input image (PNG, JPEG, ...; any size)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output bitstream file")
    parser.add_argument("--task", default=Task.HUMAN.value, choices=[t.value for t in Task],
                        help="task the frame is coded for; 'human' uses no adapters (default: human)")
    add_codec_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Encode ``args.image`` to ``args.output``; returns 0."""
    task = Task.parse(args.task)
    check_file_output(args.output)
    image = load_image(args.image)
    warn_random_weights("encode", args)
    frame_codec = open_frame_codec(codec_options(args), [task])
    frame = frame_codec.encode([image], task)[0]
    write_output(args.output, frame.data)
    print(f"{args.output}: {len(frame.data)} bytes, {frame.bpp:.4f} bpp, {frame.width}×{frame.height}, "
          f"task {task.value}, {frame_codec.loaded.label}")
    return 0
