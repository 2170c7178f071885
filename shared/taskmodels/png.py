"""``png``: the consumer of tasks ``human`` and ``machine`` — the decoded image itself, as PNG (no network)."""

from __future__ import annotations

import io
from typing import List, Optional, Sequence, Tuple

from torch import Tensor
from torchvision.transforms.functional import to_pil_image

from ..errors import InvalidInputError
from ..images import to_uint8
from ..results import TaskResult
from ..tasks import Task
from .base import TaskModel, TaskModelSpec, check_images, register_task_model


class PngImage(TaskModel):
    """The decoded picture (for people, or the machine-oriented one): 8 bits per channel, rounded, PNG-encoded."""

    name = "png"
    tasks = (Task.HUMAN, Task.MACHINE)
    weights_label = "no model"
    pretrained = False

    def infer_prepared(self, inputs: Sequence[Tensor], task: Optional[Task] = None,
                       sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[TaskResult]:
        """One PNG per image at its own size (``sizes`` must be absent or equal to the images' sizes)."""
        task = self.check_task(task)
        results = []
        for index, image in enumerate(check_images(inputs)):
            height, width = int(image.shape[-2]), int(image.shape[-1])
            if sizes is not None and tuple(sizes[index]) != (height, width):
                raise InvalidInputError("the png consumer returns images at their own size")
            buffer = io.BytesIO()
            to_pil_image(to_uint8(image)).save(buffer, format="PNG")
            results.append(TaskResult(task, width, height, image_png=buffer.getvalue()))
        return results

    def features(self, x: Tensor) -> List[Tensor]:
        """The image itself (so that the distortion of ``human`` is the pixel MSE)."""
        return [x]


register_task_model(TaskModelSpec(
    name="png", tasks=(Task.HUMAN, Task.MACHINE), family="none", build=lambda options: PngImage(),
    description="the decoded image as PNG (human: people look at it; machine: the machine-oriented picture)",
))
