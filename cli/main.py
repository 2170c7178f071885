"""``icmh``: file-based coding, codec facts, training and benchmarks.

Each sub-command lives in :mod:`icmh.cli.commands` as a module with ``register(subparsers)``
(adds its parser and sets ``func``) and is listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from icmh import __version__
from icmh.cli.common import run_cli

from icmh.cli.commands import bd, bench, decode, encode, eval as eval_command, info, train, train_codec

COMMANDS = (encode, decode, info, train, train_codec, eval_command, bench, bd)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="icmh",
        description="Image coding for machines: CompressAI codecs with SFMA task adapters.",
    )
    parser.add_argument("--version", action="version", version=f"icmh {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``icmh`` console script; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
