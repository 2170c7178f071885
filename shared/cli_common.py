"""Command-line plumbing shared by ``icmh``, ``edge-client`` and ``cloud-server``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from .codec_loader import DEFAULT_CODEC, DEFAULT_QUALITY, CodecOptions
from .errors import IcmhError, InvalidInputError
from .models.registry import CODECS
from .weights import RANDOM_WEIGHTS_WARNING

EXIT_USAGE = 2


def add_weight_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--codec-weights``, ``--random-weights``, ``--seed``, ``--device``, ``--adapters``."""
    parser.add_argument("--codec-weights", type=Path, metavar="PATH",
                        help="base codec weights file (default: CompressAI zoo file in $TORCH_HOME/hub/checkpoints)")
    parser.add_argument("--random-weights", action="store_true",
                        help="run with seeded random weights (smoke runs only; loudly labelled)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default: 0)")
    parser.add_argument("--device", default="cpu", help="torch device for the transforms: cpu or cuda (default: cpu)")
    parser.add_argument("--adapters", type=Path, action="append", default=[], metavar="FILE",
                        help="adapter checkpoint (.safetensors) of a task, or a folder of them; repeatable")


def add_codec_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--codec`` and ``--quality`` plus :func:`add_weight_options`."""
    parser.add_argument("--codec", default=DEFAULT_CODEC, choices=sorted(CODECS),
                        help=f"base codec (default: {DEFAULT_CODEC})")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY,
                        help=f"quality level of the base codec (default: {DEFAULT_QUALITY})")
    add_weight_options(parser)


def codec_options(args: argparse.Namespace, codec: Optional[str] = None, quality: Optional[int] = None) -> CodecOptions:
    """Build :class:`CodecOptions` from parsed arguments (codec / quality may come from a header)."""
    return CodecOptions(
        codec=codec or args.codec, quality=quality or args.quality, codec_weights=args.codec_weights,
        random_weights=args.random_weights, seed=args.seed, device=args.device, adapters=adapter_files(args.adapters),
    )


def adapter_files(paths: Sequence[Path]) -> list:
    """``--adapters`` values with folders expanded to the ``.safetensors`` files in them."""
    files = []
    for path in paths:
        files.extend(sorted(path.glob("*.safetensors")) if path.is_dir() else [path])
    return files


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_file_output(path: Path) -> None:
    """Raise :class:`InvalidInputError` if ``path`` is a directory (checked before any work)."""
    if path.is_dir():
        raise InvalidInputError(f"output {path} is a directory; give a file name")


def write_output(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating folders); raises :class:`InvalidInputError` on failure."""
    check_file_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {path}: {exc.strerror}") from None


def warn_random_weights(what: str) -> None:
    """Print the loud random-weights banner to stderr."""
    print(RANDOM_WEIGHTS_WARNING.format(what=what), file=sys.stderr, flush=True)


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main``; an :class:`IcmhError` becomes one ``error: …`` line and exit status 2."""
    try:
        return main(argv)
    except IcmhError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
