"""Pretrained weights through the torch hub cache, and weight files read without unpickling.

One place for both the CompressAI zoo codecs and the torchvision / detectron2 task models:

* :func:`hub_state_dict` returns the state dict of a hub URL with
  ``torch.hub.load_state_dict_from_url(check_hash=True, weights_only=True)``: it reads
  ``$TORCH_HOME/hub/checkpoints/<last part of the URL>`` when present (so a pre-filled
  cache works offline) and downloads it there otherwise, checking the hash prefix in the
  file name. ``ICMH_OFFLINE=1`` (or ``download=False``) forbids the download.
* :func:`hub_file` gives the cached file itself (detectron2's zoo pickles, which need a
  reader of their own).
* :func:`read_state_dict` reads a given file: safetensors, or a plain tensor state dict
  through ``torch.load(weights_only=True)``; pickled objects are refused.

A missing file is one :class:`~icmh.errors.WeightsMissingError` naming the file, the
folder and what to do.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Dict, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from .errors import InvalidInputError, WeightsMissingError

OFFLINE_ENV = "ICMH_OFFLINE"
_READ_ERRORS = (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError)


def checkpoints_dir() -> Path:
    """The torch hub checkpoint cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(url: str) -> Path:
    """Where the hub cache keeps the file of ``url``."""
    return checkpoints_dir() / url.rsplit("/", 1)[-1]


def _may_download(download: bool) -> bool:
    return download and os.environ.get(OFFLINE_ENV) != "1"


def _missing(what: str, path: Path, reason: str, alternative: str) -> WeightsMissingError:
    return WeightsMissingError(
        f"pretrained weights for {what} are missing: {path.name} is not in {path.parent} ({reason}); copy the "
        f"file there (or point TORCH_HOME at a folder whose hub/checkpoints holds it), {alternative}"
    )


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def hub_file(url: str, *, what: str, download: bool = True,
             alternative: str = "or use --random-weights for a smoke run") -> Path:
    """The hub-cache file of ``url``, downloaded there first when missing and allowed.

    Raises :class:`WeightsMissingError` when it is neither cached nor downloadable.
    """
    path = cached_path(url)
    if path.is_file():
        return path
    if not _may_download(download):
        raise _missing(what, path, f"offline: {OFFLINE_ENV}=1 or downloads off", alternative)
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None, progress=False)
    except Exception as exc:  # any failure to fetch means the same thing to the user
        raise _missing(what, path, f"download failed: {_reason(exc)}", alternative) from None
    return path


def hub_state_dict(url: str, *, what: str, download: bool = True,
                   alternative: str = "or use --random-weights for a smoke run") -> Dict[str, Tensor]:
    """The state dict of ``url`` from the hub cache (downloaded when missing and allowed).

    Raises :class:`WeightsMissingError` (neither cached nor downloadable) or
    :class:`InvalidInputError` (the file is not a plain tensor state dict).
    """
    path = cached_path(url)
    if not path.is_file() and not _may_download(download):
        raise _missing(what, path, f"offline: {OFFLINE_ENV}=1 or downloads off", alternative)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                       weights_only=True)
    except _READ_ERRORS as exc:
        if not path.is_file():  # the download itself failed
            raise _missing(what, path, f"download failed: {_reason(exc)}", alternative) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # network errors of every kind
        raise _missing(what, path, f"download failed: {_reason(exc)}", alternative) from None
    return tensor_state(state, path)


def read_state_dict(path: Path) -> Dict[str, Tensor]:
    """Read a state dict from safetensors or a plain torch file, without unpickling code.

    Raises :class:`InvalidInputError` if the file is missing or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    return tensor_state(state, path)


def _unreadable(path: Path, exc: BaseException) -> InvalidInputError:
    kind = "safetensors" if path.suffix == ".safetensors" else "plain tensor state dict"
    return InvalidInputError(f"cannot read weights file {path}: not a {kind} ({type(exc).__name__}); "
                             f"files holding pickled objects are refused")


def tensor_state(state: object, source: Path) -> Dict[str, Tensor]:
    """``state`` (or its ``"state_dict"`` entry) as a dict of float32 / integer tensors.

    Raises :class:`InvalidInputError` naming ``source`` if it is not a dict of tensors.
    """
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InvalidInputError(f"weights file {source} does not hold a state dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
