"""The paper's task models from torchvision: Faster / Mask R-CNN R50-FPN (COCO) and ResNet-50.

Weights come from the torch hub cache under the real file names of torchvision's weight
enums (``$TORCH_HOME/hub/checkpoints/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`` …),
downloaded there when missing and allowed, or from ``ModelOptions.weights_path``; they
are read with ``torch.load(weights_only=True)`` (torchvision's own loader would unpickle).
The architecture is the one torchvision's builders make for those weights (frozen batch
norm, ``eps=0`` for COCO_V1); random weights use the builders' ``weights=None`` model.

Features for ``icmh train`` (the paper's distortions): the FPN outputs p2…p6 of the
detectors' backbone in their own normalisation (mean of the five MSEs = 0.2·Σ), and the
ResNet-50 stage outputs ``layer1``…``layer4`` in ImageNet normalisation (mean of four).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms.functional as TF
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
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FrozenBatchNorm2d

from ..errors import InvalidInputError
from ..hub import hub_state_dict, read_state_dict
from ..results import TaskResult
from ..seeding import seeded
from ..tasks import Task
from . import coco
from .base import ModelOptions, TaskModel, TaskModelSpec, check_images, output_sizes, register_task_model, weights_label
from .classifier import ImageClassifier

MASK_THRESHOLD = 0.5
PAPER_SHORT_SIDE, PAPER_LONG_SIDE = 800, 1333  # METHOD.md: COCO evaluation resizing
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
FPN_LEVELS = ("0", "1", "2", "3", "pool")  # torchvision's names of p2 … p6


@dataclass(frozen=True)
class TorchvisionWeights:
    """A torchvision architecture and its pretrained weights entry.

    ``build(trained, **kwargs)`` returns the untrained model: with ``trained`` the
    architecture torchvision's builder makes for ``weights``, otherwise the builder's own
    ``weights=None`` model. ``kwargs`` go to the model's constructor (detector settings).
    """

    name: str
    weights: WeightsEnum
    build: Callable[..., nn.Module]

    @property
    def file_name(self) -> str:
        """The weights' file name in the torch hub cache (the last part of their URL)."""
        return self.weights.url.rsplit("/", 1)[-1]

    @property
    def weights_name(self) -> str:
        """E.g. ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``."""
        return f"{type(self.weights).__name__}.{self.weights.name}"


def _rcnn(builder: Callable[..., nn.Module], model_class: type, weights: WeightsEnum) -> Callable[..., nn.Module]:
    """A build function for an R50-FPN detector (``builder`` its torchvision builder)."""
    num_classes = len(weights.meta["categories"])

    def build(trained: bool, **kwargs: Any) -> nn.Module:
        if not trained:
            return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        # what the builder does with weights=COCO_V1, without its (unpickling) loader
        backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
        model = model_class(backbone, num_classes=num_classes, **kwargs)
        overwrite_eps(model, 0.0)
        return model

    return build


FASTER_RCNN = TorchvisionWeights(
    "fasterrcnn_resnet50_fpn", FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    _rcnn(fasterrcnn_resnet50_fpn, FasterRCNN, FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
)
MASK_RCNN = TorchvisionWeights(
    "maskrcnn_resnet50_fpn", MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    _rcnn(maskrcnn_resnet50_fpn, MaskRCNN, MaskRCNN_ResNet50_FPN_Weights.COCO_V1),
)
RESNET50 = TorchvisionWeights(
    "resnet50", ResNet50_Weights.IMAGENET1K_V1, lambda trained, **kwargs: resnet50(weights=None, **kwargs),
)


def build_torchvision(spec: TorchvisionWeights, options: ModelOptions, **model_kwargs: Any) -> Tuple[nn.Module, str]:
    """``spec``'s model with pretrained (or seeded random) weights; returns ``(model, weights label)``.

    Pretrained weights from ``options.weights_path`` or the hub cache. Raises
    :class:`~icmh.errors.WeightsMissingError` or :class:`InvalidInputError` (unreadable
    weights, or weights of another architecture).
    """
    if options.random_weights:
        model = seeded(options.seed, lambda: spec.build(False, **model_kwargs))
        return model, weights_label(spec.name, options, "")
    if options.weights_path is not None:
        state, label = read_state_dict(options.weights_path), f"weights from {options.weights_path}"
    else:
        state = hub_state_dict(spec.weights.url, what=f"{spec.name} ({spec.weights_name})", download=options.download,
                               alternative="choose a model whose files are present (--model), or use "
                                           "--random-weights for a smoke run")
        label = f"torchvision {spec.weights.name} pretrained ({spec.file_name})"
    model = seeded(options.seed, lambda: spec.build(True, **model_kwargs))
    load_strictly(model, state, f"weights ({label}) do not fit {spec.name}")
    return model, label


def load_strictly(model: nn.Module, state: Dict[str, Tensor], what: str) -> None:
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


def resize_short_side(image: Tensor, short: int, longest: int) -> Tensor:
    """``image`` scaled so its short side is ``short`` and its long side at most ``longest`` (bilinear)."""
    height, width = image.shape[-2:]
    scale = min(short / min(height, width), longest / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    if size == [height, width]:
        return image
    return TF.resize(image, size, antialias=True).clamp_(0, 1)


class RCNNDetector(TaskModel):
    """Faster R-CNN (boxes) or Mask R-CNN (boxes, and masks as COCO RLE for segmentation).

    The model resizes its input itself (short side ``min_size``); :meth:`model_input` gives
    the paper's evaluation geometry (short side 800, long side ≤ 1333). Images run one at a
    time, since batching pads them and changes the outputs.
    """

    def __init__(self, spec: TorchvisionWeights, tasks: Tuple[Task, ...], options: ModelOptions) -> None:
        super().__init__()
        kwargs: Dict[str, Any] = {"box_score_thresh": options.score_threshold,
                                  "box_detections_per_img": options.max_detections}
        kwargs.update({key: value for key, value in (("min_size", options.min_size), ("max_size", options.max_size),
                                                     ("rpn_post_nms_top_n_test", options.max_proposals))
                       if value is not None})
        self.detector, self.weights_label = build_torchvision(spec, options, **kwargs)
        self.name, self.tasks, self.pretrained = spec.name, tasks, not options.random_weights
        self.short_side = options.min_size or PAPER_SHORT_SIDE
        self.long_side = options.max_size or PAPER_LONG_SIDE
        self.feature_names = tuple(f"fpn p{level}" for level in range(2, 7))
        transform = self.detector.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1), persistent=False)

    def model_input(self, image: Tensor) -> Tensor:
        """The paper's geometry: short side 800 (or ``min_size``), long side at most 1333."""
        return resize_short_side(image, self.short_side, self.long_side)

    def infer(self, images: Sequence[Tensor], task: Optional[Task] = None,
              sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """As :meth:`TaskModel.infer`, without resizing first: the detector resizes its input itself and maps
        its outputs back, so the results are exactly the model's own."""
        return self.infer_prepared(images, task, sizes)

    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """Detect objects in each input (see :meth:`TaskModel.infer_prepared`)."""
        task = self.check_task(task)
        inputs = check_images(inputs)
        results = []
        for image, (height, width) in zip(inputs, output_sizes(inputs, sizes)):
            with torch.inference_mode():
                output = self.detector([image.to(self.device)])[0]
            sy, sx = height / image.shape[-2], width / image.shape[-1]
            boxes = output["boxes"] * torch.tensor([sx, sy, sx, sy], device=output["boxes"].device)
            masks = None
            if task is Task.SEGMENTATION and "masks" in output:
                resized = nn.functional.interpolate(output["masks"], size=(height, width), mode="bilinear",
                                                    align_corners=False)
                masks = resized[:, 0] > MASK_THRESHOLD
            found = coco.detections(boxes, output["labels"], output["scores"], masks, width, height)
            results.append(TaskResult(task, width, height, detections=found))
        return results

    def features(self, x: Tensor) -> List[Tensor]:
        """FPN p2…p6 of the backbone on ``x`` in the detector's normalisation (no resizing)."""
        levels = self.detector.backbone((x - self.mean) / self.std)
        return [levels[key] for key in FPN_LEVELS]


class ResNetClassifier(ImageClassifier):
    """ResNet-50 with its weights' preprocessing (resize 256, centre crop 224, ImageNet normalisation)."""

    def __init__(self, options: ModelOptions) -> None:
        network, label = build_torchvision(RESNET50, options)
        super().__init__(network, name=RESNET50.name, weights_label=label, pretrained=not options.random_weights,
                         top_k=options.top_k)
        transform = RESNET50.weights.transforms()
        self.resize_size, self.crop_size = list(transform.resize_size), list(transform.crop_size)
        self.interpolation, self.antialias = transform.interpolation, transform.antialias
        self.register_buffer("mean", torch.tensor(transform.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.std).view(1, 3, 1, 1), persistent=False)
        self.feature_names = RESNET_STAGES
        self.stages = create_feature_extractor(network, return_nodes=list(RESNET_STAGES))

    def model_input(self, image: Tensor) -> Tensor:
        """``image`` resized (short side 256) and centre-cropped (224×224), still in [0, 1]."""
        resized = TF.resize(image, self.resize_size, interpolation=self.interpolation, antialias=self.antialias)
        return TF.center_crop(resized, self.crop_size)

    def normalize(self, x: Tensor) -> Tensor:
        """ImageNet mean and standard deviation."""
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> List[Tensor]:
        """The outputs of ``layer1`` … ``layer4``."""
        stages = self.stages(self.normalize(x))
        return [stages[name] for name in RESNET_STAGES]


register_task_model(TaskModelSpec(
    name=FASTER_RCNN.name, tasks=(Task.DETECTION,), family="torchvision",
    build=lambda options: RCNNDetector(FASTER_RCNN, (Task.DETECTION,), options),
    description="Faster R-CNN R50-FPN, COCO_V1 (torchvision; the paper's detector)",
))
register_task_model(TaskModelSpec(
    name=MASK_RCNN.name, tasks=(Task.SEGMENTATION, Task.DETECTION), family="torchvision",
    build=lambda options: RCNNDetector(MASK_RCNN, (Task.SEGMENTATION, Task.DETECTION), options),
    description="Mask R-CNN R50-FPN, COCO_V1 (torchvision; the paper's instance segmenter)",
))
register_task_model(TaskModelSpec(
    name=RESNET50.name, tasks=(Task.CLASSIFICATION,), family="torchvision", build=ResNetClassifier,
    description="ResNet-50, IMAGENET1K_V1 (torchvision; the paper's classifier)",
))
