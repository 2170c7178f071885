"""The task-model interface and the registry every consumer builds models from.

A :class:`TaskModel` is a frozen, pretrained network together with what it needs around
it: its own input preparation (resize or letterbox, colour order, normalisation), the
decoding of its outputs into :class:`~icmh.results.TaskResult` in the pixels of the image
the caller gave (boxes, COCO category ids and names, masks as COCO RLE, ImageNet classes),
and the intermediate features ``icmh train`` compares as its distortion. The cloud server,
adapter training and evaluation all build models here, by name
(:func:`load_task_model`), so a model behaves the same everywhere.

Entries are :class:`TaskModelSpec` objects in :data:`TASK_MODELS`; each task has a
preference list (:data:`DEFAULT_MODELS`): the real small model of ``../shared/models``
when its files are present, else the paper's torchvision model (hub weights).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..results import TaskResult
from ..seeding import seeded
from ..tasks import Task
from .files import ModelFile, locate

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_LABEL = "RANDOM WEIGHTS"
EVAL_SCORE_THRESHOLD = 0.001  # COCO evaluation keeps low-scoring detections (the usual test setting)


@dataclass(frozen=True)
class ModelOptions:
    """How to build a task model.

    ``random_weights``: seeded random weights (smoke runs; labelled :data:`RANDOM_WEIGHTS_LABEL`).
    ``models_dir``: where the real small models' files are (see :mod:`~icmh.taskmodels.files`).
    ``weights_path``: a state-dict file to load instead of the torch hub cache (torchvision
    and detectron2 entries). ``download``: whether missing hub weights may be downloaded.
    ``score_threshold``: detections scoring below it are dropped; ``max_detections`` per
    image; ``top_k`` classes per classification result. ``min_size``/``max_size``/
    ``max_proposals``: the R-CNN detectors' resizing and proposals (``None``: their own).
    """

    device: str = "cpu"
    random_weights: bool = False
    seed: int = 0
    models_dir: Optional[Path] = None
    weights_path: Optional[Path] = None
    download: bool = True
    score_threshold: float = 0.25
    max_detections: int = 100
    top_k: int = 5
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    max_proposals: Optional[int] = None


class TaskModel(nn.Module, ABC):
    """A frozen task network with its input preparation, output decoding and training features.

    Set by subclasses: ``name`` (registry name), ``tasks`` (tasks it serves, primary first),
    ``weights_label`` (where the weights came from) and ``pretrained``. The module always
    stays in eval mode with gradients off for its parameters; gradients still flow to the
    input of :meth:`features`.
    """

    name: str = ""
    tasks: Tuple[Task, ...] = ()
    weights_label: str = ""
    pretrained: bool = True
    feature_names: Tuple[str, ...] = ()

    @property
    def task(self) -> Task:
        """The primary task."""
        return self.tasks[0]

    @property
    def device(self) -> torch.device:
        """Where the parameters live (CPU for a model without any)."""
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def freeze(self) -> "TaskModel":
        """Eval mode and no parameter gradients; returns ``self``."""
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "TaskModel":
        """Task models never leave eval mode (batch norm statistics, dropout)."""
        return super().train(False)

    def model_input(self, image: Tensor) -> Tensor:
        """``image`` (3×H×W, [0, 1], RGB) in the geometry this model looks at, before padding and
        normalisation (e.g. resized so its long side is 416, or resized and centre-cropped).
        Evaluation codes this image (METHOD.md). Default: the image itself."""
        return image

    def infer(self, images: Sequence[Tensor], task: Optional[Task] = None,
              sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """Run on 3×H×W float RGB images in [0, 1] of any sizes; one result per image, in order.

        ``task``: which of :attr:`tasks` to report (default: the primary). ``sizes``: the
        ``(height, width)`` each result is reported in (default: each image's own). Raises
        :class:`InvalidInputError` for a tensor that is not a 3×H×W float image.
        """
        images = check_images(images)
        reported = output_sizes(images, sizes)
        return self.infer_prepared([self.model_input(image) for image in images], task, reported)

    @abstractmethod
    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """:meth:`infer` on images already in this model's geometry (outputs of :meth:`model_input`,
        possibly coded and decoded): boxes and masks are mapped from each input to ``sizes``
        (default: the input's own size) by scaling, as :meth:`model_input` only resizes or crops."""

    @abstractmethod
    def features(self, x: Tensor) -> List[Tensor]:
        """Differentiable multi-scale features of ``x`` (N×3×H×W, RGB in [0, 1], H and W multiples
        of 32), computed in the model's own input normalisation without resizing; named by
        :attr:`feature_names`."""

    def distortion(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """``D(x, x̂)``: the mean over feature levels of the MSE between the features of ``x̂``
        and of ``x`` (the targets carry no gradient)."""
        with torch.no_grad():
            targets = self.features(x)
        return torch.stack([F.mse_loss(p, t) for p, t in zip(self.features(x_hat), targets)]).mean()

    def describe(self) -> Dict[str, object]:
        """What the model is, for capabilities, results and logs."""
        return {"name": self.name, "tasks": [t.value for t in self.tasks], "weights": self.weights_label,
                "pretrained": self.pretrained}

    def check_task(self, task: Optional[Task]) -> Task:
        """``task`` (default: the primary) if this model serves it; else :class:`InvalidInputError`."""
        task = task or self.task
        if task not in self.tasks:
            raise InvalidInputError(f"{self.name} does not do {task.value} "
                                    f"(it does {', '.join(t.value for t in self.tasks)})")
        return task


def check_images(images: Sequence[Tensor]) -> List[Tensor]:
    """``images`` as a list after checking each is a 3×H×W floating tensor; raises
    :class:`InvalidInputError` naming the first bad one."""
    checked = list(images)
    for i, image in enumerate(checked):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point() \
                or image.shape[1] < 1 or image.shape[2] < 1:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise InvalidInputError(f"image {i} of the batch is not a 3×H×W float tensor (got {shape})")
    return checked


def output_sizes(images: Sequence[Tensor], sizes: Optional[Sequence[Tuple[int, int]]]) -> List[Tuple[int, int]]:
    """``sizes`` (checked against ``images``) or each image's own ``(height, width)``."""
    if sizes is None:
        return [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
    if len(sizes) != len(images):
        raise InvalidInputError(f"{len(sizes)} output sizes for {len(images)} images")
    return [(int(h), int(w)) for h, w in sizes]


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer of ``module`` that can (``reset_parameters``) from ``seed``; returns it.

    Used for ``--random-weights`` smoke runs of models whose architecture comes from a file."""
    layers = [layer for layer in module.modules() if hasattr(layer, "reset_parameters") and layer is not module]
    seeded(seed, lambda: [layer.reset_parameters() for layer in layers])
    return module


def weights_label(spec_name: str, options: ModelOptions, source: str) -> str:
    """The label of a model's weights: ``source``, or the random-weights label (logged loudly)."""
    if options.random_weights:
        log.warning("!!! RANDOM WEIGHTS: task model %s runs with seeded random weights; its results are NOT "
                    "those of a trained model !!!", spec_name)
        return f"{RANDOM_WEIGHTS_LABEL} (seed {options.seed})"
    return source


# -- registry ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskModelSpec:
    """One entry of the registry: a named model, the tasks it serves and how to build it.

    ``files``: what it reads from the models folder (empty: hub weights or none);
    ``stands_in_for``: the paper's model it replaces where that one's weights are absent.
    """

    name: str
    tasks: Tuple[Task, ...]
    family: str
    build: Callable[[ModelOptions], TaskModel]
    files: Tuple[ModelFile, ...] = ()
    description: str = ""
    stands_in_for: str = ""
    aliases: Tuple[str, ...] = field(default_factory=tuple)

    def files_present(self, models_dir: Optional[Path] = None) -> bool:
        """Whether every file this model reads is found (always true without files)."""
        return all(locate(f, models_dir) is not None for f in self.files)


TASK_MODELS: Dict[str, TaskModelSpec] = {}

DEFAULT_MODELS: Dict[Task, Tuple[str, ...]] = {
    Task.DETECTION: ("yolox-nano", "fasterrcnn_resnet50_fpn"),
    Task.SEGMENTATION: ("yolov5n-seg", "maskrcnn_resnet50_fpn"),
    Task.CLASSIFICATION: ("mobilenet-v2", "squeezenet1_1", "resnet50"),
    Task.HUMAN: ("png",),
    Task.MACHINE: ("png",),
    Task.DENOISE: ("restore-denoise",),
    Task.DEBLUR: ("restore-deblur",),
    Task.SUPER_RESOLUTION: ("restore-sr2",),
    Task.LOW_LIGHT: ("restore-low-light",),
}
"""Per task, the models tried in order by :func:`default_model_name` (first with its files present)."""


def register_task_model(spec: TaskModelSpec) -> TaskModelSpec:
    """Add ``spec`` to :data:`TASK_MODELS`; names (and aliases) must be unique."""
    for name in (spec.name, *spec.aliases):
        if name in TASK_MODELS:
            raise ValueError(f"task model {name!r} registered twice")
    for name in (spec.name, *spec.aliases):
        TASK_MODELS[name] = spec
    return spec


def get_task_model_spec(name: str) -> TaskModelSpec:
    """The entry called ``name``; raises :class:`InvalidInputError` naming the valid ones."""
    try:
        return TASK_MODELS[name]
    except KeyError:
        valid = ", ".join(sorted({s.name for s in TASK_MODELS.values()}))
        raise InvalidInputError(f"unknown task model {name!r} (valid: {valid})") from None


def default_model_name(task: Task, models_dir: Optional[Path] = None) -> str:
    """The first model of :data:`DEFAULT_MODELS` for ``task`` whose files are present."""
    for name in DEFAULT_MODELS[task]:
        if name in TASK_MODELS and TASK_MODELS[name].files_present(models_dir):
            return name
    return DEFAULT_MODELS[task][-1]


def load_task_model(task: Task, name: Optional[str] = None, options: ModelOptions = ModelOptions()) -> TaskModel:
    """Build the task model ``name`` (default: :func:`default_model_name`) for ``task``, frozen, on ``options.device``.

    Raises :class:`InvalidInputError` (unknown name, a model that does not do ``task``,
    a damaged file), :class:`~icmh.errors.WeightsMissingError` (files or hub weights absent).
    """
    task = Task.parse(task.value if isinstance(task, Task) else task)
    name = name or default_model_name(task, options.models_dir)
    spec = get_task_model_spec(name)
    if task not in spec.tasks:
        valid = ", ".join(sorted({s.name for s in TASK_MODELS.values() if task in s.tasks}))
        raise InvalidInputError(f"task model {spec.name} does not do {task.value} (models for it: {valid})")
    model = spec.build(options)
    return model.freeze().to(options.device)


def with_options(options: ModelOptions, **changes: object) -> ModelOptions:
    """``options`` with ``changes``; raises :class:`InvalidInputError` for an unknown field."""
    try:
        return replace(options, **changes)
    except TypeError as exc:
        raise InvalidInputError(f"bad task-model option: {exc}") from None
