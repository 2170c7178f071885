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

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
from compressai.zoo.image import model_urls
from compressai.zoo.pretrained import load_pretrained
from safetensors.torch import save_file
from torch import Tensor, nn

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.hub import cached_path, hub_state_dict, read_state_dict
from icmh.hashing import FINGERPRINT_BYTES, short_digest
from icmh.seeding import seeded
from icmh.models.registry import CodecSpec, get_codec

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"  # icmh/weights: the codecs this project trained
RANDOM_WEIGHTS_WARNING = (
    "!!! RANDOM WEIGHTS: {what} run with seeded random weights; bitstreams, images and "
    "results are NOT those of a trained model !!!"
)


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
    return short_digest(model.state_dict(), FINGERPRINT_BYTES)


def load_codec_state(model: nn.Module, state: Dict[str, Tensor], misfit: str) -> None:
    """Load a codec state dict (zoo key names converted by CompressAI's ``load_pretrained``).

    Raises :class:`InvalidInputError` ``"<misfit>: <first line of the reason>"`` when it does not fit.
    """
    constants = {k: v.clone() for k, v in model.named_buffers() if v.is_floating_point() and v.numel()}
    try:
        model.load_state_dict(load_pretrained(state))
    except (RuntimeError, KeyError) as exc:
        raise InvalidInputError(f"{misfit}: {str(exc).splitlines()[0]}") from None
    restore_constants(model, constants)


def restore_constants(model: nn.Module, constants: Mapping[str, Tensor]) -> None:
    """Put back the codec's floating-point buffers as its constructor made them.

    They are constants, not learned: likelihood and scale lower bounds, GDN pedestals
    (the scale table, empty until ``update()``, keeps its loaded values). Files that
    stored them as float16 rounded the likelihood bound 1e-9 to 0, which let training
    take ``log(0)``.
    """
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in constants:
                buffer.copy_(constants[name])


def save_codec_weights(model: nn.Module, path: Path, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Save ``model``'s state dict as safetensors with metadata: learned parameters as float16,
    buffers (CDF tables, constants) as they are."""
    parameters = {name for name, _ in model.named_parameters()}
    state = {
        k: (v.detach().half() if k in parameters else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=dict(metadata or {}))


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
        model = seeded(seed, lambda: spec.build(quality))
        model.update(force=True)
        source, pretrained = f"random weights, seed {seed}", False
    else:
        if weights is not None:
            state, source = read_state_dict(weights), f"weights from {weights}"
        elif quality in spec.bundled_weights:
            state, source = _bundled_state_dict(spec, quality)
        else:
            url = zoo_url(spec, quality)
            state = hub_state_dict(url, what=f"{spec.name} quality {quality}", download=download,
                                   alternative="pass --codec-weights PATH, or use --random-weights for a smoke run")
            source = f"pretrained, {cached_path(url)}"
        model = spec.build(quality)
        load_codec_state(model, state, f"weights ({source}) do not fit {spec.name} quality {quality}")
        pretrained = True
    model.eval().requires_grad_(False)
    return LoadedCodec(model, spec, quality, source, pretrained, codec_fingerprint(model))
