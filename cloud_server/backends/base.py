"""One interface for every task model, and the registry that builds them.

A backend turns a batch of decoded frames (3×H×W float tensors in [0, 1]) into one
:class:`~shared.results.TaskResult` per frame, in order. Backends come in *families*
(``torchvision``, ``detectron2``); each registers one factory per task it serves under
``"<family>/<task>"`` in :data:`BACKENDS`. :func:`build_backend` picks the preferred
family's factory and falls back to the default family (torchvision) where the
preferred one has no backend for the task or cannot be imported here.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from shared.errors import IcmhError, InvalidInputError
from shared.results import TaskResult
from shared.task_models import RANDOM_WEIGHTS_LABEL
from shared.tasks import Task

log = logging.getLogger(__name__)

DEFAULT_FAMILY = "torchvision"


class BackendUnavailableError(IcmhError):
    """A backend family cannot be used here (e.g. detectron2 is not installed)."""


@dataclass(frozen=True)
class BackendOptions:
    """How to build a backend.

    ``score_threshold``: detections scoring at or below it are dropped (the detector's
    ``box_score_thresh``). ``weights_path``: a state dict file to load instead of the
    torch hub cache. ``min_size``/``max_size``: the detectors' resizing (``None``: the
    model's own, 800/1333); ``max_detections``: per frame; ``max_proposals``: region
    proposals kept after the RPN's NMS (``None``: the model's own, 1000; on a CPU most
    of a detector's time goes into the heads of these proposals); ``top_k``: classes
    per classification result; ``download``: whether a
    missing pretrained file may be downloaded (``ICMH_OFFLINE=1`` also forbids it).
    """

    random_weights: bool = False
    device: str = "cpu"
    score_threshold: float = 0.5
    weights_path: Optional[Path] = None
    seed: int = 0
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    max_detections: int = 100
    max_proposals: Optional[int] = None
    top_k: int = 5
    download: bool = True


class TaskBackend(ABC):
    """A task model behind the common interface.

    Attributes: ``task`` (a :class:`~shared.tasks.Task` value), ``family``
    (``torchvision``/``detectron2``), ``name`` (the architecture), ``weights_label``
    (where the weights came from, :data:`RANDOM_WEIGHTS_LABEL` for seeded random ones),
    ``pretrained`` (whether trained weights were loaded) and ``device``.
    """

    task: str
    family: str
    name: str
    weights_label: str
    pretrained: bool
    device: torch.device

    @abstractmethod
    def infer(self, images: Sequence[Tensor]) -> List[TaskResult]:
        """Run the model on a batch of 3×H×W float images in [0, 1] (any sizes).

        Returns one :class:`TaskResult` per image, in input order; raises
        :class:`InvalidInputError` for a tensor that is not a 3×H×W image.
        """

    def to(self, device: Union[str, torch.device]) -> "TaskBackend":
        """Move the model to ``device``; returns ``self``."""
        self.device = torch.device(device)
        return self

    def describe(self) -> Dict[str, Any]:
        """What the backend is, for capabilities and logs: task, family, name, weights."""
        return {"task": self.task, "family": self.family, "name": self.name,
                "weights": self.weights_label, "pretrained": self.pretrained}


BackendFactory = Callable[[BackendOptions], TaskBackend]

BACKENDS: Dict[str, BackendFactory] = {}
"""Backend factories by ``"<family>/<task>"``, e.g. ``"torchvision/detection"``."""


def register_backend(family: str, task: Task) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: register ``factory`` as ``family``'s backend for ``task``."""

    def decorate(factory: BackendFactory) -> BackendFactory:
        key = backend_key(family, task)
        if key in BACKENDS:
            raise ValueError(f"backend {key} registered twice")
        BACKENDS[key] = factory
        return factory

    return decorate


def backend_key(family: str, task: Union[str, Task]) -> str:
    """The registry key of ``family``'s backend for ``task``."""
    return f"{family}/{Task(task).value}"


def families() -> List[str]:
    """The registered backend families, default first."""
    names = {key.split("/", 1)[0] for key in BACKENDS}
    return sorted(names, key=lambda name: (name != DEFAULT_FAMILY, name))


def build_backend(
    task: Union[str, Task],
    *,
    random_weights: bool,
    device: Union[str, torch.device],
    prefer: str = DEFAULT_FAMILY,
    score_threshold: float = 0.5,
    weights_path: Optional[Path] = None,
    **options: Any,
) -> TaskBackend:
    """Build the backend for ``task``, from family ``prefer`` where it has one.

    ``options`` are further :class:`BackendOptions` fields (``seed``, ``min_size``,
    ``max_size``, ``max_detections``, ``max_proposals``, ``top_k``, ``download``).
    Falls back to the torchvision family, with a logged warning, when the preferred
    family cannot be imported here, and quietly (info log) when it has no backend for
    ``task``.

    Raises :class:`InvalidInputError` (unknown task, family or option),
    :class:`~shared.errors.WeightsMissingError` (pretrained weights neither cached nor
    downloadable) or whatever the factory raises for unreadable weight files.
    """
    task = Task.parse(task.value if isinstance(task, Task) else task)
    if prefer not in families():
        raise InvalidInputError(f"unknown backend family {prefer!r} (valid: {', '.join(families())})")
    try:
        settings = replace(BackendOptions(), random_weights=random_weights, device=str(device),
                           score_threshold=float(score_threshold),
                           weights_path=None if weights_path is None else Path(weights_path), **options)
    except TypeError as exc:
        raise InvalidInputError(f"bad backend option: {exc}") from None
    key = backend_key(prefer, task)
    if key in BACKENDS:
        try:
            return BACKENDS[key](settings)
        except BackendUnavailableError as exc:
            log.warning("%s; using the %s backend for %s instead", exc, DEFAULT_FAMILY, task.value)
    else:
        log.info("%s has no %s backend; using %s", prefer, task.value, DEFAULT_FAMILY)
    return BACKENDS[backend_key(DEFAULT_FAMILY, task)](settings)


def check_images(images: Sequence[Tensor]) -> List[Tensor]:
    """Return ``images`` as a list after checking each is a 3×H×W floating tensor.

    Raises :class:`InvalidInputError` naming the first bad one.
    """
    checked = list(images)
    for i, image in enumerate(checked):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point() \
                or image.shape[1] < 1 or image.shape[2] < 1:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise InvalidInputError(f"image {i} of the batch is not a 3×H×W float tensor (got {shape})")
    return checked
