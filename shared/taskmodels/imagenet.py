"""ImageNet-1k class names, and classifier logits → top-k :class:`~icmh.results.TaskResult`."""

from __future__ import annotations

from functools import lru_cache
from typing import List, Sequence, Tuple

from torch import Tensor

from ..results import ClassScore, TaskResult
from ..tasks import Task

NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def class_names() -> Tuple[str, ...]:
    """The 1,000 class names in the standard (sorted-wnid) index order of torchvision and caffe."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def top_k_results(logits: Tensor, k: int, sizes: Sequence[Tuple[int, int]]) -> List[TaskResult]:
    """One classification result per row of ``logits`` (N×1000): the top ``k`` classes with their
    softmax probabilities, best first; ``sizes`` are the ``(height, width)`` each result reports."""
    names = class_names()
    top = logits.detach().float().softmax(dim=1).topk(min(k, NUM_CLASSES), dim=1)
    results = []
    for (height, width), scores, indexes in zip(sizes, top.values.cpu(), top.indices.cpu()):
        classes = [ClassScore(int(i), names[int(i)], float(s)) for s, i in zip(scores, indexes)]
        results.append(TaskResult(Task.CLASSIFICATION, width, height, classes=classes))
    return results
