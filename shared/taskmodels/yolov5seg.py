"""YOLOv5n-seg: COCO instance segmentation and detection from its ncnn files, run in PyTorch.

The files (``../shared/models/coco-segmentation-yolov5n-seg``: Ultralytics YOLOv5 v7.0
weights, GPL-3.0, converted to ncnn with fp16 weights) are read with their SHA-256
checked and executed by :mod:`~icmh.taskmodels.ncnn` as a differentiable graph (same
outputs as the ``ncnn`` package to ~2e-5).

* Input: RGB in [0, 1] (ncnn's ``1/255`` of 0–255 pixels). :meth:`YoloV5Seg.model_input`
  scales the long side to 640; inference letterboxes that onto a 640×640 canvas (grey
  114, centred), so every image of a call runs in one exact batch.
* Heads (blobs ``output``, ``385``, ``405``; strides 8/16/32): ``N×3×cells×117`` raw
  logits per anchor (box 4, objectness 1, classes 80, mask coefficients 32). ``xy =
  (2σ − 0.5 + cell)·stride``, ``wh = (2σ)²·anchor``, score = objectness · class (every
  class above the threshold, as Ultralytics' evaluation), class-wise NMS.
* Masks: ``σ(coefficients @ seg)`` on the prototype grid (stride 4, blob ``seg``, 32
  prototypes), resized to the caller's size without the padding, zeroed outside the
  box, thresholded at 0.5.
* Training features: the three neck outputs that feed the head convolutions.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ..errors import InvalidInputError
from ..results import TaskResult
from ..tasks import Task
from . import coco
from .base import (
    ModelOptions,
    TaskModel,
    TaskModelSpec,
    check_images,
    output_sizes,
    randomize,
    register_task_model,
    weights_label,
)
from .files import ModelFile, read_verified
from .geometry import Letterbox, fit_long_side, letterbox
from .ncnn import NcnnNet, load_ncnn

NAME = "yolov5n-seg"
PARAM = ModelFile("coco-segmentation-yolov5n-seg/yolov5n-seg.param",
                  "d9c723bdf8fc2260d241a20304395a3b8be392f5cfb0f394cf790c5646131a7a")
BIN = ModelFile("coco-segmentation-yolov5n-seg/yolov5n-seg.bin",
                "d22742c5a7c02e967dcaa979fba5c71b0836c13659c65eb2867cd0bd8c91423b")

INPUT_SIZE = 640  # long side, and the square canvas
HEAD_BLOBS = ("output", "385", "405")
PROTO_BLOB = "seg"
HEAD_CONVS = ("Conv_209", "Conv_225", "Conv_241")  # their inputs are the training features (P3, P4, P5)
STRIDES = (8, 16, 32)
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
NUM_CLASSES = 80
BOX, OBJ, CLS, COEF = slice(0, 4), 4, slice(5, 5 + NUM_CLASSES), slice(5 + NUM_CLASSES, None)
PROTO_STRIDE = 4
PROTO_GRID = (INPUT_SIZE // PROTO_STRIDE, INPUT_SIZE // PROTO_STRIDE)  # the prototypes' height and width
NMS_IOU = 0.6  # Ultralytics' COCO evaluation setting
MAX_CANDIDATES = 30000  # boxes that enter NMS at most (the highest scores)
MASK_CHUNK = 32  # detections whose masks are resized at once (bounds memory at large sizes)
MASK_THRESHOLD = 0.5


class YoloV5Seg(TaskModel):
    """YOLOv5n-seg around an :class:`~icmh.taskmodels.ncnn.NcnnNet`; see the module docstring."""

    name = NAME
    tasks = (Task.SEGMENTATION, Task.DETECTION)

    def __init__(self, network: NcnnNet, *, weights_label: str, pretrained: bool, score_threshold: float = 0.25,
                 max_detections: int = 100) -> None:
        super().__init__()
        self.network = network
        self.weights_label = weights_label
        self.pretrained = pretrained
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.feature_names = tuple(network.spec(conv).inputs[0] for conv in HEAD_CONVS)
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32).view(len(STRIDES), 1, -1, 1, 2),
                             persistent=False)

    def model_input(self, image: Tensor) -> Tensor:
        """``image`` scaled so that its long side is 640 (RGB in [0, 1])."""
        return fit_long_side(image, INPUT_SIZE)

    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """Detections (with masks for segmentation) of each model input, as one batch of 640×640 canvases;
        see :meth:`TaskModel.infer_prepared`. Raises :class:`InvalidInputError` for a task it does not do
        or inputs that are not 3×H×W float images."""
        task = self.check_task(task)
        inputs = check_images(inputs)
        if not inputs:
            return []
        reported = output_sizes(inputs, sizes)
        segment = task is Task.SEGMENTATION  # detection skips the prototype branch
        with torch.inference_mode():
            boxed = [letterbox(image.to(self.device), (INPUT_SIZE, INPUT_SIZE), center=True) for image in inputs]
            blobs = self.network(channels_last(torch.stack([canvas for canvas, _ in boxed])),
                                 outputs=HEAD_BLOBS + ((PROTO_BLOB,) if segment else ()))
            predictions = decode_heads([blobs[b] for b in HEAD_BLOBS], self.anchors, (INPUT_SIZE, INPUT_SIZE))
            protos = blobs[PROTO_BLOB].unflatten(-1, PROTO_GRID) if segment else [None] * len(inputs)
            return [self._result(prediction, proto, box, size, task)
                    for prediction, proto, (_, box), size in zip(predictions, protos, boxed, reported)]

    def _result(self, prediction: Tensor, proto: Optional[Tensor], box: Letterbox, size: Tuple[int, int],
                task: Task) -> TaskResult:
        """The :class:`TaskResult` of one image from its decoded rows; masks when ``proto`` is given."""
        boxes, scores, labels, coefficients = select(prediction, self.score_threshold, self.max_detections)
        boxes = box.boxes_to(boxes, size)
        masks = None if proto is None else decode_masks(coefficients, proto, boxes, box, size)
        detections = coco.detections(boxes, labels, scores, masks, size[1], size[0],
                                     label_to_category=coco.contiguous_to_category_id())
        return TaskResult(task, size[1], size[0], detections=detections)

    def features(self, x: Tensor) -> List[Tensor]:
        """The P3, P4 and P5 neck outputs (strides 8, 16, 32; 64, 128 and 256 channels) of ``x`` (N×3×H×W,
        RGB in [0, 1], H and W multiples of 32), differentiable; raises :class:`InvalidInputError` otherwise."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2] % 32 or x.shape[-1] % 32:
            raise InvalidInputError(f"{self.name} features need N×3×H×W with H and W multiples of 32, got "
                                    f"{tuple(x.shape)}")
        blobs = self.network(channels_last(x), outputs=self.feature_names)
        return [blobs[name] for name in self.feature_names]


def channels_last(x: Tensor) -> Tensor:
    """``x`` (N×C×H×W) in channels-last memory: the same values, about twice as fast through the
    convolutions on CPU."""
    return x.contiguous(memory_format=torch.channels_last)


def decode_heads(heads: Sequence[Tensor], anchors: Tensor, canvas: Tuple[int, int]) -> Tensor:
    """The rows of all anchors and cells of the three heads (``N×3×cells×117`` logits each) for a
    ``canvas`` (height, width): ``N×rows×117`` with x0, y0, x1, y1 in canvas pixels, σ(objectness),
    σ(classes) and the raw mask coefficients."""
    rows = []
    for head, stride, level_anchors in zip(heads, STRIDES, anchors):
        height, width = canvas[0] // stride, canvas[1] // stride
        ys, xs = torch.meshgrid(torch.arange(height, device=head.device), torch.arange(width, device=head.device),
                                indexing="ij")
        cells = torch.stack((xs, ys), dim=-1).view(1, 1, height * width, 2).to(head.dtype)
        sigmoid = head[..., :COEF.start].sigmoid()
        centre = (sigmoid[..., 0:2] * 2 - 0.5 + cells) * stride
        size = (sigmoid[..., 2:4] * 2) ** 2 * level_anchors
        rows.append(torch.cat((centre - size / 2, centre + size / 2, sigmoid[..., OBJ:COEF.start], head[..., COEF]),
                              dim=-1).flatten(1, 2))
    return torch.cat(rows, dim=1)


def select(rows: Tensor, score_threshold: float, max_detections: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image's detections from its decoded rows (``rows×117``): every (row, class) whose
    objectness·class score exceeds ``score_threshold``, class-wise NMS (IoU 0.6), the best
    ``max_detections``. Returns boxes (K×4, canvas pixels), scores, class indexes (0–79) and
    mask coefficients (K×32), best first."""
    rows = rows[rows[:, OBJ] > score_threshold]
    scores = rows[:, CLS] * rows[:, OBJ:OBJ + 1]
    index, label = (scores > score_threshold).nonzero(as_tuple=True)
    score = scores[index, label]
    if score.numel() > MAX_CANDIDATES:
        score, top = score.topk(MAX_CANDIDATES)
        index, label = index[top], label[top]
    boxes = rows[index, BOX]
    keep = batched_nms(boxes, score, label, NMS_IOU)[:max_detections]
    return boxes[keep], score[keep], label[keep], rows[index[keep], COEF]


def decode_masks(coefficients: Tensor, proto: Tensor, boxes: Tensor, box: Letterbox, size: Tuple[int, int]) -> Tensor:
    """Boolean masks (K×H×W for ``size``) of K detections: ``σ(coefficients @ proto)`` on the prototype
    grid (``proto`` 32×h×w over the canvas), mapped to ``size`` without the letterbox padding, zeroed
    outside each box (``boxes``: K×4 in the pixels of ``size``) and thresholded at 0.5.

    Cropping after the resize keeps the box edges sharp (mask AP +0.5 on coco-mini over cropping
    on the prototype grid first)."""
    if coefficients.shape[0] == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=proto.device)
    soft = torch.einsum("kc,chw->khw", coefficients, proto).sigmoid()
    return torch.cat([(box.masks_to(chunk, size) > MASK_THRESHOLD) & box_interiors(chunk_boxes, size)
                      for chunk, chunk_boxes in zip(soft.split(MASK_CHUNK), boxes.split(MASK_CHUNK))])


def box_interiors(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """K×H×W booleans for an image of ``size``: whether pixel (x, y) has x0 ≤ x < x1 and y0 ≤ y < y1 in
    box k (``boxes``: K×4 x0, y0, x1, y1 in pixels)."""
    xs = torch.arange(size[1], device=boxes.device, dtype=boxes.dtype)
    ys = torch.arange(size[0], device=boxes.device, dtype=boxes.dtype)
    inside_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])
    inside_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def build(options: ModelOptions) -> YoloV5Seg:
    """The model from the verified ncnn files in ``options.models_dir`` (or the default folders); with
    ``options.random_weights`` the architecture alone, seeded random weights.

    Raises :class:`~icmh.errors.WeightsMissingError` (files absent) or :class:`InvalidInputError`
    (a damaged file, or one this reader cannot run).
    """
    param = read_verified(PARAM, options.models_dir, NAME)
    weights = None if options.random_weights else read_verified(BIN, options.models_dir, NAME)
    network = load_ncnn(param, weights, NAME)
    if options.random_weights:
        randomize(network, options.seed)
    label = weights_label(NAME, options, f"Ultralytics YOLOv5n-seg v7.0, ncnn fp16 ({BIN.path})")
    return YoloV5Seg(network, weights_label=label, pretrained=not options.random_weights,
                     score_threshold=options.score_threshold, max_detections=options.max_detections)


register_task_model(TaskModelSpec(
    name=NAME,
    tasks=(Task.SEGMENTATION, Task.DETECTION),
    family="shared-models",
    build=build,
    files=(PARAM, BIN),
    description="YOLOv5n-seg (Ultralytics v7.0, GPL-3.0 weights; ncnn conversion BSD-3), COCO instance segmentation "
                "at 640, from ../shared/models",
    stands_in_for="Mask R-CNN R50-FPN",
))
