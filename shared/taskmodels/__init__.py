"""Task models: one registry of the networks the cloud server, ``icmh train`` and ``icmh eval`` run.

``load_task_model(task, name, options)`` builds a model by name (``yolox-nano``,
``yolov5n-seg``, ``mobilenet-v2``, ``squeezenet1_1``, the torchvision R-CNNs and ResNet-50,
the detectron2 configs, ``png`` for people, the restoration networks ``restore-denoise``,
``restore-deblur``, ``restore-sr2``, ``restore-low-light``); without a name, the task's default
(:func:`default_model_name`): the real small model where its files are present.
"""

from __future__ import annotations

import importlib
import importlib.util

from .base import (
    DEFAULT_MODELS,
    EVAL_SCORE_THRESHOLD,
    RANDOM_WEIGHTS_LABEL,
    TASK_MODELS,
    ModelOptions,
    TaskModel,
    TaskModelSpec,
    default_model_name,
    get_task_model_spec,
    load_task_model,
    register_task_model,
    with_options,
)
from .files import MODELS_DIR_ENV, ModelFile

_ENTRY_MODULES = ("torchvision_models", "detectron2_models", "png", "squeezenet", "mobilenet", "yolox", "yolov5seg",
                  "restoration")
for _module in _ENTRY_MODULES:  # each registers its entries on import
    if importlib.util.find_spec(f"{__name__}.{_module}") is not None:
        importlib.import_module(f".{_module}", __name__)

__all__ = [
    "DEFAULT_MODELS", "EVAL_SCORE_THRESHOLD", "MODELS_DIR_ENV", "RANDOM_WEIGHTS_LABEL", "TASK_MODELS", "ModelFile",
    "ModelOptions", "TaskModel", "TaskModelSpec", "default_model_name", "get_task_model_spec", "load_task_model",
    "register_task_model", "with_options",
]
