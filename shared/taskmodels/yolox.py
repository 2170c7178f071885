"""YOLOX-nano (Megvii, Apache-2.0): COCO detection at 416 from the ONNX file of ``../shared/models``.

The ONNX graph (opset 11, ``1×3×416×416`` BGR 0–255 in, ``1×3549×85`` out) is turned into
a differentiable ``torch.fx.GraphModule`` by ``onnx2torch`` and cut in two where the
YOLOX head begins:

* :attr:`YoloxNano.neck` — image → the three PAFPN outputs (strides 8, 16, 32), the
  inputs of the head's per-level 1×1 stems, found in the graph by :func:`neck_output`
  (``Mul_246``, ``Mul_272``, ``Mul_298``: the last SiLU of each PAFPN output block);
  these are the training features;
* :attr:`YoloxNano.head` — those three maps → the three per-level head maps
  ``N×85×h×w`` (4 raw box values, objectness and 80 class scores, the last two already
  sigmoids).

The export ends in ``Reshape(·, [1, 85, -1])``, which only works for one image; the cut
drops it, so any batch and any size that is a multiple of 32 runs. Decoding is not part
of the export and is done here: ``xy = (o[0:2] + grid)·stride``, ``wh = exp(o[2:4])·stride``,
``score = objectness · class score`` for every class (each box may be kept for several
classes, as the YOLOX ONNX demo's class-aware NMS does), then class-wise NMS at IoU 0.45.
Inference letterboxes every input onto a fixed 416×416 canvas (padded bottom/right with
grey 114), so a batch gives exactly the results of single images.
"""

from __future__ import annotations

from typing import AbstractSet, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import warnings

import torch
from torch import Tensor, fx, nn
from torchvision.ops import batched_nms

from ..extras import optional_import
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
from .geometry import YOLO_PAD, Letterbox, fit_long_side, letterbox

# onnx2torch's Slice indexes with a list, which this torch deprecates; its results are checked against
# onnxruntime in tests/test_taskmodel_yolox.py, so the warning says nothing to a user of this model.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing", category=UserWarning)

YOLOX_FILE = ModelFile("coco-detection-yolox-nano/yolox_nano.onnx",
                       "e8af074932d4ed7e232278e3055cefcdea3edf178874a3694ae292649fb464dd")
INPUT_SIZE = 416
NMS_IOU = 0.45
PRE_NMS_TOP_K = 2000  # (box, class) candidates per image kept for NMS, best first
NUM_CLASSES = 80
STRIDES = (8, 16, 32)

Nodes = Tuple[fx.Node, ...]


class YoloxNano(TaskModel):
    """YOLOX-nano on COCO (80 classes, boxes in the caller's pixels); see the module docstring.

    ``network`` is the ``onnx2torch`` conversion of the export; ``score_threshold`` and
    ``max_detections`` filter the decoded detections of each image.
    """

    name = "yolox-nano"
    tasks = (Task.DETECTION,)
    feature_names = tuple(f"pafpn/{stride}" for stride in STRIDES)

    def __init__(self, network: fx.GraphModule, *, weights_label: str, pretrained: bool,
                 score_threshold: float = 0.25, max_detections: int = 100) -> None:
        super().__init__()
        # channels-last convolutions (mkldnn on CPU): ~10–40 % faster for batches and training, same results
        self.neck, self.head = split_at_head(network.to(memory_format=torch.channels_last))
        self.weights_label = weights_label
        self.pretrained = pretrained
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    def model_input(self, image: Tensor) -> Tensor:
        """``image`` scaled so that its long side is 416 (RGB, [0, 1]), what evaluation codes."""
        return fit_long_side(image, INPUT_SIZE)

    def features(self, x: Tensor) -> List[Tensor]:
        """The three PAFPN outputs (strides 8, 16, 32; 64, 128 and 256 channels) of ``x``
        (N×3×H×W RGB in [0, 1], H and W multiples of 32), differentiable w.r.t. ``x``."""
        return list(self.neck(to_network_input(x)))

    def raw_outputs(self, x: Tensor) -> Tensor:
        """The export's output for ``x`` (N×3×H×W RGB in [0, 1], H and W multiples of 32): N×A×85,
        A = Σ (H/s)·(W/s) predictions over strides s = 8, 16, 32, levels in that order, cells
        row by row (for one 416×416 image, what the ONNX file gives: ``1×3549×85``)."""
        levels = self.head(*self.features(x))  # N×85×h×w each
        return torch.cat([level.flatten(2) for level in levels], dim=2).transpose(1, 2)

    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """Detections of each model input, all inputs as one batch (see :meth:`TaskModel.infer_prepared`).

        Returns one ``detection`` :class:`TaskResult` per input, boxes in the pixels of
        ``sizes[i]`` (default: the input's own size). Raises :class:`InvalidInputError` for a
        task other than detection, a tensor that is not a 3×H×W float image, or sizes that
        do not match the inputs.
        """
        task = self.check_task(task)
        inputs = check_images(inputs)
        if not inputs:
            return []
        reported = output_sizes(inputs, sizes)
        canvases, placements = zip(*(letterbox(image.to(self.device), (INPUT_SIZE, INPUT_SIZE), center=False,
                                               pad_value=YOLO_PAD) for image in inputs))
        with torch.inference_mode():
            batch = decode(self.raw_outputs(torch.stack(canvases)), INPUT_SIZE, INPUT_SIZE)
            return [self._result(task, predictions, placement, size)
                    for predictions, placement, size in zip(batch, placements, reported)]

    def _result(self, task: Task, predictions: Tensor, placement: Letterbox, size: Tuple[int, int]) -> TaskResult:
        """One image's :class:`TaskResult` from its decoded A×85 ``predictions`` (canvas pixels)."""
        boxes, labels, scores = select(predictions, self.score_threshold, self.max_detections)
        height, width = size
        found = coco.detections(placement.boxes_to(boxes, size), labels, scores, None, width, height,
                                label_to_category=coco.contiguous_to_category_id())
        return TaskResult(task=task, width=width, height=height, detections=found)


def to_network_input(x: Tensor) -> Tensor:
    """N×3×H×W RGB in [0, 1] as the export wants it: BGR, 0–255, no normalisation."""
    return x.flip(1) * 255


# -- decoding ---------------------------------------------------------------------------------------
def decode(raw: Tensor, height: int, width: int) -> Tensor:
    """The export's N×A×85 ``raw`` outputs for a ``height×width`` input as N×A×85 predictions:
    boxes ``x0, y0, x1, y1`` in input pixels, then objectness and the 80 class scores."""
    cells, strides = anchor_grid(height, width, raw.device, raw.dtype)
    centre = (raw[..., 0:2] + cells) * strides
    half = torch.exp(raw[..., 2:4]) * strides / 2
    return torch.cat([centre - half, centre + half, raw[..., 4:]], dim=-1)


def anchor_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """The cell ``(x, y)`` (A×2) and stride (A×1) of every prediction for a ``height×width`` input:
    strides 8, 16, 32 in turn, cells row by row (the order of :meth:`YoloxNano.raw_outputs`)."""
    cells, strides = [], []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        ys, xs = torch.meshgrid(torch.arange(rows, device=device, dtype=dtype),
                                torch.arange(cols, device=device, dtype=dtype), indexing="ij")
        cells.append(torch.stack([xs, ys], dim=-1).reshape(-1, 2))
        strides.append(torch.full((rows * cols, 1), float(stride), device=device, dtype=dtype))
    return torch.cat(cells), torch.cat(strides)


def select(predictions: Tensor, score_threshold: float, max_detections: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The detections of one image's decoded A×85 ``predictions``: every (box, class) pair whose
    ``objectness · class score`` reaches ``score_threshold`` (the best :data:`PRE_NMS_TOP_K`),
    class-wise NMS at :data:`NMS_IOU`, the best ``max_detections``. Returns boxes K×4 (input
    pixels), class indices 0–79 and scores, best first."""
    scores = predictions[:, 4:5] * predictions[:, 5:5 + NUM_CLASSES]
    anchor, label = torch.nonzero(scores >= score_threshold, as_tuple=True)
    candidate_scores = scores[anchor, label]
    if candidate_scores.numel() > PRE_NMS_TOP_K:
        candidate_scores, best = candidate_scores.topk(PRE_NMS_TOP_K)
        anchor, label = anchor[best], label[best]
    boxes = predictions[anchor, :4]
    keep = batched_nms(boxes, candidate_scores, label, NMS_IOU)[:max_detections]
    return boxes[keep], label[keep], candidate_scores[keep]


# -- the graph --------------------------------------------------------------------------------------
def split_at_head(network: fx.GraphModule) -> Tuple[fx.GraphModule, fx.GraphModule]:
    """``network`` (the converted export) as ``(neck, head)``: image → the 3 PAFPN outputs, and
    those 3 → the 3 per-level head maps (see the module docstring); they share its layers."""
    levels = head_levels(network)
    features = tuple(neck_output(network, level) for level in levels)
    neck = fx.GraphModule(network, subgraph(network.graph, (), features), class_name="YoloxNeck")
    head = fx.GraphModule(network, subgraph(network.graph, features, levels), class_name="YoloxHead")
    return neck, head


def head_levels(network: fx.GraphModule) -> Nodes:
    """The per-level head maps: the inputs of the export's final ``Reshape(·, [1, 85, -1])`` nodes,
    in the order the output concatenates them (strides 8, 16, 32; ``Concat_331/364/397``)."""
    (transposed,) = output_node(network.graph).args
    (concatenated,) = transposed.args
    levels = []
    for reshape in concatenated.args:
        if reshape.op != "call_module" or type(network.get_submodule(reshape.target)).__name__ != "OnnxReshape":
            raise ValueError(f"unexpected YOLOX export: output level {reshape.name} is not a Reshape")
        levels.append(reshape.args[0])
    return tuple(levels)


def neck_output(network: fx.GraphModule, level: fx.Node) -> fx.Node:
    """The PAFPN output one head level starts from: the input of that level's stem.

    ``level`` concatenates (box convolution, sigmoid(objectness), sigmoid(classes)); walking
    back along first inputs, the box and class branches meet at the stem's output (the SiLU
    ``Mul`` after the stem's 1×1 ``Conv``); the input of that ``Conv`` is the PAFPN output, the
    last SiLU of a CSP block. For this export: ``Mul_246`` → stem ``Conv_299`` (stride 8, 64 channels),
    ``Mul_272`` → ``Conv_332`` (16, 128) and ``Mul_298`` → ``Conv_365`` (32, 256)."""
    box_branch, _, class_branch = level.args
    on_box_path = set(first_input_chain(box_branch))
    stem_output = next(node for node in first_input_chain(class_branch) if node in on_box_path)
    stem_conv = stem_output.args[0]
    if not isinstance(network.get_submodule(stem_conv.target), nn.Conv2d):
        raise ValueError(f"unexpected YOLOX export: the stem of {level.name} is not a convolution")
    return stem_conv.args[0]


def first_input_chain(node: fx.Node) -> Iterator[fx.Node]:
    """``node``, the node of its first input, that node's first input, … (the main data path)."""
    while node.op != "placeholder":
        yield node
        node = node.args[0]
    yield node


def subgraph(graph: fx.Graph, inputs: Sequence[fx.Node], outputs: Sequence[fx.Node]) -> fx.Graph:
    """The part of ``graph`` computing ``outputs`` (a tuple) from ``inputs`` (placeholders in order;
    none: from ``graph``'s own placeholders). Raises ``ValueError`` if ``outputs`` need more."""
    cut = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {node: cut.placeholder(f"feature_{i}") for i, node in enumerate(inputs)}
    needed = ancestors(outputs, stop=set(inputs))
    for node in graph.nodes:
        if node in needed and node not in env:
            if inputs and node.op == "placeholder":
                raise ValueError(f"unexpected YOLOX export: the cut graph reads {node.name} past its inputs")
            env[node] = cut.node_copy(node, lambda n: env[n])
    cut.output(tuple(env[node] for node in outputs))
    cut.lint()
    return cut


def ancestors(outputs: Sequence[fx.Node], stop: AbstractSet[fx.Node]) -> Set[fx.Node]:
    """``outputs`` and every node they depend on, not looking past the nodes of ``stop``."""
    seen: Set[fx.Node] = set()
    todo = list(outputs)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node not in stop:
            todo.extend(node.all_input_nodes)
    return seen


def output_node(graph: fx.Graph) -> fx.Node:
    """The ``output`` node of ``graph``."""
    return next(node for node in graph.nodes if node.op == "output")


# -- the registry entry -----------------------------------------------------------------------------
def load_network(options: ModelOptions) -> fx.GraphModule:
    """The export as a ``torch.fx.GraphModule``, read (SHA-256 checked) from ``options.models_dir``
    or the default folders. Raises :class:`~icmh.errors.WeightsMissingError` (file absent) or
    :class:`~icmh.errors.InvalidInputError` (damaged file)."""
    data = read_verified(YOLOX_FILE, options.models_dir, "yolox-nano")
    onnx = optional_import("onnx", "server", "the yolox-nano model")
    return optional_import("onnx2torch", "server", "the yolox-nano model").convert(onnx.load_from_string(data))


def build(options: ModelOptions) -> YoloxNano:
    """The registry's builder: the pretrained export, or its architecture with seeded random
    weights (``options.random_weights``, logged loudly). Raises as :func:`load_network`."""
    network = load_network(options)
    if options.random_weights:
        randomize(network, options.seed)
    label = weights_label("yolox-nano", options, f"YOLOX-nano ONNX export ({YOLOX_FILE.path})")
    return YoloxNano(network, weights_label=label, pretrained=not options.random_weights,
                     score_threshold=options.score_threshold, max_detections=options.max_detections)


SPEC = register_task_model(TaskModelSpec(
    name="yolox-nano", tasks=(Task.DETECTION,), family="shared-models", build=build, files=(YOLOX_FILE,),
    description="YOLOX-nano (Megvii, Apache-2.0), COCO detection at 416, from ../shared/models",
    stands_in_for="Faster R-CNN R50-FPN",
))
