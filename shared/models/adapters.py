"""Spatial-Frequency Modulation Adapters (SFMA) and their ablation variants.

Every adapter maps ``x`` (N×C×H×W) to ``x + branches(x)``. The up-projections
(``d → C``) start at zero by default, so a fresh adapter is the identity and the adapted
codec is bit for bit the base codec; ``init="authors"`` keeps PyTorch's default
initialisation everywhere, as the authors' code does.

Variants (registry :data:`ADAPTER_VARIANTS`):

* ``sfma``  — spatial branch + frequency branch in parallel (the method),
* ``sma``   — spatial branch only,
* ``fma``   — frequency branch only,
* ``plain`` — a bottleneck adapter: two 1×1 projections with a ReLU between.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INITS = ("zero", "authors")


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1×1 convolution with bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


def depthwise(ch: int, kernel_size: int) -> nn.Conv2d:
    """A depth-wise ``kernel_size``² convolution with 'same' padding and bias."""
    return nn.Conv2d(ch, ch, kernel_size, padding=kernel_size // 2, groups=ch)


class SpatialModulation(nn.Module):
    """SMA: ``up(ReLU(DW5x5(down_a(x)) ⊙ down_b(x)))``, a gated product in space."""

    def __init__(self, channels: int, mid_dim: int) -> None:
        super().__init__()
        self.down_a = conv1x1(channels, mid_dim)
        self.dw = depthwise(mid_dim, 5)
        self.down_b = conv1x1(channels, mid_dim)
        self.up = conv1x1(mid_dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.relu(self.dw(self.down_a(x)) * self.down_b(x)))


class FrequencyModulation(nn.Module):
    """FMA: gate the amplitude spectrum of ``down(x)``, keep its phase, project back up.

    ``U = rfft2(down(x))``, ``G = sigmoid(mix(ReLU(DW3x3(|U|))))``,
    ``out = up(ReLU(irfft2(U ⊙ G)))``. Multiplying the complex spectrum by the real,
    positive gate scales the amplitude and leaves the phase unchanged.
    """

    def __init__(self, channels: int, mid_dim: int) -> None:
        super().__init__()
        self.down = conv1x1(channels, mid_dim)
        self.dw = depthwise(mid_dim, 3)
        self.mix = conv1x1(mid_dim, mid_dim)
        self.up = conv1x1(mid_dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        u = self.down(x)
        height, width = u.shape[-2:]
        spectrum = torch.fft.rfft2(u.float(), dim=(-2, -1), norm="backward")
        gate = torch.sigmoid(self.mix(F.relu(self.dw(spectrum.abs()))))
        filtered = torch.fft.irfft2(spectrum * gate, s=(height, width), dim=(-2, -1), norm="backward")
        return self.up(F.relu(filtered.to(x.dtype)))


class PlainBottleneck(nn.Module):
    """A plain bottleneck adapter branch: ``up(ReLU(down(x)))``."""

    def __init__(self, channels: int, mid_dim: int) -> None:
        super().__init__()
        self.down = conv1x1(channels, mid_dim)
        self.up = conv1x1(mid_dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.relu(self.down(x)))


class Adapter(nn.Module):
    """A residual adapter: ``x + Σ branch(x)`` over parallel branches."""

    def __init__(self, branches: Dict[str, nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for branch in self.branches.values():
            out = out + branch(x)
        return out

    def zero_up_projections(self) -> None:
        """Set every ``d → C`` projection to zero, making the adapter the identity."""
        for branch in self.branches.values():
            nn.init.zeros_(branch.up.weight)
            nn.init.zeros_(branch.up.bias)


ADAPTER_VARIANTS: Dict[str, Callable[[int, int], Dict[str, nn.Module]]] = {
    "sfma": lambda c, d: {"sma": SpatialModulation(c, d), "fma": FrequencyModulation(c, d)},
    "sma": lambda c, d: {"sma": SpatialModulation(c, d)},
    "fma": lambda c, d: {"fma": FrequencyModulation(c, d)},
    "plain": lambda c, d: {"plain": PlainBottleneck(c, d)},
}


def build_adapter(variant: str, channels: int, mid_dim: int = 64, init: str = "zero") -> Adapter:
    """Build one adapter of ``variant`` for ``channels`` channels and bottleneck ``mid_dim``.

    Raises ``ValueError`` for an unknown variant or initialisation, or ``mid_dim < 1``.
    """
    if variant not in ADAPTER_VARIANTS:
        raise ValueError(f"unknown adapter variant {variant!r} (valid: {', '.join(ADAPTER_VARIANTS)})")
    if init not in INITS:
        raise ValueError(f"unknown adapter initialisation {init!r} (valid: {', '.join(INITS)})")
    if mid_dim < 1:
        raise ValueError(f"adapter bottleneck must be >= 1, got {mid_dim}")
    adapter = Adapter(ADAPTER_VARIANTS[variant](channels, mid_dim))
    if init == "zero":
        adapter.zero_up_projections()
    return adapter
