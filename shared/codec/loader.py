"""Open a ready :class:`FrameCodec` from user-facing options (shared by every CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from icmh.codec.bitstream import DEFAULT_LIMITS, Limits
from icmh.errors import AdapterMismatchError, InvalidInputError
from icmh.codec.frame_codec import FrameCodec
from icmh.tasks import Task
from icmh.codec.weights import load_base_codec, zoo_url
from icmh.hub import cached_path
from icmh.paths import default_data_dir
from icmh.data_splits import training_images
from icmh.models.encoder_paths import EAGER, INT8, calibration_crops
from icmh.models.registry import get_codec

ZOO_CODEC = "mbt2018-mean"  # the paper's base codec, where its CompressAI zoo weights are cached
DEFAULT_CALIBRATION = "bsds500-train"  # int8 calibration photos, where the data folder has them
OWN_CODEC = "mbt2018-mean-small"  # the project's own trained codec (bundled weights)


def default_codec() -> str:
    """:data:`ZOO_CODEC` when its zoo weights (at its default quality) are in the torch hub cache, else
    :data:`OWN_CODEC`, whose weights ship with the package."""
    zoo = get_codec(ZOO_CODEC)
    return ZOO_CODEC if cached_path(zoo_url(zoo, zoo.default_quality)).is_file() else OWN_CODEC


@dataclass
class CodecOptions:
    """Which codec to open and with which weights and adapters."""

    codec: str = field(default_factory=lambda: default_codec())
    quality: Optional[int] = None  # None: the codec's default quality
    codec_weights: Optional[Path] = None
    random_codec: bool = False
    random_adapters: bool = False
    seed: int = 0
    device: str = "cpu"
    adapters: List[Path] = field(default_factory=list)
    limits: Limits = DEFAULT_LIMITS
    bundled_adapters: bool = True  # without ``adapters``: the trained adapters shipped for this codec and quality
    encoder_path: str = EAGER  # how g_a runs when encoding: eager, compiled or int8 (icmh.models.encoder_paths)
    calibration: Optional[str] = None  # int8: training-set name or folder to calibrate on (None: calibration_source)


BUNDLED_ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "adapters"  # icmh/adapters


def bundled_adapter_files(codec: str, quality: int) -> List[Path]:
    """The trained adapter files shipped with the package for ``codec`` at ``quality`` (one per task)."""
    return sorted(BUNDLED_ADAPTERS_DIR.glob(f"{codec}-q{quality}-*.safetensors"))


def check_device(device: str) -> str:
    """Return ``device`` if usable here; raises :class:`InvalidInputError` otherwise."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {device!r} (use cpu or cuda[:N])") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device cuda was asked for, but no CUDA GPU is available here (use --device cpu)")
    return device


def calibration_source(encoder_path: str, requested: Optional[str]) -> Optional[str]:
    """What the int8 encoder calibrates on: ``requested`` (a training-set name or folder), else
    :data:`DEFAULT_CALIBRATION` where the data folder has it, else ``None`` (the synthetic images);
    ``None`` for another path."""
    if encoder_path != INT8:
        return None
    if requested:
        return requested
    return DEFAULT_CALIBRATION if (default_data_dir() / DEFAULT_CALIBRATION).is_dir() else None


def calibration_images(encoder_path: str, requested: Optional[str]) -> List[Tensor]:
    """The int8 encoder's calibration crops (:func:`calibration_source`; evaluation images are
    refused); empty for another path or without a source (:class:`FrameCodec` then uses the
    data-free synthetic images)."""
    source = calibration_source(encoder_path, requested)
    return calibration_crops(training_images([source])) if source else []


def open_frame_codec(options: CodecOptions, tasks: Sequence[Task] = ()) -> FrameCodec:
    """Load the base codec, its adapter files, and make sure every task in ``tasks`` is served.

    Without adapter files, the trained adapters shipped with the package for this codec and
    quality (:func:`bundled_adapter_files`) are loaded, unless the codec is random or comes
    from another weights file, or ``bundled_adapters`` is off.
    A task without an adapter file gets seeded random adapters when ``random_adapters``
    is set; otherwise :class:`AdapterMismatchError` says which flag is missing.
    """
    quality = options.quality or get_codec(options.codec).default_quality
    loaded = load_base_codec(
        options.codec, quality, weights=options.codec_weights,
        random_weights=options.random_codec, seed=options.seed,
    )
    frame_codec = FrameCodec(loaded, device=check_device(options.device), limits=options.limits,
                             encoder_path=options.encoder_path,
                             calibration=calibration_images(options.encoder_path, options.calibration))
    for path in options.adapters:
        frame_codec.load_adapters(path)
    if not options.adapters and options.bundled_adapters and not options.random_codec and options.codec_weights is None:
        for path in bundled_adapter_files(options.codec, quality):
            frame_codec.load_adapters(path)
    for task in tasks:
        if task in frame_codec.tasks:
            continue
        if not options.random_adapters:
            raise AdapterMismatchError(
                f"task {task.value!r} needs adapters for {options.codec} quality {quality}: pass "
                f"--adapters FILE (made by 'icmh train'), or --random-adapters for a smoke run"
            )
        frame_codec.add_random_adapters(task, options.seed)
    if options.random_adapters:  # smoke runs also decode universal frames (base encoder, random heads)
        for task in tasks:
            if task.uses_adapters and task not in frame_codec.consumers:
                frame_codec.add_random_head(task, options.seed)
    frame_codec.check_heads()
    return frame_codec
