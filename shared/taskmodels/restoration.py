"""``restore-denoise``, ``restore-deblur``, ``restore-sr2``, ``restore-low-light``: the low-level consumers.

Each wraps the small restoration network of its task (:mod:`icmh.restoration.networks`):
the result of a frame is the restored picture as PNG, at the frame's size times the task's
scale (×2 for super-resolution). Weights: the shipped file
(``icmh/restoration/weights/<name>.safetensors``, made by ``icmh train-restoration``),
``ModelOptions.weights_path`` for another file, or seeded random weights
(``random_weights``, labelled ``RANDOM WEIGHTS``). A missing file is one
:class:`~icmh.errors.WeightsMissingError` naming it and the command that makes it.

Training features: the restored image itself, so :meth:`TaskModel.distortion` ``D(x, x̂)``
is the MSE between the restoration of the decoded image and the restoration of the
original; :meth:`RestorationModel.clean_distortion` is LL-ICM's objective, the MSE between
the restoration of the decoded image and the clean image.
"""

from __future__ import annotations

import io
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import to_pil_image

from ..errors import InvalidInputError
from ..images import to_uint8
from ..restoration import (MODEL_NAMES, NetworkConfig, RestorationNet, build_network, bundled_weights_path,
                           degradation_of, read_network)
from ..results import TaskResult
from ..tasks import RESTORATION_TASKS, Task
from .base import ModelOptions, TaskModel, TaskModelSpec, check_images, randomize, register_task_model, weights_label


def png_bytes(image: Tensor) -> bytes:
    """A 3×H×W float image in [0, 1] as 8-bit PNG bytes."""
    buffer = io.BytesIO()
    to_pil_image(to_uint8(image)).save(buffer, format="PNG")
    return buffer.getvalue()


class RestorationModel(TaskModel):
    """A restoration network as a task model: frames in, restored pictures (PNG) out."""

    feature_names = ("restored",)

    def __init__(self, task: Task, net: RestorationNet, label: str, pretrained: bool,
                 metadata: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.name = MODEL_NAMES[task]
        self.tasks = (task,)
        self.weights_label = label
        self.pretrained = pretrained
        self.metadata = dict(metadata or {})
        self.net = net

    @property
    def scale(self) -> int:
        """Restored size / frame size, per side (2 for super-resolution)."""
        return self.net.scale

    def restore(self, x: Tensor) -> Tensor:
        """The restoration of the N×3×h×w batch ``x`` (differentiable, not clipped): N×3×(scale·h)×(scale·w)."""
        return self.net(x)

    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """The restored picture of each input as PNG, ``scale`` times the size in ``sizes`` (default: the
        input's own size; a different size is reached by bicubic resampling of the restoration)."""
        task = self.check_task(task)
        images = check_images(inputs)
        if sizes is not None and len(sizes) != len(images):
            raise InvalidInputError(f"{len(sizes)} output sizes for {len(images)} images")
        results = []
        for index, image in enumerate(images):
            height, width = sizes[index] if sizes is not None else image.shape[-2:]
            size = (int(height) * self.scale, int(width) * self.scale)
            with torch.no_grad():
                restored = self.restore(image[None].to(self.device, torch.float32)).clamp(0, 1)
                if tuple(restored.shape[-2:]) != size:
                    restored = F.interpolate(restored, size=size, mode="bicubic", antialias=True,
                                             align_corners=False).clamp(0, 1)
            results.append(TaskResult(task, size[1], size[0], image_png=png_bytes(restored[0]), model=self.name))
        return results

    def features(self, x: Tensor) -> List[Tensor]:
        """The restored image (so that :meth:`distortion` compares restorations)."""
        return [self.restore(x)]

    def clean_distortion(self, clean: Tensor, x_hat: Tensor) -> Tensor:
        """LL-ICM's distortion: the MSE between the restoration of ``x_hat`` and the ``clean`` image
        (N×3×(scale·h)×(scale·w), no gradient); gradients flow to ``x_hat``."""
        return self.restoration_error(self.restore(x_hat), clean)

    @staticmethod
    def restoration_error(restored: Tensor, clean: Tensor) -> Tensor:
        """The MSE of a restoration to the ``clean`` image (no gradient to ``clean``); raises
        :class:`InvalidInputError` when their sizes differ."""
        if restored.shape != clean.shape:
            raise InvalidInputError(f"the clean target is {tuple(clean.shape)}, the restoration "
                                    f"{tuple(restored.shape)}")
        return F.mse_loss(restored, clean.detach())


def build_restoration_model(task: Task, options: ModelOptions) -> RestorationModel:
    """The model of ``task`` with the shipped weights, ``options.weights_path``, or seeded random weights.

    Raises :class:`~icmh.errors.WeightsMissingError` (no weight file) or :class:`InvalidInputError`
    (a file of another format or task)."""
    name = MODEL_NAMES[task]
    if options.random_weights:
        net = randomize(build_network(NetworkConfig.for_task(task), options.seed), options.seed)
        return RestorationModel(task, net, weights_label(name, options, ""), pretrained=False)
    path = options.weights_path or bundled_weights_path(task)
    net, metadata = read_network(path, task)
    source = f"trained by icmh, {path.name}" if options.weights_path is None else f"weights from {path}"
    return RestorationModel(task, net, source, pretrained=True, metadata=metadata)


for _task in RESTORATION_TASKS:
    register_task_model(TaskModelSpec(
        name=MODEL_NAMES[_task], tasks=(_task,), family="restoration", build=partial(build_restoration_model, _task),
        description=f"small residual CNN restoring {_task.value} frames ({degradation_of(_task).describe()}); "
                    f"the result is the restored image as PNG",
    ))
