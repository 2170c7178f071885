"""Task feature distortions for adapter training (frozen task models, no labels).

* ``classification``: mean of the MSEs between the ResNet-50 stage outputs
  (``layer1`` … ``layer4``) of ``x`` and ``x̂``, both in ImageNet normalisation.
* ``detection`` / ``segmentation``: ``0.2 · Σ MSE`` over the FPN outputs p2 … p6
  (keys ``'0' '1' '2' '3' 'pool'``) of the frozen Faster R-CNN / Mask R-CNN R50-FPN
  backbone, input in the detector's own normalisation (no resizing).

The task models come from :func:`shared.task_models.load_task_model`: pretrained
weights from the torch hub cache under their real file names (nothing is unpickled; a
missing file raises :class:`~shared.errors.WeightsMissingError`), or seeded random
weights with ``random_weights``, labelled ``RANDOM WEIGHTS``.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.errors import InvalidInputError
from shared.task_models import FASTER_RCNN, MASK_RCNN, RESNET50, TorchvisionModel, load_task_model
from shared.tasks import Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FPN_KEYS = ("0", "1", "2", "3", "pool")
FPN_WEIGHT = 0.2


class TaskDistortion(nn.Module):
    """Base class: a frozen feature extractor and ``forward(x, x_hat) -> scalar``."""

    label: str = ""

    def freeze(self) -> "TaskDistortion":
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> "TaskDistortion":  # the task model always stays in eval mode
        return super().train(False)


class ResNetStageDistortion(TaskDistortion):
    """Mean of the MSEs of ResNet-50 ``layer1`` … ``layer4`` outputs (ImageNet normalisation)."""

    def __init__(self, model: nn.Module, label: str) -> None:
        super().__init__()
        self.model = model
        self.label = label
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.freeze()

    def features(self, x: Tensor) -> list:
        m = self.model
        h = m.maxpool(m.relu(m.bn1(m.conv1((x - self.mean) / self.std))))
        out = []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            h = layer(h)
            out.append(h)
        return out

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.features(x)
        pred = self.features(x_hat)
        return torch.stack([F.mse_loss(p, t) for p, t in zip(pred, target)]).mean()


class FPNDistortion(TaskDistortion):
    """``0.2 · Σ MSE`` over FPN p2 … p6 of a detector backbone (detector normalisation)."""

    def __init__(self, detector: nn.Module, label: str) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.label = label
        self.register_buffer("mean", torch.tensor(detector.transform.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(detector.transform.image_std).view(1, 3, 1, 1))
        self.freeze()

    def features(self, x: Tensor) -> Dict[str, Tensor]:
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.features(x)
        pred = self.features(x_hat)
        return FPN_WEIGHT * sum(F.mse_loss(pred[k], target[k]) for k in FPN_KEYS)


def _distortion(spec: TorchvisionModel, wrap: Callable[[nn.Module, str], "TaskDistortion"]):
    def build(random_weights: bool, seed: int) -> TaskDistortion:
        model, label, _ = load_task_model(spec, random_weights=random_weights, seed=seed)
        return wrap(model, f"{spec.name} {label}")

    return build


DISTORTIONS: Dict[Task, Callable[[bool, int], TaskDistortion]] = {
    Task.CLASSIFICATION: _distortion(RESNET50, ResNetStageDistortion),
    Task.DETECTION: _distortion(FASTER_RCNN, FPNDistortion),
    Task.SEGMENTATION: _distortion(MASK_RCNN, FPNDistortion),
}


def build_distortion(task, random_weights: bool = False, device="cpu", seed: int = 0) -> TaskDistortion:
    """The frozen distortion module of ``task`` (a :class:`Task` or its name) on ``device``.

    Raises :class:`WeightsMissingError` when pretrained weights are asked for and not cached.
    """
    task = Task.parse(task) if isinstance(task, str) else task
    if task not in DISTORTIONS:
        valid = ", ".join(t.value for t in DISTORTIONS)
        raise InvalidInputError(f"no training distortion for task {task.value!r} (valid: {valid})")
    return DISTORTIONS[task](random_weights, seed).to(device)
