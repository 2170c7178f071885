"""``icmh encode IMAGE -o FILE``: one image to one frame."""

from __future__ import annotations

import argparse
from pathlib import Path

from icmh.cli.common import add_codec_options, check_file_output, codec_options, warn_random_weights, write_output
import torch
from torch import Tensor

from icmh.codec.bitstream import parse_frame
from icmh.codec.frame_codec import FrameCodec, importance_levels
from icmh.codec.loader import open_frame_codec
from icmh.errors import InvalidInputError
from icmh.models.importance import LEVEL_MAX, LEVEL_MIN, level_gains
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
    parser.add_argument("--save-importance", type=Path, metavar="PNG",
                        help="also write a heat map of the importance map the frame carries: the quantiser gain "
                             "2^(k/2) per 64×64 block over the image (adapters trained with --importance)")
    add_codec_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Encode ``args.image`` to ``args.output``; returns 0."""
    task = Task.parse(args.task)
    check_file_output(args.output)
    if args.save_importance is not None:
        check_file_output(args.save_importance)
    image = load_image(args.image)
    warn_random_weights("encode", args)
    frame_codec = open_frame_codec(codec_options(args), [task])
    frame = frame_codec.encode([image], task)[0]
    write_output(args.output, frame.data)
    print(f"{args.output}: {len(frame.data)} bytes, {frame.bpp:.4f} bpp, {frame.width}×{frame.height}, "
          f"task {task.value}, {frame_codec.loaded.label}")
    if args.save_importance is not None:
        save_importance_map(args.save_importance, frame_codec, task, image, frame.data)
    return 0


def save_importance_map(path: Path, frame_codec: FrameCodec, task: Task, image: Tensor, data: bytes) -> None:
    """Write ``path``: ``image`` with the gain ``2^(k/2)`` of the importance map in frame ``data`` over it
    (one value per 64×64 block) and a colour bar; prints the map's side-information size.

    Raises :class:`InvalidInputError` when ``task``'s adapters have no importance selector.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selector = frame_codec.codec.adapter_set(task).importance if task.uses_adapters else None
    if selector is None:
        raise InvalidInputError(f"--save-importance: the {task.value} adapters have no importance selector "
                                f"(train them with 'icmh train --importance')")
    frame = parse_frame(data, frame_codec.limits)
    levels = importance_levels(frame, selector.level_cdf)
    gains = level_gains(levels)  # on the y grid: 16 pixels per value
    gains = gains.repeat_interleave(16, 0).repeat_interleave(16, 1)[: frame.header.height, : frame.header.width]
    side = len(frame.strings[-1]) if frame.header.importance else 0
    figure, axes = plt.subplots(figsize=(8, 8 * frame.header.height / frame.header.width + 0.6))
    axes.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    shown = axes.imshow(gains.numpy(), cmap="inferno", alpha=0.55, vmin=level_gains(torch.tensor([[LEVEL_MIN]])).min(),
                        vmax=level_gains(torch.tensor([[LEVEL_MAX]])).max())
    figure.colorbar(shown, ax=axes, fraction=0.04, label="quantiser gain 2^(k/2) (> 1: more bits)")
    axes.set_title(f"importance map, task {task.value}: {side} bytes of side information")
    axes.axis("off")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=100, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(figure)
    print(f"{path}: importance map, levels {int(levels.min())}..{int(levels.max())}, {side} bytes of side information")
