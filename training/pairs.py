"""What adapter training codes and what it compares the result with, per task.

For most tasks the codec codes the training crop and the distortion compares the task
model on the reconstruction with the task model on that same crop. The restoration tasks
(LL-ICM) train as their consumers are used: the codec codes the *degraded* crop
(:func:`icmh.restoration.degrade`), and the distortion is the error of the restored
reconstruction to the *clean* crop
(:meth:`icmh.taskmodels.restoration.RestorationModel.clean_distortion`), so the adapters
learn what the restoration needs rather than to reproduce the degradation.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor

from icmh.errors import InvalidInputError
from icmh.restoration import degradation_of, degrade, restoration_target
from icmh.taskmodels import TaskModel
from icmh.tasks import Task

CODEC_BLOCK = 64  # training crops reach the codec in multiples of this


def coding_pair(task: Union[Task, str], crops: Tensor, seed: int) -> Tuple[Tensor, Optional[Tensor]]:
    """``(codec input, clean target)`` for a batch of training crops: ``(crops, None)`` for the tasks that
    compare with the coded image itself (and for no task, ``""``: universal heads); for the restoration
    tasks the crops degraded with ``seed`` and the clean crops (super-resolution: the input is ×½, the
    target the full crop)."""
    if not task or not Task.parse(str(task)).is_restoration:
        return crops, None
    task = Task.parse(str(task))
    return degrade(task, crops, seed), restoration_target(task, crops)


def pair_distortion(model: TaskModel, x: Tensor, target: Optional[Tensor], x_hat: Tensor) -> Tensor:
    """The distortion adapter training minimises: ``model.distortion(x, x̂)`` without a clean target, else
    the error of the restored ``x̂`` to the clean ``target`` (``model.clean_distortion``)."""
    if target is None:
        return model.distortion(x, x_hat)
    return model.clean_distortion(target.to(x_hat.device), x_hat)


def check_crop(task: Task, crop: int) -> None:
    """Raise :class:`InvalidInputError` unless crops of side ``crop`` reach the codec in multiples of 64."""
    scale = degradation_of(task).scale if task.is_restoration else 1
    if crop < CODEC_BLOCK * scale or crop % (CODEC_BLOCK * scale):
        raise InvalidInputError(f"--crop must be a multiple of {CODEC_BLOCK * scale} for {task.value} "
                                f"(the codec codes {'the ×½ crop' if scale > 1 else 'the crop'}), got {crop}")
