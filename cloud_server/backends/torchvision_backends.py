"""The torchvision family: the default backends for every task.

* ``detection``: Faster R-CNN R50-FPN (``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``);
* ``segmentation``: Mask R-CNN R50-FPN (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``),
  masks thresholded at 0.5 and encoded as COCO RLE;
* ``classification``: ResNet-50 (``ResNet50_Weights.IMAGENET1K_V1``) with the weights'
  own preprocessing (resize 256, centre crop 224, ImageNet normalisation), top-k;
* ``human``: the decoded image itself as PNG (Pillow; no model).

Weights come from the torch hub cache under the real file names of torchvision's
weight enums (``$TORCH_HOME/hub/checkpoints/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``
…), downloaded there first when missing and allowed, or from an explicit file; they
are read with ``torch.load(weights_only=True)`` or safetensors (torchvision's own
loader would unpickle). The architecture is the one torchvision's builders make for
those weights (frozen batch norm, ``eps=0`` for COCO_V1). ``random_weights`` builds
with the builders' ``weights=None, weights_backbone=None`` from a fixed seed (plain
batch norm, the same function in eval mode; such state dicts load into either).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, WeightsEnum, resnet50
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_ResNet50_FPN_Weights,
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_Weights,
    fasterrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.transforms.functional import to_pil_image

from shared.errors import InvalidInputError
from shared.images import to_uint8
from shared.results import ClassScore, TaskResult
from shared.tasks import Task
from shared.weights import read_state_dict

from . import coco
from .base import (
    RANDOM_WEIGHTS_LABEL,
    BackendOptions,
    TaskBackend,
    check_images,
    hub_weights_file,
    register_backend,
    seeded,
)

log = logging.getLogger(__name__)

FAMILY = "torchvision"
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class TorchvisionModel:
    """A torchvision architecture and its pretrained weights entry.

    ``build(options, trained)`` returns the untrained model: with ``trained`` the
    architecture torchvision's builder makes for ``weights``, otherwise the builder's
    own ``weights=None`` model.
    """

    name: str
    weights: WeightsEnum
    build: Callable[[BackendOptions, bool], nn.Module]

    @property
    def file_name(self) -> str:
        """The weights' file name in the torch hub cache (the last part of their URL)."""
        return self.weights.url.rsplit("/", 1)[-1]

    @property
    def weights_name(self) -> str:
        """E.g. ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``."""
        return f"{type(self.weights).__name__}.{self.weights.name}"


def _detector_kwargs(options: BackendOptions) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"box_score_thresh": options.score_threshold,
                              "box_detections_per_img": options.max_detections}
    if options.min_size is not None:
        kwargs["min_size"] = options.min_size
    if options.max_size is not None:
        kwargs["max_size"] = options.max_size
    if options.max_proposals is not None:
        kwargs["rpn_post_nms_top_n_test"] = options.max_proposals
    return kwargs


def _rcnn(
    builder: Callable[..., nn.Module], model_class: type, weights: WeightsEnum,
) -> Callable[[BackendOptions, bool], nn.Module]:
    """A build function for an R50-FPN detector (``builder`` its torchvision builder)."""
    num_classes = len(weights.meta["categories"])

    def build(options: BackendOptions, trained: bool) -> nn.Module:
        kwargs = _detector_kwargs(options)
        if not trained:
            return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        # what the builder does with weights=COCO_V1, without its (unpickling) loader
        backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
        model = model_class(backbone, num_classes=num_classes, **kwargs)
        overwrite_eps(model, 0.0)
        return model

    return build


FASTER_RCNN = TorchvisionModel(
    "fasterrcnn_resnet50_fpn", FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    _rcnn(fasterrcnn_resnet50_fpn, FasterRCNN, FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
)
MASK_RCNN = TorchvisionModel(
    "maskrcnn_resnet50_fpn", MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    _rcnn(maskrcnn_resnet50_fpn, MaskRCNN, MaskRCNN_ResNet50_FPN_Weights.COCO_V1),
)
RESNET50 = TorchvisionModel(
    "resnet50", ResNet50_Weights.IMAGENET1K_V1, lambda options, trained: resnet50(weights=None),
)


def pretrained_state_dict(spec: TorchvisionModel, options: BackendOptions) -> Tuple[Dict[str, Tensor], str]:
    """The state dict to load for ``spec`` and a label saying where it came from.

    ``options.weights_path`` if given, else the torch hub cache (see
    :func:`~cloud_server.backends.base.hub_weights_file`). Raises
    :class:`~shared.errors.WeightsMissingError` or :class:`InvalidInputError` (unreadable file).
    """
    if options.weights_path is not None:
        return read_state_dict(options.weights_path), f"weights from {options.weights_path}"
    match = torch.hub.HASH_REGEX.search(spec.file_name)
    path = hub_weights_file(spec.weights.url, what=f"{spec.name} ({spec.weights_name})", download=options.download,
                            hash_prefix=match.group(1) if match else None)
    return read_state_dict(path), f"{FAMILY} {spec.weights.name} pretrained ({spec.file_name})"


def load_model(spec: TorchvisionModel, options: BackendOptions) -> Tuple[nn.Module, str, bool]:
    """Build ``spec``'s model with the weights ``options`` ask for, in eval mode on ``options.device``.

    Returns ``(model, weights label, pretrained)``. Raises :class:`WeightsMissingError`
    or :class:`InvalidInputError` (unreadable weights, or weights of another architecture).
    """
    if options.random_weights:
        model = seeded(options.seed, lambda: spec.build(options, False))
        label, pretrained = f"{RANDOM_WEIGHTS_LABEL} (seed {options.seed})", False
        log.warning("!!! RANDOM WEIGHTS: %s %s runs with seeded random weights; its results are NOT those "
                    "of a trained model !!!", FAMILY, spec.name)
    else:
        state, label = pretrained_state_dict(spec, options)
        model = seeded(options.seed, lambda: spec.build(options, True))
        _load_strictly(model, state, f"weights ({label}) do not fit {spec.name}")
        pretrained = True
    model.eval().requires_grad_(False)
    return model.to(options.device), label, pretrained


def _load_strictly(model: nn.Module, state: Dict[str, Tensor], what: str) -> None:
    """``model.load_state_dict(state)``; raises :class:`InvalidInputError` saying ``what`` and the first misfit."""
    try:
        incompatible = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise InvalidInputError(f"{what}: {lines[-1][:200]}") from None
    misfits = [(len(keys), keys[0], kind) for keys, kind in
               ((incompatible.missing_keys, "missing"), (incompatible.unexpected_keys, "unexpected")) if keys]
    if misfits:
        detail = "; ".join(f"{count} {kind} keys (e.g. {key})" for count, key, kind in misfits)
        raise InvalidInputError(f"{what}: {detail}")


class TorchvisionBackend(TaskBackend):
    """A backend around one torchvision model (see :func:`load_model`)."""

    family = FAMILY

    def __init__(self, task: Task, spec: TorchvisionModel, options: BackendOptions):
        self.task = task.value
        self.spec = spec
        self.name = f"{FAMILY} {spec.name}"
        self.model, self.weights_label, self.pretrained = load_model(spec, options)
        self.device = torch.device(options.device)

    def to(self, device: Union[str, torch.device]) -> "TorchvisionBackend":
        """Move the model to ``device``; returns ``self``."""
        self.model.to(device)
        return super().to(device)


class DetectorBackend(TorchvisionBackend):
    """Faster R-CNN (boxes) or Mask R-CNN (boxes and masks as COCO RLE)."""

    def infer(self, images: Sequence[Tensor]) -> List[TaskResult]:
        """Detect objects; one result per image, detections by descending score (see :class:`TaskBackend`)."""
        batch = [image.to(self.device) for image in check_images(images)]
        if not batch:
            return []
        with torch.inference_mode():
            outputs = self.model(batch)
        results = []
        for image, output in zip(batch, outputs):
            height, width = image.shape[-2:]
            masks = output["masks"][:, 0] > MASK_THRESHOLD if "masks" in output else None
            found = coco.detections(output["boxes"], output["labels"], output["scores"], masks, width, height)
            results.append(TaskResult(self.task, width, height, detections=found))
        return results


class ClassifierBackend(TorchvisionBackend):
    """ResNet-50 on ImageNet: the top-k classes with their softmax probabilities."""

    def __init__(self, task: Task, spec: TorchvisionModel, options: BackendOptions):
        super().__init__(task, spec, options)
        self.preprocess = spec.weights.transforms()
        self.categories: List[str] = list(spec.weights.meta["categories"])
        self.top_k = min(options.top_k, len(self.categories))

    def infer(self, images: Sequence[Tensor]) -> List[TaskResult]:
        """Classify; one result per image with the top-k classes, best first (see :class:`TaskBackend`)."""
        batch = [image.to(self.device) for image in check_images(images)]
        if not batch:
            return []
        with torch.inference_mode():
            logits = self.model(torch.stack([self.preprocess(image) for image in batch]))
            top = logits.float().softmax(dim=1).topk(self.top_k, dim=1)
        results = []
        for image, scores, indexes in zip(batch, top.values.cpu(), top.indices.cpu()):
            classes = [ClassScore(int(i), self.categories[int(i)], float(s)) for s, i in zip(scores, indexes)]
            results.append(TaskResult(self.task, image.shape[-1], image.shape[-2], classes=classes))
        return results


class PngBackend(TaskBackend):
    """``human``: the decoded image itself, as a PNG (8 bits per channel, rounded)."""

    family = FAMILY
    name = "png"
    weights_label = "no model"
    pretrained = False

    def __init__(self, options: BackendOptions):
        self.task = Task.HUMAN.value
        self.device = torch.device(options.device)

    def infer(self, images: Sequence[Tensor]) -> List[TaskResult]:
        """One PNG per image (see :class:`TaskBackend`)."""
        results = []
        for image in check_images(images):
            buffer = io.BytesIO()
            to_pil_image(to_uint8(image)).save(buffer, format="PNG")
            results.append(TaskResult(self.task, image.shape[-1], image.shape[-2], image_png=buffer.getvalue()))
        return results


@register_backend(FAMILY, Task.DETECTION)
def detection_backend(options: BackendOptions) -> TaskBackend:
    """Faster R-CNN R50-FPN, COCO_V1."""
    return DetectorBackend(Task.DETECTION, FASTER_RCNN, options)


@register_backend(FAMILY, Task.SEGMENTATION)
def segmentation_backend(options: BackendOptions) -> TaskBackend:
    """Mask R-CNN R50-FPN, COCO_V1."""
    return DetectorBackend(Task.SEGMENTATION, MASK_RCNN, options)


@register_backend(FAMILY, Task.CLASSIFICATION)
def classification_backend(options: BackendOptions) -> TaskBackend:
    """ResNet-50, IMAGENET1K_V1."""
    return ClassifierBackend(Task.CLASSIFICATION, RESNET50, options)


@register_backend(FAMILY, Task.HUMAN)
def human_backend(options: BackendOptions) -> TaskBackend:
    """The decoded image as PNG."""
    return PngBackend(options)
