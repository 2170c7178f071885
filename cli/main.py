"""``icmh``: file-based coding, codec facts, training and benchmarks.

Each sub-command lives in :mod:`icmh.cli.commands` as a module with ``register(subparsers)``
(adds its parser and sets ``func``) and is listed in :data:`COMMANDS` with the extra it needs
beyond the core install. A command whose extra is not installed still shows in ``--help``
and answers with one line saying which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Optional, Sequence

from icmh import __version__
from icmh.cli.common import run_cli
from icmh.errors import InvalidInputError

# module of icmh.cli.commands -> (command name, the extra it needs beyond the core install)
COMMANDS = {
    "encode": ("encode", None), "decode": ("decode", None), "info": ("info", None),
    "train": ("train", "train"), "train_codec": ("train-codec", "train"),
    "train_restoration": ("train-restoration", "train"), "eval": ("eval", "eval"),
    "bench": ("bench", "eval"), "bd": ("bd", "eval"),
}


def _register(subparsers: argparse._SubParsersAction, module: str, name: str, extra: Optional[str]) -> None:
    try:
        importlib.import_module(f"icmh.cli.commands.{module}").register(subparsers)
    except ImportError as exc:
        if extra is None:
            raise
        missing = f"{type(exc).__name__}: {exc}"

        def unavailable(args: argparse.Namespace) -> int:
            raise InvalidInputError(f"icmh {name} needs the '{extra}' extra: pip install \"icmh[{extra}]\" ({missing})")

        parser = subparsers.add_parser(name, help=f"(needs pip install \"icmh[{extra}]\")", add_help=False)
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        parser.set_defaults(func=unavailable)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="icmh",
        description="Image coding for machines: CompressAI codecs with SFMA task adapters.",
    )
    parser.add_argument("--version", action="version", version=f"icmh {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module, (name, extra) in COMMANDS.items():
        _register(subparsers, module, name, extra)
    return parser


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``icmh`` console script; returns the exit status."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
