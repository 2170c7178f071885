"""torchvision task models with their pretrained weights, built the same way everywhere.

The cloud server's backends, adapter training (feature distortions) and evaluation all
need "this torchvision architecture with these weights". This module is that one place:

* :data:`FASTER_RCNN`, :data:`MASK_RCNN` (R50-FPN, ``COCO_V1``) and :data:`RESNET50`
  (``IMAGENET1K_V1``) name an architecture and its weights entry;
* :func:`load_task_model` builds one: pretrained weights from an explicit file or the
  torch hub cache under the real file name (``$TORCH_HOME/hub/checkpoints/...``,
  downloaded there first when missing and allowed), read without unpickling; or seeded
  random weights, labelled :data:`RANDOM_WEIGHTS_LABEL`.

The pretrained architecture is the one torchvision's builders make for those weights
(frozen batch norm, ``eps=0`` for COCO_V1), because torchvision's own loader unpickles.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
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
from torchvision.ops import FrozenBatchNorm2d

from .errors import InvalidInputError, WeightsMissingError
from .weights import OFFLINE_ENV, hub_checkpoints_dir, read_state_dict

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_LABEL = "RANDOM WEIGHTS"


@dataclass(frozen=True)
class TorchvisionModel:
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


FASTER_RCNN = TorchvisionModel(
    "fasterrcnn_resnet50_fpn", FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    _rcnn(fasterrcnn_resnet50_fpn, FasterRCNN, FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
)
MASK_RCNN = TorchvisionModel(
    "maskrcnn_resnet50_fpn", MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    _rcnn(maskrcnn_resnet50_fpn, MaskRCNN, MaskRCNN_ResNet50_FPN_Weights.COCO_V1),
)
RESNET50 = TorchvisionModel(
    "resnet50", ResNet50_Weights.IMAGENET1K_V1, lambda trained, **kwargs: resnet50(weights=None, **kwargs),
)


def seeded(seed: int, build: Callable[[], Any]) -> Any:
    """Call ``build()`` with the torch RNG seeded to ``seed``, leaving the global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def hub_weights_file(url: str, *, what: str, download: bool, hash_prefix: Optional[str] = None) -> Path:
    """The torch hub cache file of ``url`` (``$TORCH_HOME/hub/checkpoints/<last part of url>``).

    Downloads it first when it is missing, ``download`` is set and ``ICMH_OFFLINE`` is
    not ``1`` (checking ``hash_prefix`` of its SHA-256 if given). Raises
    :class:`WeightsMissingError` in one line naming ``what``, the file, the folder and
    what to do when it is neither cached nor downloadable.
    """
    folder = hub_checkpoints_dir()
    path = folder / url.rsplit("/", 1)[-1]
    if not path.is_file() and download and os.environ.get(OFFLINE_ENV) != "1":
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=False)
        except Exception as exc:  # any failure to fetch means the same thing to the user
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _weights_missing(what, path, f"download failed: {reason}") from None
    if not path.is_file():
        raise _weights_missing(what, path, f"offline: {OFFLINE_ENV}=1 or downloads off")
    return path


def _weights_missing(what: str, path: Path, reason: str) -> WeightsMissingError:
    return WeightsMissingError(
        f"pretrained weights for {what} are missing: {path.name} is not in {path.parent} ({reason}); copy the "
        f"file there (or point TORCH_HOME at a folder whose hub/checkpoints holds it), or use --random-weights "
        f"for a smoke run"
    )


def pretrained_state_dict(
    spec: TorchvisionModel, weights_path: Optional[Path] = None, download: bool = True,
) -> Tuple[Dict[str, Tensor], str]:
    """The state dict to load for ``spec`` and a label saying where it came from.

    ``weights_path`` if given, else the torch hub cache (see :func:`hub_weights_file`).
    Raises :class:`WeightsMissingError` or :class:`InvalidInputError` (unreadable file).
    """
    if weights_path is not None:
        return read_state_dict(Path(weights_path)), f"weights from {weights_path}"
    match = torch.hub.HASH_REGEX.search(spec.file_name)
    path = hub_weights_file(spec.weights.url, what=f"{spec.name} ({spec.weights_name})", download=download,
                            hash_prefix=match.group(1) if match else None)
    return read_state_dict(path), f"torchvision {spec.weights.name} pretrained ({spec.file_name})"


def load_task_model(
    spec: TorchvisionModel,
    *,
    random_weights: bool = False,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    weights_path: Optional[Path] = None,
    download: bool = True,
    **model_kwargs: Any,
) -> Tuple[nn.Module, str, bool]:
    """Build ``spec``'s model, frozen and in eval mode on ``device``.

    Pretrained weights from ``weights_path`` or the hub cache, or seeded random ones
    when ``random_weights`` (logged loudly). ``model_kwargs`` go to the constructor.
    Returns ``(model, weights label, pretrained)``. Raises :class:`WeightsMissingError`
    or :class:`InvalidInputError` (unreadable weights, or weights of another architecture).
    """
    if random_weights:
        model = seeded(seed, lambda: spec.build(False, **model_kwargs))
        label, pretrained = f"{RANDOM_WEIGHTS_LABEL} (seed {seed})", False
        log.warning("!!! RANDOM WEIGHTS: torchvision %s runs with seeded random weights; its results are NOT "
                    "those of a trained model !!!", spec.name)
    else:
        state, label = pretrained_state_dict(spec, weights_path, download)
        model = seeded(seed, lambda: spec.build(True, **model_kwargs))
        _load_strictly(model, state, f"weights ({label}) do not fit {spec.name}")
        pretrained = True
    model.eval().requires_grad_(False)
    return model.to(device), label, pretrained


def _load_strictly(model: nn.Module, state: Dict[str, Tensor], what: str) -> None:
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
