"""The paper's detectron2 detectors, as registry entries used where ``import detectron2`` works.

* ``faster_rcnn_R_50_FPN_3x``: ``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml`` (detection);
* ``mask_rcnn_R_50_FPN_3x``: ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``
  (instance segmentation, and detection).

Thin on purpose: configs from detectron2's model zoo, its ``build_model``, its test-time
resizing (``ResizeShortestEdge``, as ``DefaultPredictor``), outputs converted to the same
:class:`~icmh.results.TaskResult` as every other entry (contiguous classes 0–79 mapped
to COCO category ids). Training features: the FPN outputs p2…p6 in the model's own
normalisation (BGR 0–255 minus its pixel mean, over its std), like the torchvision R-CNNs.
detectron2 is imported only when a model is built; where it cannot be, building fails
with one clear :class:`~icmh.errors.InvalidInputError` naming the torchvision model to
use instead.

Weights: the model-zoo file (``model_final_280758.pkl`` …) from the torch hub cache,
downloaded there when allowed, or ``weights_path``. Zoo files are pickles of numpy
arrays; they are read with an unpickler that admits numpy arrays and nothing else.

detectron2 is not installable on the development and CI machines, so only the config
and file names, the refusal where it is missing, the restricted reader and the category
mapping are tested; building and running the models is not.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import InvalidInputError
from ..hub import hub_file, read_state_dict
from ..images import to_uint8
from ..results import TaskResult
from ..seeding import seeded
from ..tasks import Task
from . import coco
from .base import (ModelOptions, TaskModel, TaskModelSpec, check_images, output_sizes, register_task_model,
                   weights_label)


FAMILY = "detectron2"
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
ZOO_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"


@dataclass(frozen=True)
class ZooConfig:
    """A detectron2 model-zoo config and its trained weights (``<model id>/<file>``, as in ``model_zoo.py``)."""

    config_path: str
    weights_suffix: str

    @property
    def name(self) -> str:
        """E.g. ``faster_rcnn_R_50_FPN_3x``."""
        return self.config_path.rsplit("/", 1)[-1].removesuffix(".yaml")

    @property
    def weights_url(self) -> str:
        """The model-zoo URL of the trained weights."""
        return f"{ZOO_URL_PREFIX}{self.config_path.removesuffix('.yaml')}/{self.weights_suffix}"

    @property
    def file_name(self) -> str:
        """The weights' file name in the torch hub cache."""
        return self.weights_suffix.rsplit("/", 1)[-1]


FASTER_RCNN_3X = ZooConfig("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", "137849458/model_final_280758.pkl")
MASK_RCNN_3X = ZooConfig("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "137849600/model_final_f10217.pkl")


def import_detectron2(instead: str) -> Any:
    """Return the ``detectron2`` module; raises :class:`InvalidInputError` (naming ``instead``) if it cannot be imported."""
    try:
        import detectron2
    except Exception as exc:  # ImportError, or a broken build failing on import
        raise InvalidInputError(
            f"detectron2 is not usable here ({type(exc).__name__}: {exc}); install it from source, or use "
            f"--model {instead}") from None
    return detectron2


_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode"),
})


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_zoo_pickle(path: Path) -> Dict[str, Any]:
    """Read a detectron2 model-zoo ``.pkl`` as a checkpoint dict for ``DetectionCheckpointer``.

    Only dicts of numpy arrays are admitted (no other global is ever loaded). Mirrors
    ``DetectionCheckpointer._load_file``: a file in detectron2 zoo format (``model``
    and ``__author__`` keys) is returned as is; a Caffe2/Detectron1 file is wrapped with
    ``matching_heuristics``. Raises :class:`InvalidInputError` if the file is missing,
    not a pickle, or holds anything but arrays.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            data = _ArraysOnlyUnpickler(file, encoding="latin1").load()
    except FileNotFoundError:
        raise InvalidInputError(f"weights file {path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, OSError) as exc:
        raise InvalidInputError(f"cannot read detectron2 weights {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"detectron2 weights {path} do not hold a dict of arrays")
    if "model" in data and "__author__" in data:
        return data
    blobs = data.get("blobs", data)
    return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
            "__author__": "Caffe2", "matching_heuristics": True}


def read_checkpoint(config: ZooConfig, options: ModelOptions) -> tuple[Dict[str, Any], str]:
    """The checkpoint dict for ``config`` and where it came from (``weights_path`` or the hub cache)."""
    if options.weights_path is not None:
        path = Path(options.weights_path)
        label = f"weights from {path}"
    else:
        path = hub_file(config.weights_url, what=f"detectron2 {config.name}", download=options.download)
        label = f"{FAMILY} model zoo {config.name} ({config.file_name})"
    if path.suffix == ".pkl":
        return read_zoo_pickle(path), label
    return {"model": read_state_dict(path)}, label


class Detectron2Detector(TaskModel):
    """A detectron2 zoo detector; results as every other entry gives them (see the module docstring)."""

    feature_names = tuple(f"fpn {level}" for level in FPN_LEVELS)

    def __init__(self, config: ZooConfig, tasks: Tuple[Task, ...], instead: str, options: ModelOptions) -> None:
        super().__init__()
        import_detectron2(instead)
        from detectron2 import model_zoo
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data import transforms
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(config.config_path))
        cfg.MODEL.DEVICE = str(torch.device(options.device))
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = options.score_threshold
        cfg.TEST.DETECTIONS_PER_IMAGE = options.max_detections
        if options.min_size is not None:
            cfg.INPUT.MIN_SIZE_TEST = options.min_size
        if options.max_size is not None:
            cfg.INPUT.MAX_SIZE_TEST = options.max_size
        if options.max_proposals is not None:
            cfg.MODEL.RPN.POST_NMS_TOPK_TEST = options.max_proposals
        model = seeded(options.seed, lambda: build_model(cfg))
        if options.random_weights:
            self.weights_label = weights_label(config.name, options, "")
        else:
            checkpoint, self.weights_label = read_checkpoint(config, options)
            incompatible = DetectionCheckpointer(model)._load_model(checkpoint)
            if incompatible is not None and incompatible.missing_keys:
                raise InvalidInputError(f"weights ({self.weights_label}) do not fit {config.name}: missing "
                                        f"{', '.join(incompatible.missing_keys[:3])} …")
        self.detector = model
        self.name, self.tasks, self.pretrained = config.name, tasks, not options.random_weights
        self.input_format = cfg.INPUT.FORMAT
        self.resize = transforms.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """Detect objects in each input (see :meth:`TaskModel.infer_prepared`)."""
        task = self.check_task(task)
        inputs = check_images(inputs)
        batch = []
        for image, (height, width) in zip(inputs, output_sizes(inputs, sizes)):
            array = to_uint8(image).permute(1, 2, 0).numpy()  # H×W×RGB, as DefaultPredictor reads images
            if self.input_format == "BGR":
                array = array[:, :, ::-1]
            resized = self.resize.get_transform(array).apply_image(array)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
            batch.append({"image": tensor.to(self.device), "height": height, "width": width})
        if not batch:
            return []
        with torch.inference_mode():
            outputs = self.detector(batch)
        results = []
        for item, output in zip(batch, outputs):
            instances = output["instances"].to("cpu")
            masks = instances.pred_masks if task is Task.SEGMENTATION and instances.has("pred_masks") else None
            found = coco.detections(instances.pred_boxes.tensor, instances.pred_classes, instances.scores, masks,
                                    item["width"], item["height"], coco.contiguous_to_category_id())
            results.append(TaskResult(task, item["width"], item["height"], detections=found))
        return results

    def features(self, x: Tensor) -> List[Tensor]:
        """FPN p2…p6 of the backbone on ``x`` (RGB [0, 1]) in the model's own normalisation."""
        pixels = x.flip(1) * 255 if self.input_format == "BGR" else x * 255
        levels = self.detector.backbone((pixels - self.detector.pixel_mean) / self.detector.pixel_std)
        return [levels[key] for key in FPN_LEVELS]


register_task_model(TaskModelSpec(
    name=FASTER_RCNN_3X.name, tasks=(Task.DETECTION,), family=FAMILY,
    build=lambda options: Detectron2Detector(FASTER_RCNN_3X, (Task.DETECTION,), "fasterrcnn_resnet50_fpn", options),
    description="Faster R-CNN R50-FPN 3x (detectron2 model zoo; the paper's detector)",
))
register_task_model(TaskModelSpec(
    name=MASK_RCNN_3X.name, tasks=(Task.SEGMENTATION, Task.DETECTION), family=FAMILY,
    build=lambda options: Detectron2Detector(MASK_RCNN_3X, (Task.SEGMENTATION, Task.DETECTION),
                                             "maskrcnn_resnet50_fpn", options),
    description="Mask R-CNN R50-FPN 3x (detectron2 model zoo; the paper's instance segmenter)",
))
