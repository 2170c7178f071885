"""``icmh decode FILE -o IMAGE.png``: one frame back to an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from icmh.codec.bitstream import parse_frame
from icmh.cli.common import add_weight_options, codec_options, warn_random_weights
from icmh.codec.loader import open_frame_codec
from icmh.errors import InvalidInputError
from icmh.images import check_image_output, save_image
from icmh.models.registry import codec_by_wire_id
from icmh.tasks import Task


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``decode`` parser."""
    parser = subparsers.add_parser(
        "decode", help="decode a bitstream file into an image",
        description="Decode FILE. Codec, quality, task and image size come from the frame header; "
                    "a frame coded for a task needs that task's --adapters (the same ones the encoder used).",
    )
    parser.add_argument("bitstream", type=Path, help="a frame written by 'icmh encode' or the edge client")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output image (PNG recommended)")
    add_weight_options(parser)
    parser.set_defaults(func=run)


def read_frame_file(path: Path) -> bytes:
    """The bytes of a frame file; raises :class:`InvalidInputError` if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    """Decode ``args.bitstream`` to ``args.output``; returns 0."""
    check_image_output(args.output)
    data = read_frame_file(args.bitstream)
    header = parse_frame(data).header
    spec = codec_by_wire_id(header.codec_id)
    task = Task.from_wire_id(header.task_id)
    warn_random_weights("decode", args)
    frame_codec = open_frame_codec(codec_options(args, spec.name, header.quality), [task])
    decoded = frame_codec.decode([data])[0]
    save_image(decoded.image, args.output)
    print(f"{args.output}: {header.width}×{header.height}, {decoded.bpp:.4f} bpp, task {task.value}, "
          f"{frame_codec.loaded.label}")
    return 0
