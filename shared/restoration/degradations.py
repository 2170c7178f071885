"""Seeded, reproducible degradations: what the low-level (LL-ICM) consumers restore.

One degradation per restoration task, each a frozen dataclass whose fields are its
documented parameters (``docs/restoration.md`` lists them with their effect):

* ``denoise`` — :class:`GaussianNoise`: additive white Gaussian noise of σ = 25/255;
* ``deblur`` — :class:`GaussianBlur`: isotropic Gaussian blur (σ = 2 px, 13×13 kernel,
  edges replicated) plus white Gaussian noise of σ = 0.01 (2.55/255);
* ``super-resolution`` — :class:`BicubicDownscale`: bicubic ×½ with antialiasing (the
  usual "bicubic LR" of SR benchmarks); the consumer restores the full, ×2 size;
* ``low-light`` — :class:`LowLight`: exposure ×0.1 in linear light (sRGB decoded with
  γ = 2.2, about 3⅓ stops under), then shot noise (Gaussian approximation of Poisson,
  variance 0.0025·signal, i.e. 400 photons at full scale) and read noise (σ = 0.002),
  re-encoded with γ = 2.2.

Every degraded image is clipped to [0, 1] and rounded to 8 bits, as a camera would deliver
it. :func:`degrade` is a pure function computed on the CPU: the same clean image and seed give
the same pixels, another seed other noise (the noise comes from a seeded ``torch.Generator``;
blur and resampling are plain float32 filters). :func:`restoration_target` is the clean
image a restoration is scored against (for ×2 super-resolution: cropped to even sides).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from icmh.errors import InvalidInputError
from icmh.tasks import RESTORATION_TASKS, Task


def quantize(image: Tensor) -> Tensor:
    """``image`` clipped to [0, 1] and rounded to the nearest of 256 levels (an 8-bit picture, as floats)."""
    return image.clamp(0, 1).mul(255).round().div(255)


def _noise(shape: torch.Size, generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class Degradation(ABC):
    """A degradation; subclasses are frozen dataclasses whose fields are its parameters."""

    @property
    def scale(self) -> int:
        """Restored size / degraded size, per side (2 for ×2 super-resolution, else 1)."""
        return 1

    @abstractmethod
    def apply(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        """The degraded N×3×h×w batch of the clean N×3×H×W batch ``clean`` (float32, [0, 1])."""

    @abstractmethod
    def describe(self) -> str:
        """One line with the parameters, for metadata, reports and ``--help``."""

    def target(self, clean: Tensor) -> Tensor:
        """The part of ``clean`` a restoration of the degraded image reproduces (default: all of it)."""
        return clean


@dataclass(frozen=True)
class GaussianNoise(Degradation):
    """Additive white Gaussian noise of standard deviation ``sigma`` (on [0, 1] intensities)."""

    sigma: float = 25 / 255

    def apply(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        """``clean + sigma·n``, n ~ N(0, 1) per pixel and channel, quantised to 8 bits."""
        return quantize(clean + self.sigma * _noise(clean.shape, generator))

    def describe(self) -> str:
        """E.g. ``additive Gaussian noise σ=25/255``."""
        return f"additive Gaussian noise σ={self.sigma * 255:g}/255"


def gaussian_kernel(sigma: float) -> Tensor:
    """The normalised 1-D Gaussian of ``sigma`` pixels over ``2·ceil(3σ) + 1`` taps."""
    radius = math.ceil(3 * sigma)
    positions = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-positions ** 2 / (2 * sigma ** 2))
    return (kernel / kernel.sum()).float()


@dataclass(frozen=True)
class GaussianBlur(Degradation):
    """Isotropic Gaussian blur of ``blur_sigma`` pixels (kernel ``2·ceil(3σ) + 1`` square, edges replicated),
    then white Gaussian noise of ``noise_sigma``."""

    blur_sigma: float = 2.0
    noise_sigma: float = 0.01

    @property
    def kernel_size(self) -> int:
        """Side of the square blur kernel (13 for σ = 2)."""
        return 2 * math.ceil(3 * self.blur_sigma) + 1

    def blur(self, clean: Tensor) -> Tensor:
        """``clean`` convolved with the separable Gaussian kernel (no noise)."""
        kernel = gaussian_kernel(self.blur_sigma)
        radius = kernel.numel() // 2
        channels = clean.shape[1]
        padded = F.pad(clean, (radius, radius, radius, radius), mode="replicate")
        rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    def apply(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        """The blurred image plus noise, quantised to 8 bits."""
        return quantize(self.blur(clean) + self.noise_sigma * _noise(clean.shape, generator))

    def describe(self) -> str:
        """E.g. ``Gaussian blur σ=2 px (13×13 kernel) + noise σ=2.55/255``."""
        size = self.kernel_size
        return (f"Gaussian blur σ={self.blur_sigma:g} px ({size}×{size} kernel) + noise "
                f"σ={self.noise_sigma * 255:g}/255")


@dataclass(frozen=True)
class BicubicDownscale(Degradation):
    """Bicubic downscaling by ``factor`` with antialiasing (``torch.nn.functional.interpolate``, ``antialias=True``);
    sides that are not multiples of ``factor`` are first cropped (bottom / right)."""

    factor: int = 2

    @property
    def scale(self) -> int:
        """``factor``: the restoration is that many times larger per side."""
        return self.factor

    def apply(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        """The low-resolution image, ``scale`` times smaller on each side, quantised to 8 bits (no noise)."""
        target = self.target(clean)
        size = (target.shape[-2] // self.scale, target.shape[-1] // self.scale)
        return quantize(F.interpolate(target, size=size, mode="bicubic", antialias=True, align_corners=False))

    def target(self, clean: Tensor) -> Tensor:
        """``clean`` cropped (bottom / right) to sides that are multiples of ``scale``."""
        height, width = clean.shape[-2:]
        return clean[..., : height - height % self.scale, : width - width % self.scale]

    def describe(self) -> str:
        """E.g. ``bicubic downscale ×1/2 (antialiased)``."""
        return f"bicubic downscale ×1/{self.scale} (antialiased)"


@dataclass(frozen=True)
class LowLight(Degradation):
    """Under-exposure in linear light with sensor noise.

    ``linear = clean ** gamma``; ``signal = exposure · linear``;
    ``noisy = signal + sqrt(shot · signal + read²) · n`` (n ~ N(0, 1): Gaussian approximation of
    Poisson shot noise with ``1/shot`` photons at full scale, plus read noise);
    ``degraded = clip(noisy, 0, 1) ** (1/gamma)``, quantised to 8 bits. In sRGB terms the image
    gets about ``exposure ** (1/gamma)`` (0.35) times darker.
    """

    exposure: float = 0.1
    gamma: float = 2.2
    shot: float = 0.0025
    read: float = 0.002

    def apply(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        """The dark, noisy image, quantised to 8 bits."""
        signal = self.exposure * clean.clamp(0, 1) ** self.gamma
        noisy = signal + torch.sqrt(self.shot * signal + self.read ** 2) * _noise(clean.shape, generator)
        return quantize(noisy.clamp(0, 1) ** (1 / self.gamma))

    def describe(self) -> str:
        """E.g. ``exposure ×0.1 in linear light (γ=2.2) + shot noise 0.0025·signal + read noise σ=0.002``."""
        return (f"exposure ×{self.exposure:g} in linear light (γ={self.gamma:g}) + shot noise variance "
                f"{self.shot:g}·signal + read noise σ={self.read:g}")


DEGRADATIONS: Dict[Task, Degradation] = {
    Task.DENOISE: GaussianNoise(),
    Task.DEBLUR: GaussianBlur(),
    Task.SUPER_RESOLUTION: BicubicDownscale(),
    Task.LOW_LIGHT: LowLight(),
}
"""The degradation of each restoration task (one entry per task of :data:`~icmh.tasks.RESTORATION_TASKS`)."""


def degradation_of(task: Task) -> Degradation:
    """The degradation of restoration task ``task``; raises :class:`InvalidInputError` for another task."""
    task = Task.parse(task.value if isinstance(task, Task) else task)
    if task not in DEGRADATIONS:
        valid = ", ".join(t.value for t in RESTORATION_TASKS)
        raise InvalidInputError(f"task {task.value} has no degradation (restoration tasks: {valid})")
    return DEGRADATIONS[task]


def degradation_parameters(task: Task) -> Dict[str, object]:
    """The parameters of ``task``'s degradation as plain values (for metadata and reports)."""
    degradation = degradation_of(task)
    return {"kind": type(degradation).__name__, **asdict(degradation), "scale": degradation.scale}


def _batched(clean: Tensor) -> Tensor:
    if not isinstance(clean, Tensor) or not clean.is_floating_point() or clean.dim() not in (3, 4) \
            or clean.shape[-3] != 3 or clean.shape[-2] < 2 or clean.shape[-1] < 2:
        shape = tuple(clean.shape) if isinstance(clean, Tensor) else type(clean).__name__
        raise InvalidInputError(f"a clean image must be a 3×H×W or N×3×H×W float tensor of at least 2×2 pixels "
                                f"(got {shape})")
    return clean.detach().float().cpu().reshape(-1, *clean.shape[-3:])


def degrade(task: Task, clean: Tensor, seed: int) -> Tensor:
    """The clean image(s) ``clean`` (3×H×W or N×3×H×W, [0, 1]) degraded for restoration task ``task``.

    Deterministic: computed on the CPU from a generator seeded with ``seed``; the same
    inputs give identical outputs. Returns the same layout as ``clean``; for ×2
    super-resolution, sides are halved (odd sides first cropped). Raises
    :class:`InvalidInputError` for a task without degradation or a tensor that is not an image.
    """
    degradation = degradation_of(task)
    batch = _batched(clean)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    degraded = degradation.apply(batch, generator)
    return degraded if clean.dim() == 4 else degraded[0]


def restoration_target(task: Task, clean: Tensor) -> Tensor:
    """The clean image that the restoration of ``degrade(task, clean, seed)`` is compared with:
    ``clean`` itself, or for ×2 super-resolution ``clean`` cropped to even sides."""
    return degradation_of(task).target(clean)
