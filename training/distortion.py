"""Task feature distortions for adapter training (frozen task models, no labels).

* ``classification``: mean of the MSEs between the ResNet-50 stage outputs
  (``layer1`` … ``layer4``) of ``x`` and ``x̂``, both in ImageNet normalisation.
* ``detection`` / ``segmentation``: ``0.2 · Σ MSE`` over the FPN outputs p2 … p6
  (keys ``'0' '1' '2' '3' 'pool'``) of the frozen Faster R-CNN / Mask R-CNN R50-FPN
  backbone, input in the detector's own normalisation (no resizing).

Pretrained weights are read from the torch hub cache under the file names of
torchvision's weight enums (``$TORCH_HOME/hub/checkpoints/...``) with
:func:`shared.weights.read_state_dict` (nothing is unpickled); a missing file raises
:class:`~shared.errors.WeightsMissingError`. ``random_weights`` builds seeded random
models instead, labelled ``RANDOM WEIGHTS``.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_ResNet50_FPN_Weights,
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_Weights,
    fasterrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from shared.errors import InvalidInputError, WeightsMissingError
from shared.tasks import Task
from shared.weights import hub_checkpoints_dir, read_state_dict

RANDOM_WEIGHTS_LABEL = "RANDOM WEIGHTS"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FPN_KEYS = ("0", "1", "2", "3", "pool")
FPN_WEIGHT = 0.2


def _hub_state_dict(url: str, what: str) -> Tuple[Dict[str, Tensor], str]:
    path = hub_checkpoints_dir() / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise WeightsMissingError(
            f"pretrained weights for {what} are missing: {path.name} is not in {path.parent}; copy the file "
            f"there (or point TORCH_HOME at a folder whose hub/checkpoints holds it), or use --random-weights "
            f"for a smoke run"
        )
    return read_state_dict(path), f"pretrained ({path.name})"


def _load(model: nn.Module, state: Dict[str, Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidInputError(f"weights do not fit {what}: {str(exc).splitlines()[0]}") from None


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


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


def _classification(random_weights: bool, seed: int) -> TaskDistortion:
    weights = ResNet50_Weights.IMAGENET1K_V1
    model = _seeded(seed, lambda: resnet50(weights=None))
    if random_weights:
        return ResNetStageDistortion(model, f"resnet50 ({RANDOM_WEIGHTS_LABEL}, seed {seed})")
    state, source = _hub_state_dict(weights.url, "resnet50 (ResNet50_Weights.IMAGENET1K_V1)")
    _load(model, state, "resnet50")
    return ResNetStageDistortion(model, f"resnet50 {source}")


def _rcnn(builder, model_class, weights, name: str) -> Callable[[bool, int], TaskDistortion]:
    num_classes = len(weights.meta["categories"])

    def build(random_weights: bool, seed: int) -> TaskDistortion:
        if random_weights:
            model = _seeded(seed, lambda: builder(weights=None, weights_backbone=None, num_classes=num_classes))
            return FPNDistortion(model, f"{name} ({RANDOM_WEIGHTS_LABEL}, seed {seed})")
        state, source = _hub_state_dict(weights.url, f"{name} ({type(weights).__name__}.{weights.name})")
        # what torchvision's builder does for COCO_V1: frozen batch norm with eps 0
        backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
        model = model_class(backbone, num_classes=num_classes)
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
        _load(model, state, name)
        return FPNDistortion(model, f"{name} {source}")

    return build


DISTORTIONS: Dict[Task, Callable[[bool, int], TaskDistortion]] = {
    Task.CLASSIFICATION: _classification,
    Task.DETECTION: _rcnn(fasterrcnn_resnet50_fpn, FasterRCNN, FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
                          "fasterrcnn_resnet50_fpn"),
    Task.SEGMENTATION: _rcnn(maskrcnn_resnet50_fpn, MaskRCNN, MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
                             "maskrcnn_resnet50_fpn"),
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
