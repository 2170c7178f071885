"""Accuracy of task results: COCO AP (pycocotools), top-1 / top-5, PSNR and MS-SSIM; restored images
(:mod:`icmh.evaluation.image_quality`: PSNR, SSIM, MS-SSIM, BRISQUE).

A scorer collects one operating point's results image by image (``add``) and gives its
metrics (``compute``) as a dict of numbers in the units papers report: AP and accuracy
in percent, PSNR in dB, MS-SSIM in [0, 1]. The ground truth is either the set's labels
or, in fidelity mode, the task model's own results on the uncompressed images
(:func:`pseudo_ground_truth`, :meth:`ClassificationScorer.from_reference`).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from icmh.results import TaskResult
from icmh.tasks import Task

from icmh.evaluation.datasets import coco_index
from icmh.evaluation.image_quality import RestorationScorer, ms_ssim_index, psnr

PSEUDO_LABEL_SCORE = 0.5  # fidelity mode: reference detections at or above this score count as objects


class DetectionScorer:
    """COCO box AP/AP50 (and mask AP/AP50 with ``masks``) against a pycocotools ground truth.

    Results are added in the coordinates of the image the model saw and mapped back to
    the ground truth's image size (boxes scaled, masks resized with nearest neighbour).
    """

    def __init__(self, ground_truth: Any, masks: bool = False) -> None:
        self.ground_truth = ground_truth
        self.masks = masks
        self.image_ids: List[int] = []
        self.results: List[Dict[str, Any]] = []

    def add(self, image_id: int, result: TaskResult) -> None:
        """Add the detections of ``image_id`` (``result`` in the model input's pixel coordinates)."""
        info = self.ground_truth.imgs[image_id]
        sx, sy = info["width"] / result.width, info["height"] / result.height
        self.image_ids.append(image_id)
        for detection in result.detections:
            box = detection.box
            entry = {"image_id": image_id, "category_id": detection.label, "score": detection.score,
                     "bbox": [box.x0 * sx, box.y0 * sy, box.width * sx, box.height * sy]}
            if self.masks and detection.mask_rle is not None:
                entry["segmentation"] = resize_rle(detection.mask_rle, info["height"], info["width"])
            self.results.append(entry)

    def compute(self) -> Dict[str, float]:
        """``AP``/``AP50`` (boxes) and, with masks, ``mask_AP``/``mask_AP50``, in percent."""
        metrics = {}
        kinds = [("bbox", "")] + ([("segm", "mask_")] if self.masks else [])
        for iou_type, prefix in kinds:
            ap, ap50 = coco_ap(self.ground_truth, self.results, self.image_ids, iou_type)
            metrics[f"{prefix}AP"], metrics[f"{prefix}AP50"] = ap, ap50
        return metrics


def coco_ap(ground_truth: Any, results: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
            iou_type: str) -> Tuple[float, float]:
    """COCO AP@[.5:.95] and AP@.5 in percent over ``image_ids`` (pycocotools' COCOeval).

    No detection at all scores 0; a ground truth with no object in those images gives NaN.
    """
    usable = [r for r in results if iou_type == "bbox" or "segmentation" in r]
    if not any(ground_truth.getAnnIds(imgIds=list(image_ids), iscrowd=None)):
        return math.nan, math.nan
    if not usable:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its whole table
        detections = ground_truth.loadRes([dict(r) for r in usable])
        evaluator = COCOeval(ground_truth, detections, iou_type)
        evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return _percent(evaluator.stats[0]), _percent(evaluator.stats[1])


def _percent(value: float) -> float:
    return math.nan if value < 0 else 100.0 * float(value)


def resize_rle(rle: Mapping[str, Any], height: int, width: int) -> Dict[str, Any]:
    """A compressed COCO RLE mask resized (nearest neighbour) to ``height``×``width``."""
    if list(rle["size"]) == [height, width]:
        return {"size": [height, width], "counts": rle["counts"]}
    mask = mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})
    resized = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(height, width), mode="nearest")
    encoded = mask_utils.encode(np.asfortranarray(resized[0, 0].to(torch.uint8).numpy()))
    return {"size": [height, width], "counts": encoded["counts"].decode("ascii")}


def pseudo_ground_truth(references: Mapping[int, TaskResult], masks: bool, score: float = PSEUDO_LABEL_SCORE) -> Any:
    """A pycocotools ground truth made of the task model's confident results on uncompressed images.

    ``references`` maps image id → the model's result; detections scoring at least
    ``score`` become objects (box area, or mask area with ``masks``).
    """
    from icmh.taskmodels.coco import category_ids, category_names

    images, annotations = [], []
    for image_id, result in sorted(references.items()):
        images.append({"id": image_id, "width": result.width, "height": result.height})
        for detection in result.detections:
            if detection.score < score or (masks and detection.mask_rle is None):
                continue
            box = detection.box
            entry = {"id": len(annotations) + 1, "image_id": image_id, "category_id": detection.label,
                     "bbox": [box.x0, box.y0, box.width, box.height], "iscrowd": 0,
                     "area": box.width * box.height}
            if masks:
                rle = {"size": detection.mask_rle["size"], "counts": detection.mask_rle["counts"].encode("ascii")}
                entry["segmentation"] = detection.mask_rle
                entry["area"] = float(mask_utils.area(rle))
            annotations.append(entry)
    names = category_names()
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": i, "name": names[i]} for i in category_ids()]}
    return coco_index(dataset)


class ClassificationScorer:
    """Top-1 and top-5 accuracy in percent against class indexes (labels, or the reference's top-1)."""

    def __init__(self, labels: Mapping[int, int]) -> None:
        self.labels = dict(labels)
        self.top1: List[bool] = []
        self.top5: List[bool] = []

    @classmethod
    def from_reference(cls, references: Mapping[int, TaskResult]) -> "ClassificationScorer":
        """Fidelity mode: the label of each image is the model's top-1 on the uncompressed image."""
        return cls({image_id: result.classes[0].index for image_id, result in references.items()})

    def add(self, image_id: int, result: TaskResult) -> None:
        """Add the classes predicted for ``image_id``."""
        predicted = [c.index for c in result.classes]
        label = self.labels[image_id]
        self.top1.append(bool(predicted) and predicted[0] == label)
        self.top5.append(label in predicted[:5])

    def compute(self) -> Dict[str, float]:
        """``top1`` and ``top5`` in percent."""
        count = max(len(self.top1), 1)
        return {"top1": 100.0 * sum(self.top1) / count, "top5": 100.0 * sum(self.top5) / count}


class FidelityScorer:
    """PSNR (dB, of 8-bit images) and MS-SSIM of reconstructions against the originals, averaged over images."""

    def __init__(self) -> None:
        self.psnr: List[float] = []
        self.ms_ssim: List[float] = []

    def add(self, original: Tensor, decoded: Tensor) -> None:
        """Add one image pair (3×H×W floats in [0, 1], same size)."""
        self.psnr.append(psnr(original, decoded))
        self.ms_ssim.append(ms_ssim_index(original, decoded))

    def compute(self) -> Dict[str, float]:
        """``psnr`` (mean dB) and ``ms_ssim`` (mean; NaN for images under 161 pixels a side)."""
        return {"psnr": _mean(self.psnr), "ms_ssim": _mean(self.ms_ssim)}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def make_scorer(task: str, ground_truth: Any = None, labels: Optional[Mapping[int, int]] = None,
                clean: Optional[Mapping[int, Tensor]] = None) -> Any:
    """The scorer of ``task``: COCO ground truth for detection/segmentation, labels for classification,
    the clean images (image id → image) for the restoration tasks."""
    if task in ("detection", "segmentation"):
        return DetectionScorer(ground_truth, masks=task == "segmentation")
    if task == "classification":
        return ClassificationScorer(labels or {})
    if Task.parse(task).is_restoration:
        return RestorationScorer(clean or {})
    return FidelityScorer()
