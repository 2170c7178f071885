"""Packages of the optional extras (``pip install "icmh[server]"`` …), imported where they are used.

The edge install carries only the core; a module that needs an extra's package imports it
through :func:`optional_import`, so a missing package is one clear error naming the extra
to install instead of an ``ImportError`` at start-up.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import InvalidInputError


def optional_import(module: str, extra: str, what: str) -> ModuleType:
    """``import module``; raises :class:`InvalidInputError` naming ``extra`` when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InvalidInputError(f"{what} needs the '{extra}' extra: pip install \"icmh[{extra}]\" "
                                f"({type(exc).__name__}: {exc})") from None
