"""Where the real test images live (a setting, never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "ICMH_DATA_DIR"


def default_data_dir() -> Path:
    """``$ICMH_DATA_DIR`` if set, else ``../shared/data`` beside the project checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"
