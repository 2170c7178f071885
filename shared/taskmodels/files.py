"""Where the real small task models' files live, and reading them with their SHA-256 checked.

The files (``../shared/models`` beside the checkout: YOLOX-nano ONNX, YOLOv5n-seg ncnn,
SqueezeNet 1.1 and MobileNetV2 TFLite) are data, never copied into the repository. The
folder is a setting, looked up in this order:

1. ``--models-dir DIR`` (``ModelOptions.models_dir``),
2. ``$ICMH_MODELS_DIR``,
3. ``../shared/models`` beside the checkout,
4. the user's cache, ``$XDG_CACHE_HOME/icmh/models`` (default ``~/.cache/icmh/models``).

The first two are used alone when given; otherwise the first of 3–4 that holds the file.
Every file is read once, as bytes, and its SHA-256 is compared with the digest pinned in
the model registry before anything parses it: a tampered or truncated file is refused
with one clear error, and no file is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import InvalidInputError, WeightsMissingError

MODELS_DIR_ENV = "ICMH_MODELS_DIR"
MODELS_DIR_FLAG = "--models-dir"


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its path inside the models folder and its pinned SHA-256 (hex)."""

    path: str
    sha256: str


def candidate_dirs(explicit: Optional[Path] = None) -> List[Path]:
    """The folders searched for model files, in order (see the module docstring)."""
    if explicit is not None:
        return [Path(explicit)]
    if os.environ.get(MODELS_DIR_ENV):
        return [Path(os.environ[MODELS_DIR_ENV])]
    checkout = Path(__file__).resolve().parent.parent.parent.parent / "shared" / "models"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "icmh" / "models"
    return [checkout, cache]


def locate(file: ModelFile, models_dir: Optional[Path] = None) -> Optional[Path]:
    """The path of ``file`` in the first folder that holds it, or ``None``."""
    for folder in candidate_dirs(models_dir):
        path = folder / file.path
        if path.is_file():
            return path
    return None


def read_verified(file: ModelFile, models_dir: Optional[Path] = None, what: str = "") -> bytes:
    """The bytes of ``file`` after checking their SHA-256.

    Raises :class:`WeightsMissingError` (one line naming the file, the folders searched,
    the flag and the environment variable) when it is nowhere, and
    :class:`InvalidInputError` when its digest differs (tampered or truncated).
    """
    path = locate(file, models_dir)
    label = what or file.path
    if path is None:
        searched = ", ".join(str(d) for d in candidate_dirs(models_dir))
        raise WeightsMissingError(
            f"model file {file.path} for {label} is missing (searched {searched}); point {MODELS_DIR_FLAG} DIR "
            f"or ${MODELS_DIR_ENV} at the folder of the real task models (../shared/models), or choose another "
            f"model with --model"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != file.sha256:
        raise InvalidInputError(
            f"model file {path} has SHA-256 {digest[:16]}…, expected {file.sha256[:16]}… ({len(data)} bytes): "
            f"it is damaged, truncated or not the file {label} was made from; refusing to load it"
        )
    return data
