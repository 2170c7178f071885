"""The common shape of an ImageNet classifier entry: geometry, normalisation, logits, top-k.

A subclass says how the image is cut to the network's input (:meth:`model_input`: resize
and/or centre crop, still RGB in [0, 1]), how that input is normalised
(:meth:`normalize`), how the network's outputs become 1,000 ImageNet logits
(:meth:`logits`) and which stages are its training features (:meth:`features`).
Inference batches all images of a call: every input has the same fixed size, so a batch
gives exactly the results of single images.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..results import TaskResult
from ..tasks import Task
from .base import TaskModel, check_images, output_sizes
from .imagenet import top_k_results


class ImageClassifier(TaskModel):
    """An ImageNet classifier around ``network``; see the module docstring."""

    tasks = (Task.CLASSIFICATION,)

    def __init__(self, network: nn.Module, *, name: str, weights_label: str, pretrained: bool, top_k: int = 5) -> None:
        super().__init__()
        self.network = network
        self.name = name
        self.weights_label = weights_label
        self.pretrained = pretrained
        self.top_k = top_k

    @abstractmethod
    def model_input(self, image: Tensor) -> Tensor:
        """The network's input geometry of ``image`` (3×h×w RGB in [0, 1])."""

    @abstractmethod
    def normalize(self, x: Tensor) -> Tensor:
        """``x`` (N×3×h×w RGB in [0, 1]) as the network expects it (colour order, scale, mean)."""

    def logits(self, x: Tensor) -> Tensor:
        """N×1000 ImageNet logits of model inputs ``x`` (RGB in [0, 1])."""
        return self.network(self.normalize(x))

    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """Top-k classes of each model input, as one batch (see :meth:`TaskModel.infer_prepared`)."""
        self.check_task(task)
        inputs = check_images(inputs)
        if not inputs:
            return []
        reported = output_sizes(inputs, sizes)
        batch = torch.stack([image.to(self.device) for image in inputs])
        with torch.inference_mode():
            return top_k_results(self.logits(batch), self.top_k, reported)
