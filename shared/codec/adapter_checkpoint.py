"""Adapter checkpoints: one task's adapters as safetensors with full metadata.

The metadata names the base codec, quality, task, adapter variant, bottleneck ``d``,
initialisation, decoder position, λ, the task model, the training images, step count, the fingerprint of the
base weights the adapters were trained on, and the SHA-256 of the adapter tensors.
Loading checks every one of these against the codec it goes into and refuses a
mismatch with one clear :class:`~icmh.errors.AdapterMismatchError`. Safetensors
holds raw tensors only: nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Optional, Tuple

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from icmh.errors import AdapterMismatchError, IcmhError, InvalidInputError
from icmh.hashing import tensors_digest
from icmh.models.adapted import AdaptedCodec, AdapterConfig
from icmh.tasks import Task

FORMAT = "icmh-adapters/1"


@dataclass(frozen=True)
class AdapterMetadata:
    """What an adapter checkpoint says about itself (all stored as strings)."""

    codec: str
    quality: int
    task: str
    variant: str
    mid_dim: int
    init: str
    decoder_position: str
    base_fingerprint: str
    sha256: str
    lmbda: Optional[float] = None
    training_data: str = ""
    steps: int = 0
    random_weights: bool = False
    task_model: str = ""  # the task model whose features trained them (files before it: empty)

    @property
    def config(self) -> AdapterConfig:
        """The :class:`AdapterConfig` that rebuilds these adapters."""
        return AdapterConfig(self.variant, self.mid_dim, self.init, self.decoder_position)

    def to_strings(self) -> Dict[str, str]:
        """Metadata as the string→string map safetensors stores."""
        out = {"format": FORMAT}
        out.update({k: "" if v is None else str(v) for k, v in asdict(self).items()})
        return out

    @classmethod
    def from_strings(cls, raw: Dict[str, str], path: Path) -> "AdapterMetadata":
        """Parse stored metadata; raises :class:`AdapterMismatchError` if fields are missing or bad."""
        if raw.get("format") != FORMAT:
            raise AdapterMismatchError(f"{path} is not an icmh adapter checkpoint (format {raw.get('format')!r})")
        converters = {"quality": int, "mid_dim": int, "steps": int,
                      "lmbda": lambda s: float(s) if s else None,
                      "random_weights": lambda s: s == "True"}
        values = {}
        for f in fields(cls):
            if f.name not in raw:
                if f.default is not MISSING:
                    continue
                raise AdapterMismatchError(f"{path}: adapter metadata lacks {f.name!r}")
            try:
                values[f.name] = converters.get(f.name, str)(raw[f.name])
            except ValueError:
                raise AdapterMismatchError(f"{path}: bad adapter metadata {f.name}={raw[f.name]!r}") from None
        return cls(**values)


def save_adapters(
    path: Path,
    codec: AdaptedCodec,
    task: Task,
    base_fingerprint: bytes,
    *,
    lmbda: Optional[float] = None,
    training_data: str = "",
    steps: int = 0,
    random_weights: bool = False,
    task_model: str = "",
) -> AdapterMetadata:
    """Write the adapters of ``task`` in ``codec`` to ``path``; returns the metadata written."""
    adapter_set = codec.adapter_set(task)
    state = {k: v.detach().cpu().contiguous() for k, v in adapter_set.state_dict().items()}
    config = adapter_set.config
    meta = AdapterMetadata(
        codec=codec.spec.name, quality=codec.quality, task=task.value, variant=config.variant,
        mid_dim=config.mid_dim, init=config.init, decoder_position=config.decoder_position,
        base_fingerprint=base_fingerprint.hex(), sha256=tensors_digest(state), lmbda=lmbda,
        training_data=training_data, steps=steps, random_weights=random_weights, task_model=task_model,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta.to_strings())
    return meta


def read_adapters(path: Path) -> Tuple[AdapterMetadata, Dict[str, Tensor]]:
    """Read an adapter checkpoint and verify its tensors against the stored SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidInputError(f"{path} is not a safetensors adapter file: {str(exc).splitlines()[0]}") from None
    meta = AdapterMetadata.from_strings(raw, path)
    if tensors_digest(state) != meta.sha256:
        raise AdapterMismatchError(f"{path}: adapter tensors do not match their recorded hash (file corrupted?)")
    return meta, state


def load_adapters(
    codec: AdaptedCodec, path: Path, base_fingerprint: bytes, task: Optional[Task] = None
) -> AdapterMetadata:
    """Load the checkpoint at ``path`` into ``codec`` for its task; returns its metadata.

    Raises :class:`AdapterMismatchError` when the checkpoint belongs to another codec,
    quality, task (if ``task`` is given) or base weights, or its tensors do not fit.
    """
    meta, state = read_adapters(path)
    expected = {"codec": codec.spec.name, "quality": codec.quality,
                "base_fingerprint": base_fingerprint.hex()}
    if task is not None:
        expected["task"] = task.value
    for key, want in expected.items():
        have = getattr(meta, key)
        if have != want:
            raise AdapterMismatchError(f"{path} holds adapters for {key} {have!r}, but this codec needs {want!r}")
    try:
        adapter_set = codec.add_adapters(Task.parse(meta.task), meta.config)
        adapter_set.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, IcmhError) as exc:
        raise AdapterMismatchError(f"{path}: adapters do not fit {codec.spec.name} q{codec.quality}: "
                                   f"{str(exc).splitlines()[0]}") from None
    return meta
