"""λ for a task model whose features the paper's presets were not made for.

The adapters minimise ``R + λ·D``. The paper's λ values belong to its models' feature
scales (ResNet-50 stages, R50-FPN levels); a YOLO neck or a MobileNet stage has other
scales, so λ must be re-calibrated (METHOD.md). :func:`calibrate` measures, with the base
codec (no adapters) at each quality, the estimated rate ``R_q`` (bits per pixel from the
likelihoods) and the feature distortion ``D_q`` of the task model on random training
crops, and proposes ``λ_q = k · R_q / D_q``: at ``k = 1`` the two terms weigh the same at
the start of training, so neither the rate nor the task dominates. ``icmh train
--calibrate`` prints the table; ``LAMBDA_PRESETS`` in :mod:`icmh.training.adapters` hold the
values of the shipped adapters (README, "Adapters").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch

from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.models.adapted import training_forward
from icmh.taskmodels import TaskModel
from icmh.training.data import RandomCrops


@dataclass(frozen=True)
class CalibrationPoint:
    """The base codec's estimated rate and the task model's distortion at one quality, and the λ they give."""

    quality: int
    bpp: float
    distortion: float
    lmbda: float


def calibrate(model: TaskModel, codec: str, qualities: Sequence[int], crops: RandomCrops, *, batches: int = 4,
              batch_size: int = 4, balance: float = 1.0, device: str = "cpu") -> List[CalibrationPoint]:
    """``λ_q = balance · R_q / D_q`` for each quality, measured on ``batches`` batches of ``crops`` (see the module)."""
    points = []
    for quality in qualities:
        base = open_frame_codec(CodecOptions(codec=codec, quality=quality, device=device, bundled_adapters=False))
        rates, distortions = [], []
        for step in range(1, batches + 1):
            x = crops.batch(step, batch_size).to(device)
            torch.manual_seed(step)
            with torch.no_grad():
                out = training_forward(base.codec.base, base.loaded.spec.latent_coder, x)
                pixels = x.shape[0] * x.shape[2] * x.shape[3]
                rates.append(float(sum(-torch.log2(l).sum() for l in out["likelihoods"].values()) / pixels))
                distortions.append(float(model.distortion(x, out["x_hat"].clamp(0, 1))))
        bpp, distortion = sum(rates) / len(rates), sum(distortions) / len(distortions)
        points.append(CalibrationPoint(quality, bpp, distortion, balance * bpp / max(distortion, 1e-12)))
    return points
