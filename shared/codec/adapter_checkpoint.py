"""Adapter checkpoints: one adapter set as safetensors with full metadata.

A file holds one of three roles: a task's adapters (``task``: encoder and decoder), the
shared encoder adapters of universal coding (``shared-encoder``), or a consumer's decoder
head for universal frames (``head``, which records the id of the shared encoder it was
trained on: all zero for the base encoder).

The metadata names the base codec, quality, task, adapter variant, bottleneck ``d``,
initialisation, decoder position, λ, the task model, the training images, step count, the fingerprint of the
base weights the adapters were trained on, and the SHA-256 of the adapter tensors; with the
options of :mod:`icmh.models.importance` also ``importance``/``prompts`` (their tensor groups
``importance.*`` — selector and level CDF — and ``prompts.*`` are in the same file).
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
from icmh.models.adapted import BOTH, DECODER, ENCODER, AdaptedCodec, AdapterConfig, AdapterSet
from icmh.tasks import Task

FORMAT = "icmh-adapters/1"
ROLE_TASK, ROLE_SHARED_ENCODER, ROLE_HEAD = "task", "shared-encoder", "head"
ROLE_SIDES = {ROLE_TASK: BOTH, ROLE_SHARED_ENCODER: ENCODER, ROLE_HEAD: DECODER}


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
    role: str = ROLE_TASK  # task, shared-encoder or head (files before universal coding: task)
    encoder_id: str = ""  # head: hex id of the shared encoder it decodes (zeros: the base encoder)
    importance: bool = False  # tensor group ``importance.*``: the importance-map selector and its level CDF
    prompts: bool = False  # tensor group ``prompts.*``: the decoder-side task prompt

    @property
    def config(self) -> AdapterConfig:
        """The :class:`AdapterConfig` that rebuilds these adapters."""
        return AdapterConfig(self.variant, self.mid_dim, self.init, self.decoder_position, ROLE_SIDES[self.role],
                             importance=self.importance, prompts=self.prompts)

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
                      "random_weights": lambda s: s == "True", "importance": lambda s: s == "True",
                      "prompts": lambda s: s == "True"}
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
        if values.get("role", ROLE_TASK) not in ROLE_SIDES:
            raise AdapterMismatchError(f"{path}: unknown adapter role {values['role']!r}")
        return cls(**values)


def save_adapters(
    path: Path,
    codec: AdaptedCodec,
    task: Optional[Task],
    base_fingerprint: bytes,
    *,
    role: str = ROLE_TASK,
    lmbda: Optional[float] = None,
    training_data: str = "",
    steps: int = 0,
    random_weights: bool = False,
    task_model: str = "",
) -> AdapterMetadata:
    """Write an adapter set of ``codec`` to ``path``; returns the metadata written.

    ``role`` ``task``: the adapters of ``task``; ``head``: the decoder head of consumer
    ``task``; ``shared-encoder``: the shared encoder (``task`` is ``None``).
    """
    adapter_set = _adapter_set(codec, role, task)
    state = {k: v.detach().cpu().contiguous() for k, v in adapter_set.state_dict().items()}
    config = adapter_set.config
    meta = AdapterMetadata(
        codec=codec.spec.name, quality=codec.quality, task=task.value if task else "", variant=config.variant,
        mid_dim=config.mid_dim, init=config.init, decoder_position=config.decoder_position,
        base_fingerprint=base_fingerprint.hex(), sha256=tensors_digest(state), lmbda=lmbda,
        training_data=training_data, steps=steps, random_weights=random_weights, task_model=task_model,
        role=role, encoder_id=codec.universal_hash().hex() if role == ROLE_HEAD else "",
        importance=config.importance, prompts=config.prompts,
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
        if meta.role == ROLE_SHARED_ENCODER:
            adapter_set = codec.add_shared_encoder(meta.config)
        elif meta.role == ROLE_HEAD:
            adapter_set = codec.add_head(Task.parse(meta.task), meta.config)
        else:
            adapter_set = codec.add_adapters(Task.parse(meta.task), meta.config)
        adapter_set.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, IcmhError) as exc:
        raise AdapterMismatchError(f"{path}: adapters do not fit {codec.spec.name} q{codec.quality}: "
                                   f"{str(exc).splitlines()[0]}") from None
    return meta


def _adapter_set(codec: AdaptedCodec, role: str, task: Optional[Task]) -> AdapterSet:
    if role == ROLE_SHARED_ENCODER:
        if codec.shared_encoder is None:
            raise AdapterMismatchError("this codec has no shared encoder adapters to save")
        return codec.shared_encoder
    if task is None:
        raise ValueError(f"role {role!r} needs a task")
    if role == ROLE_HEAD:
        if task.value not in codec.heads:
            raise AdapterMismatchError(f"no decoder head for consumer {task.value!r}")
        return codec.heads[task.value]
    return codec.adapter_set(task)
