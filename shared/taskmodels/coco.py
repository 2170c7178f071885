"""COCO category ids and names, and detector outputs → :class:`~icmh.results.Detection`.

torchvision's COCO detectors predict label ``i`` for entry ``i`` of their
``meta["categories"]`` (91 entries: ``__background__``, the 80 categories at their
COCO category ids 1–90, and ``N/A`` in the 10 unused ids), so a torchvision label *is*
the COCO category id. detectron2 predicts contiguous class indices 0–79 instead, in
increasing category-id order: :func:`contiguous_to_category_id` maps them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from icmh.extras import optional_import
from icmh.results import Box, Detection

UNUSED = ("__background__", "N/A")


@lru_cache(maxsize=1)
def category_names() -> Tuple[str, ...]:
    """The 91 names indexed by COCO category id (``__background__`` at 0, ``N/A`` for unused ids)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


@lru_cache(maxsize=1)
def category_ids() -> Tuple[int, ...]:
    """The 80 COCO category ids in use, increasing (1, 2, …, 90)."""
    return tuple(i for i, name in enumerate(category_names()) if name not in UNUSED)


def is_category(label: int) -> bool:
    """Whether ``label`` is one of the 80 COCO category ids."""
    names = category_names()
    return 0 <= label < len(names) and names[label] not in UNUSED


@lru_cache(maxsize=1)
def contiguous_to_category_id() -> Dict[int, int]:
    """detectron2's contiguous class index (0–79) → COCO category id."""
    return dict(enumerate(category_ids()))


def masks_to_rle(masks: Tensor) -> List[Dict[str, Any]]:
    """Encode N×H×W boolean masks as compressed COCO RLE dicts (``size`` [H, W], ``counts`` text)."""
    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.to(device="cpu", dtype=torch.uint8).permute(1, 2, 0).numpy())
    encoded = optional_import("pycocotools.mask", "server", "masks as COCO RLE").encode(array)
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]


def detections(
    boxes: Tensor, labels: Tensor, scores: Tensor, masks: Optional[Tensor], width: int, height: int,
    label_to_category: Optional[Dict[int, int]] = None,
) -> List[Detection]:
    """:class:`Detection` objects from a detector's raw outputs for one W×H frame.

    ``boxes`` N×4 (x0, y0, x1, y1, pixels of the frame; clamped to it here), ``labels``
    COCO category ids (or model labels mapped through ``label_to_category``), ``masks``
    N×H×W booleans or ``None``. Labels that are no COCO category (``N/A``) are dropped;
    the rest are sorted by descending score.
    """
    names = category_names()
    boxes = boxes.detach().float().cpu().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    label_list = [int(v) for v in labels.cpu()]
    if label_to_category is not None:
        label_list = [label_to_category.get(v, -1) for v in label_list]
    score_list = [float(v) for v in scores.detach().float().cpu()]
    keep = [i for i, label in enumerate(label_list) if is_category(label)]
    keep.sort(key=lambda i: -score_list[i])
    rles = masks_to_rle(masks[keep]) if masks is not None else [None] * len(keep)
    return [
        Detection(Box(*(float(v) for v in boxes[i])), label_list[i], names[label_list[i]], score_list[i], rle)
        for i, rle in zip(keep, rles)
    ]
