"""The shipped restoration networks restore held-out images: evaluation photos they were never trained on.

Each network restores the degraded central crops of the Set5 and Set14 photos
(``sr-bench``, an evaluation set; the networks were trained on BSDS500 crops only) and must
beat the degraded input by a clear PSNR margin: the input itself for the same-size tasks,
its bicubic ×2 upsampling for super-resolution (the usual baseline). The margins sit well
below what the networks reach (``docs/restoration.md``), so they only fail for weights
that do not restore.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
import torch
import torch.nn.functional as F

from icmh.evaluation.image_quality import decode_png, psnr
from icmh.images import IMAGE_SUFFIXES, load_image
from icmh.restoration import degrade, restoration_target
from icmh.taskmodels import load_task_model
from icmh.tasks import RESTORATION_TASKS, Task

CROP = 128
MIN_GAIN_DB = {Task.DENOISE: 5.0, Task.DEBLUR: 1.5, Task.SUPER_RESOLUTION: 0.5, Task.LOW_LIGHT: 5.0}


@pytest.fixture(scope="module")
def held_out_crops(data_dir: Path) -> List[torch.Tensor]:
    """The central 128×128 crops of the Set5 and Set14 photos (evaluation images)."""
    files = [p for name in ("set5", "set14") for p in sorted((data_dir / "sr-bench" / name).glob("*"))
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(files) < 10:
        pytest.skip(f"sr-bench Set5/Set14 not found in {data_dir / 'sr-bench'} (set ICMH_DATA_DIR)")
    crops = []
    for path in files:
        image = load_image(path)
        top, left = (image.shape[-2] - CROP) // 2, (image.shape[-1] - CROP) // 2
        crops.append(image[:, top:top + CROP, left:left + CROP])
    return crops


def _baseline(task: Task, degraded: torch.Tensor) -> torch.Tensor:
    if task is not Task.SUPER_RESOLUTION:
        return degraded
    return F.interpolate(degraded[None], scale_factor=2, mode="bicubic", align_corners=False)[0].clamp(0, 1)


@pytest.mark.parametrize("task", RESTORATION_TASKS, ids=lambda t: t.value)
def test_shipped_network_restores_held_out_images_better_than_the_degraded_input(task, held_out_crops):
    model = load_task_model(task)
    degraded = [degrade(task, crop, seed=index) for index, crop in enumerate(held_out_crops)]
    clean = [restoration_target(task, crop) for crop in held_out_crops]
    restored = [decode_png(result.image_png) for result in model.infer(degraded)]
    before = sum(psnr(c, _baseline(task, d)) for c, d in zip(clean, degraded)) / len(clean)
    after = sum(psnr(c, r) for c, r in zip(clean, restored)) / len(clean)
    assert after > before + MIN_GAIN_DB[task], f"{task.value}: {before:.2f} dB degraded, {after:.2f} dB restored"
    wins = sum(psnr(c, r) > psnr(c, _baseline(task, d)) for c, d, r in zip(clean, degraded, restored))
    assert wins >= len(clean) - 1, f"{task.value}: restored better on only {wins} of {len(clean)} crops"
