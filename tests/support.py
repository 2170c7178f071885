"""Helpers the tests share (imported as ``support``; fixtures stay in ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from icmh.codec.adapter_checkpoint import save_adapters
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.weights import load_base_codec
from icmh.models.adapted import AdapterConfig
from icmh.tasks import Task


def identity_adapter_files(folder: Path, codec: str, quality: int, tasks: Sequence[Task]) -> List[Path]:
    """Adapter files whose up-projections are zero: the adapted codec is exactly the base codec.

    With a trained base codec and the real task models they give real results without
    trained adapters (the adapters' own effect is tested elsewhere).
    """
    frame_codec = FrameCodec(load_base_codec(codec, quality))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for task in tasks:
        frame_codec.codec.add_adapters(task, AdapterConfig(init="zero"))
        path = folder / f"{task.value}-{codec}-q{quality}.safetensors"
        save_adapters(path, frame_codec.codec, task, frame_codec.loaded.fingerprint)
        files.append(path)
    return files
