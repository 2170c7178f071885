"""Image-quality metrics: PSNR, SSIM, MS-SSIM against a reference, and the no-reference BRISQUE.

* full reference, on 8-bit images (both rounded to 256 levels first): PSNR in dB,
  SSIM and MS-SSIM from ``pytorch_msssim`` (Gaussian window 11, σ 1.5; MS-SSIM needs
  161 pixels a side for its 5 scales, NaN below);
* no reference: BRISQUE (Mittal et al., 2012) from the PyPI package ``brisque`` 0.2.0,
  with the SVM model and feature normalisation it ships (LIVE-trained); 0 is best, larger
  is worse (about 0–100). Images under :data:`BRISQUE_MIN_SIDE` pixels a side get NaN.

:class:`RestorationScorer` scores the restored images of an evaluation (task results
carrying a PNG) against the clean images.
"""

from __future__ import annotations

import io
import math
import warnings
from functools import lru_cache
from typing import Any, Dict, List, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_msssim import ms_ssim, ssim
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

from icmh.errors import InvalidInputError
from icmh.extras import optional_import
from icmh.results import TaskResult

MS_SSIM_MIN_SIDE = 161  # pytorch_msssim's 5 scales with an 11-pixel window
SSIM_MIN_SIDE = 11  # one Gaussian window
BRISQUE_MIN_SIDE = 32  # BRISQUE fits its statistics on the image and on its ×½ version
RESTORATION_METRICS = ("psnr", "ssim", "ms_ssim", "brisque")  # PSNR first: the primary metric


def eight_bit(image: Tensor) -> Tensor:
    """A 3×H×W image in [0, 1] as a 1×3×H×W float64 batch rounded to 8-bit levels (values k/255)."""
    return image.detach().cpu().clamp(0, 1).mul(255).round().div(255)[None].double()


def _pair(reference: Tensor, image: Tensor) -> tuple:
    if reference.shape != image.shape:
        raise InvalidInputError(f"cannot compare an image of {tuple(image.shape)} with a reference of "
                                f"{tuple(reference.shape)}")
    return eight_bit(reference), eight_bit(image)


def psnr(reference: Tensor, image: Tensor) -> float:
    """PSNR in dB of the 8-bit ``image`` against the 8-bit ``reference`` (inf when identical)."""
    a, b = _pair(reference, image)
    mse = float(F.mse_loss(a, b))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim_index(reference: Tensor, image: Tensor) -> float:
    """SSIM of ``image`` against ``reference`` (8-bit, colour channels averaged; NaN under 11 pixels a side)."""
    a, b = _pair(reference, image)
    if min(a.shape[-2:]) < SSIM_MIN_SIDE:
        return math.nan
    return float(ssim(a.float(), b.float(), data_range=1.0))


def ms_ssim_index(reference: Tensor, image: Tensor) -> float:
    """MS-SSIM of ``image`` against ``reference`` (8-bit; NaN under 161 pixels a side)."""
    a, b = _pair(reference, image)
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return math.nan
    return float(ms_ssim(a.float(), b.float(), data_range=1.0))


@lru_cache(maxsize=1)
def _brisque_model() -> Any:
    return optional_import("brisque", "eval", "BRISQUE (the brisque package and OpenCV)").BRISQUE(url=False)


def brisque_score(image: Tensor) -> float:
    """BRISQUE of the 8-bit version of ``image`` (3×H×W in [0, 1]): lower is better; NaN under 32 pixels a side.

    Raises :class:`InvalidInputError` when the ``brisque`` package is not installed."""
    if min(image.shape[-2:]) < BRISQUE_MIN_SIDE:
        return math.nan
    pixels = eight_bit(image)[0].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    model = _brisque_model()
    with warnings.catch_warnings():  # brisque 0.2.0 trips NumPy and SciPy deprecation warnings on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(model.score(np.ascontiguousarray(pixels)))


def decode_png(data: bytes) -> Tensor:
    """PNG bytes as a 3×H×W float image in [0, 1]; raises :class:`InvalidInputError` if they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return pil_to_tensor(image.convert("RGB")).float().div_(255)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"a restored image is not a readable PNG: {exc}") from None


def image_quality(reference: Tensor, image: Tensor) -> Dict[str, float]:
    """Every metric of :data:`RESTORATION_METRICS` for ``image`` against ``reference`` (BRISQUE of ``image``)."""
    return {"psnr": psnr(reference, image), "ssim": ssim_index(reference, image),
            "ms_ssim": ms_ssim_index(reference, image), "brisque": brisque_score(image)}


class RestorationScorer:
    """PSNR, SSIM, MS-SSIM against the clean images and BRISQUE of the restored images, averaged over images.

    ``clean`` maps image id → the clean image a restoration is compared with
    (:func:`icmh.restoration.restoration_target`).
    """

    def __init__(self, clean: Mapping[int, Tensor]) -> None:
        self.clean = dict(clean)
        self.scores: List[Dict[str, float]] = []

    def add(self, image_id: int, result: TaskResult) -> None:
        """Add the restored image of ``image_id`` (the PNG of ``result``)."""
        if result.image_png is None:
            raise InvalidInputError(f"the {result.task.value} result of image {image_id} carries no image")
        self.add_image(image_id, decode_png(result.image_png))

    def add_image(self, image_id: int, image: Tensor) -> None:
        """Add an image (3×H×W in [0, 1], the size of the clean image) as the restoration of ``image_id``."""
        self.scores.append(image_quality(self.clean[image_id], image))

    def compute(self) -> Dict[str, float]:
        """The mean of each metric over the images (NaN values left out; NaN if none)."""
        return {name: _nanmean([s[name] for s in self.scores]) for name in RESTORATION_METRICS}


def _nanmean(values: List[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
