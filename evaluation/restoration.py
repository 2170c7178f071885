"""The low-level (LL-ICM) protocol of ``icmh eval``: degrade, code, restore, score against the clean image.

For a restoration task each clean evaluation image is degraded with the task's
degradation (:func:`icmh.restoration.degrade`, seed :func:`degradation_seed` of the run
seed and the image id, so every method sees the same degraded pixels); the *degraded*
image is what every method codes, the task's restoration network restores each
reconstruction, and the restored image is scored against the clean image
(:func:`icmh.restoration.restoration_target`) with PSNR, SSIM, MS-SSIM and BRISQUE
(:class:`~icmh.evaluation.image_quality.RestorationScorer`). Two reference rows have no
rate: ``uncompressed`` (the restoration of the uncompressed degraded image, the ceiling)
and ``degraded`` (the degraded image itself, not restored; for super-resolution its bicubic
×2 upsampling): what restoration gains.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from icmh.images import load_image
from icmh.restoration import degradation_of, degrade, restoration_target
from icmh.taskmodels import TaskModel
from icmh.tasks import Task

from icmh.evaluation.datasets import EvalImage
from icmh.evaluation.image_quality import RestorationScorer



def degradation_seed(seed: int, image_id: int) -> int:
    """The degradation seed of image ``image_id`` in a run of seed ``seed``."""
    return seed * 1_000_003 + image_id


def degraded_inputs(task: Task, items: Sequence[EvalImage], originals: Sequence[Tensor],
                    seed: int) -> Tuple[List[Tensor], Dict[int, Tensor]]:
    """The degraded image of each clean original (what gets coded) and, by image id, the clean images
    their restorations are scored against."""
    degraded = [degrade(task, image, degradation_seed(seed, item.image_id)) for item, image in zip(items, originals)]
    clean = {item.image_id: restoration_target(task, image) for item, image in zip(items, originals)}
    return degraded, clean


def degraded_scores(task: Task, inputs: Sequence[Tuple[EvalImage, Tensor]],
                    clean: Dict[int, Tensor]) -> Dict[str, float]:
    """The metrics of the degraded images themselves against the clean images (super-resolution: the bicubic
    ×2 upsampling of the low-resolution image)."""
    scorer = RestorationScorer(clean)
    scale = degradation_of(task).scale
    for item, image in inputs:
        if scale > 1:
            image = F.interpolate(image[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 1)
        scorer.add_image(item.image_id, image)
    return scorer.compute()


def degraded_label(task: Task) -> str:
    """What the ``degraded`` row shows."""
    scale = degradation_of(task).scale
    return "the degraded input, not restored" + (f" (bicubic ×{scale} upsampling)" if scale > 1 else "")


def protocol_note(task: Task, seed: int) -> str:
    """The line the outputs carry about the degradation."""
    return (f"{task.value}: every method codes the clean image degraded with {degradation_of(task).describe()} "
            f"(seed {seed}); the {task.value} network restores each reconstruction, scored against the clean image "
            f"(BRISQUE: no reference, lower is better); rate in bits per pixel of the coded (degraded) image")


def restoration_gain(task: Task, model: TaskModel, items: Sequence[EvalImage], seed: int = 0,
                     progress: bool = False) -> Dict[str, Dict[str, float]]:
    """Without any coding: the metrics of the degraded images (``"degraded"``) and of their restorations by
    ``model`` (``"restored"``) against the clean images of ``items`` (the two rows of ``icmh eval`` without rate)."""
    degraded, clean = degraded_inputs(task, items, [load_image(item.path) for item in items], seed)
    restored = RestorationScorer(clean)
    for item, image in tqdm(list(zip(items, degraded)), desc=f"restore {task.value}", unit="img", disable=not progress):
        restored.add(item.image_id, model.infer_prepared([image], task)[0])
    return {"degraded": degraded_scores(task, list(zip(items, degraded)), clean), "restored": restored.compute()}
