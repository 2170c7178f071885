"""The shipped codec `mbt2018-mean-small` and its shipped adapters: every quality loads with its
recipe and its adapters for the three machine tasks, and a frame of each quality and task
decodes exactly (the decoder's ŷ equals the encoder's) to a picture of the quality's order.

(The training-image lists of every shipped file are checked in ``test_weights.py``.)
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from icmh.codec.loader import CodecOptions, bundled_adapter_files, open_frame_codec
from icmh.codec.weights import BUNDLED_DIR
from icmh.evaluation.image_quality import psnr
from icmh.images import load_image
from icmh.models.registry import get_codec
from icmh.tasks import Task

CODEC = "mbt2018-mean-small"
MACHINE_TASKS = (Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION)


@pytest.fixture(scope="module")
def photo(kodak_dir):
    return load_image(kodak_dir / "kodim05.png")[:, :192, :256].contiguous()


@pytest.mark.parametrize("quality", sorted(get_codec(CODEC).bundled_weights))
def test_each_quality_loads_with_its_recipe_and_adapters_and_decodes_exactly(quality, photo):
    with safe_open(str(BUNDLED_DIR / f"{CODEC}-{quality}.safetensors"), framework="pt") as handle:
        recipe = handle.metadata()
    assert recipe["codec"] == CODEC and recipe["quality"] == str(quality)
    assert float(recipe["lmbda"]) > 0 and int(recipe["steps"]) > 0 and recipe["crop"] and recipe["train_seconds"]
    assert [p.name for p in bundled_adapter_files(CODEC, quality)] == [
        f"{CODEC}-q{quality}-{task}.safetensors" for task in ("classification", "detection", "segmentation")]

    frame_codec = open_frame_codec(CodecOptions(codec=CODEC, quality=quality), [Task.HUMAN, *MACHINE_TASKS])
    assert set(MACHINE_TASKS) <= set(frame_codec.tasks)
    for task in (Task.HUMAN, *MACHINE_TASKS):
        frame = frame_codec.encode([photo], task, keep_latents=True)[0]
        decoded = frame_codec.decode([frame.data])[0]
        assert decoded.task == task and torch.equal(decoded.y_hat, frame.y_hat), task
        if task is Task.HUMAN:
            assert psnr(photo, decoded.image) > 24 + quality  # 27.8–32.3 dB on Kodak at q1–q5
        else:  # the task's trained adapters made a different bitstream from the base codec's
            assert frame.data != frame_codec.encode([photo], Task.HUMAN)[0].data
