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
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
import torchvision.transforms.functional as F
from torchvision.transforms.functional import to_pil_image

from shared.images import to_uint8
from shared.results import ClassScore, TaskResult
from shared.task_models import FASTER_RCNN, MASK_RCNN, RESNET50, TorchvisionModel, load_task_model
from shared.tasks import Task

from . import coco
from .base import BackendOptions, TaskBackend, check_images, register_backend

log = logging.getLogger(__name__)

FAMILY = "torchvision"
MASK_THRESHOLD = 0.5


def detector_kwargs(options: BackendOptions) -> Dict[str, Any]:
    """The detector constructor settings ``options`` ask for (thresholds, sizes, proposals)."""
    kwargs: Dict[str, Any] = {"box_score_thresh": options.score_threshold,
                              "box_detections_per_img": options.max_detections}
    if options.min_size is not None:
        kwargs["min_size"] = options.min_size
    if options.max_size is not None:
        kwargs["max_size"] = options.max_size
    if options.max_proposals is not None:
        kwargs["rpn_post_nms_top_n_test"] = options.max_proposals
    return kwargs


class TorchvisionBackend(TaskBackend):
    """A backend around one torchvision model (see :func:`shared.task_models.load_task_model`)."""

    family = FAMILY

    def __init__(self, task: Task, spec: TorchvisionModel, options: BackendOptions):
        self.task = task.value
        self.spec = spec
        self.name = f"{FAMILY} {spec.name}"
        self.model, self.weights_label, self.pretrained = load_task_model(
            spec, random_weights=options.random_weights, seed=options.seed, device=options.device,
            weights_path=options.weights_path, download=options.download, **self.model_kwargs(options))
        self.device = torch.device(options.device)

    def model_kwargs(self, options: BackendOptions) -> Dict[str, Any]:
        """Constructor settings of the model that ``options`` ask for (none by default)."""
        return {}

    def to(self, device: Union[str, torch.device]) -> "TorchvisionBackend":
        """Move the model to ``device``; returns ``self``."""
        self.model.to(device)
        return super().to(device)


class DetectorBackend(TorchvisionBackend):
    """Faster R-CNN (boxes) or Mask R-CNN (boxes and masks as COCO RLE)."""

    def model_kwargs(self, options: BackendOptions) -> Dict[str, Any]:
        """The detector settings of ``options`` (see :func:`detector_kwargs`)."""
        return detector_kwargs(options)

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
    """ResNet-50 on ImageNet: the top-k classes with their softmax probabilities.

    :meth:`infer` = :meth:`model_input` (the weights' resize and centre crop) then
    :meth:`classify` (normalisation and the network); evaluation codes the model input
    itself and classifies the decoded crop with :meth:`classify`.
    """

    def __init__(self, task: Task, spec: TorchvisionModel, options: BackendOptions):
        super().__init__(task, spec, options)
        transform = spec.weights.transforms()
        self.resize_size, self.crop_size = list(transform.resize_size), list(transform.crop_size)
        self.interpolation, self.antialias = transform.interpolation, transform.antialias
        self.mean, self.std = list(transform.mean), list(transform.std)
        self.categories: List[str] = list(spec.weights.meta["categories"])
        self.top_k = min(options.top_k, len(self.categories))

    def model_input(self, image: Tensor) -> Tensor:
        """``image`` resized (short side 256) and centre-cropped (224×224), still in [0, 1]."""
        resized = F.resize(image, self.resize_size, interpolation=self.interpolation, antialias=self.antialias)
        return F.center_crop(resized, self.crop_size)

    def classify(self, crops: Sequence[Tensor], sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """Top-k classes of images already in the model's input geometry (see :meth:`model_input`).

        ``sizes``: the ``(height, width)`` each result reports (default: the crop's own).
        """
        batch = [crop.to(self.device) for crop in check_images(crops)]
        sizes = list(sizes) if sizes is not None else [tuple(crop.shape[-2:]) for crop in batch]
        if not batch:
            return []
        with torch.inference_mode():
            logits = self.model(F.normalize(torch.stack(batch), self.mean, self.std))
            top = logits.float().softmax(dim=1).topk(self.top_k, dim=1)
        results = []
        for (height, width), scores, indexes in zip(sizes, top.values.cpu(), top.indices.cpu()):
            classes = [ClassScore(int(i), self.categories[int(i)], float(s)) for s, i in zip(scores, indexes)]
            results.append(TaskResult(self.task, width, height, classes=classes))
        return results

    def infer(self, images: Sequence[Tensor]) -> List[TaskResult]:
        """Classify; one result per image with the top-k classes, best first (see :class:`TaskBackend`)."""
        images = check_images(images)
        return self.classify([self.model_input(image) for image in images], [tuple(i.shape[-2:]) for i in images])


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
