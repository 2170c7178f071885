"""Open a ready :class:`FrameCodec` from user-facing options (shared by every CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .bitstream import DEFAULT_LIMITS, Limits
from .errors import AdapterMismatchError, InvalidInputError
from .frame_codec import FrameCodec
from .tasks import Task
from .weights import load_base_codec

DEFAULT_CODEC = "mbt2018-mean"
DEFAULT_QUALITY = 3


@dataclass
class CodecOptions:
    """Which codec to open and with which weights and adapters."""

    codec: str = DEFAULT_CODEC
    quality: int = DEFAULT_QUALITY
    codec_weights: Optional[Path] = None
    random_weights: bool = False
    seed: int = 0
    device: str = "cpu"
    adapters: List[Path] = field(default_factory=list)
    limits: Limits = DEFAULT_LIMITS


def check_device(device: str) -> str:
    """Return ``device`` if usable here; raises :class:`InvalidInputError` otherwise."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {device!r} (use cpu or cuda[:N])") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device cuda was asked for, but no CUDA GPU is available here (use --device cpu)")
    return device


def open_frame_codec(options: CodecOptions, tasks: Sequence[Task] = ()) -> FrameCodec:
    """Load the base codec, its adapter files, and make sure every task in ``tasks`` is served.

    A task without an adapter file gets seeded random adapters when ``random_weights``
    is set; otherwise :class:`AdapterMismatchError` says which flag is missing.
    """
    loaded = load_base_codec(
        options.codec, options.quality, weights=options.codec_weights,
        random_weights=options.random_weights, seed=options.seed,
    )
    frame_codec = FrameCodec(loaded, device=check_device(options.device), limits=options.limits)
    for path in options.adapters:
        frame_codec.load_adapters(path)
    for task in tasks:
        if task in frame_codec.tasks:
            continue
        if not options.random_weights:
            raise AdapterMismatchError(
                f"task {task.value!r} needs adapters for {options.codec} quality {options.quality}: pass "
                f"--adapters FILE (made by 'icmh train'), or --random-weights for a smoke run"
            )
        frame_codec.add_random_adapters(task, options.seed)
    return frame_codec
