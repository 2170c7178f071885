"""Base-codec weights: CompressAI zoo through the torch hub cache, bundled, file or random.

* Zoo codecs load ``$TORCH_HOME/hub/checkpoints/<zoo file name>`` (the names of
  CompressAI's URL table), downloading it first when it is missing and the network
  allows. A pre-filled cache therefore works offline. When neither works the user gets
  one :class:`WeightsMissingError` naming the file, the folder and the flags.
* ``mbt2018-mean-tiny`` ships with the package (``shared/weights/``).
* ``weights=PATH`` loads a given file (safetensors, or a plain state dict read with
  ``torch.load(weights_only=True)``; nothing is ever unpickled).
* ``random_weights=True`` builds a seeded, randomly initialised codec, labelled as such.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
from compressai.zoo.image import model_urls
from compressai.zoo.pretrained import load_pretrained
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import InvalidInputError, WeightsMissingError
from .hashing import tensors_digest
from .models.registry import CodecSpec, get_codec

BUNDLED_DIR = Path(__file__).parent / "weights"
RANDOM_WEIGHTS_WARNING = (
    "!!! RANDOM WEIGHTS: {what} run with seeded random weights; bitstreams, images and "
    "results are NOT those of a trained model !!!"
)
OFFLINE_ENV = "ICMH_OFFLINE"


@dataclass(frozen=True)
class LoadedCodec:
    """A base codec ready for coding, and where its weights came from."""

    model: nn.Module
    spec: CodecSpec
    quality: int
    source: str
    pretrained: bool
    fingerprint: bytes  # 4 bytes, written into every frame header

    @property
    def label(self) -> str:
        """Human-readable description, e.g. ``mbt2018-mean q3 (random weights, seed 0)``."""
        return f"{self.spec.name} q{self.quality} ({self.source})"


def hub_checkpoints_dir() -> Path:
    """The torch hub checkpoint cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def zoo_url(spec: CodecSpec, quality: int) -> str:
    """The CompressAI zoo URL of ``spec`` at ``quality`` (MSE-optimised weights)."""
    if spec.zoo_name is None:
        raise InvalidInputError(f"{spec.name} has no CompressAI zoo weights")
    spec.check_quality(quality)
    return model_urls[spec.zoo_name]["mse"][quality]


def zoo_file_name(spec: CodecSpec, quality: int) -> str:
    """The file name the torch hub cache stores the zoo weights under."""
    return zoo_url(spec, quality).rsplit("/", 1)[-1]


def codec_fingerprint(model: nn.Module) -> bytes:
    """A 4-byte fingerprint of all of ``model``'s parameters and buffers."""
    return bytes.fromhex(tensors_digest(model.state_dict()))[:4]


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
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as exc:
        kind = "safetensors" if path.suffix == ".safetensors" else "plain tensor state dict"
        raise InvalidInputError(
            f"cannot read weights file {path}: not a {kind} ({type(exc).__name__}); "
            f"files holding pickled objects are refused"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InvalidInputError(f"weights file {path} does not hold a state dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_codec_state(model: nn.Module, state: Dict[str, Tensor], misfit: str) -> None:
    """Load a codec state dict (zoo key names converted by CompressAI's ``load_pretrained``).

    Raises :class:`InvalidInputError` ``"<misfit>: <first line of the reason>"`` when it does not fit.
    """
    try:
        model.load_state_dict(load_pretrained(state))
    except (RuntimeError, KeyError) as exc:
        raise InvalidInputError(f"{misfit}: {str(exc).splitlines()[0]}") from None


def save_codec_weights(model: nn.Module, path: Path, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Save ``model``'s state dict as safetensors (float tensors as float16) with metadata."""
    state = {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=dict(metadata or {}))


def _zoo_state_dict(spec: CodecSpec, quality: int, download: bool) -> tuple[Dict[str, Tensor], str]:
    folder = hub_checkpoints_dir()
    path = folder / zoo_file_name(spec, quality)
    if not path.is_file() and download and os.environ.get(OFFLINE_ENV) != "1":
        folder.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(zoo_url(spec, quality), str(path), progress=True)
        except Exception as exc:  # any network failure means the same thing to the user
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _missing(spec, quality, path, f"download failed: {reason}") from None
    if not path.is_file():
        raise _missing(spec, quality, path, "not downloaded (offline)")
    return read_state_dict(path), f"pretrained, {path}"


def _missing(spec: CodecSpec, quality: int, path: Path, reason: str) -> WeightsMissingError:
    return WeightsMissingError(
        f"pretrained weights for {spec.name} quality {quality} are missing: {path.name} is not in "
        f"{path.parent} ({reason}); copy the file there (or point TORCH_HOME at a folder whose "
        f"hub/checkpoints holds it), pass --codec-weights PATH, or use --random-weights for a smoke run"
    )


def _bundled_state_dict(spec: CodecSpec, quality: int) -> tuple[Dict[str, Tensor], str]:
    path = BUNDLED_DIR / spec.bundled_weights[quality]
    if not path.is_file():
        raise WeightsMissingError(
            f"bundled weights {path.name} are missing from {path.parent}; rebuild them with "
            f"'icmh train-codec --codec {spec.name} --out {path}'"
        )
    return read_state_dict(path), f"trained by icmh, {path.name}"


def load_base_codec(
    name: str,
    quality: int,
    *,
    weights: Optional[Path] = None,
    random_weights: bool = False,
    seed: int = 0,
    download: bool = True,
) -> LoadedCodec:
    """Build codec ``name`` at ``quality`` with its weights, in eval mode, CDFs ready.

    Raises :class:`InvalidInputError` (unknown codec / quality, unreadable file) or
    :class:`WeightsMissingError` (pretrained weights neither cached nor downloadable).
    """
    spec = get_codec(name)
    spec.check_quality(quality)
    if random_weights:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = spec.build(quality)
        model.update(force=True)
        source, pretrained = f"random weights, seed {seed}", False
    else:
        if weights is not None:
            state, source = read_state_dict(weights), f"weights from {weights}"
        elif quality in spec.bundled_weights:
            state, source = _bundled_state_dict(spec, quality)
        else:
            state, source = _zoo_state_dict(spec, quality, download)
        model = spec.build(quality)
        load_codec_state(model, state, f"weights ({source}) do not fit {spec.name} quality {quality}")
        pretrained = True
    model.eval().requires_grad_(False)
    return LoadedCodec(model, spec, quality, source, pretrained, codec_fingerprint(model))
