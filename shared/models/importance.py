"""Importance-map bit allocation and task prompts: two small options beside the SFMA adapters.

Importance map (encoder side, Prompt-ICM style). A small convolutional *selector* reads the
analysis latent ``y`` (M channels, H/16) and predicts, for every position of the hyperprior
grid (``z``: H/64), an integer level ``k ∈ [−3, 3]``. The gain ``m = 2^(k/2)`` (nearest,
×4 onto the ``y`` grid) sets a finer (``m > 1``) or coarser (``m < 1``) quantiser there:

    symbols = round(y·m − μ·m)      coded with the Gaussian conditional of scale σ·m, mean μ·m
    ŷ       = (symbols + μ·m) / m

``σ·m`` and ``μ·m`` are computed in float64 from the float64 hyper-synthesis, and the gains
come from a table of exact float64 constants, so both ends build the same CDF indexes. Where
``k = 0`` (``m = 1``) this is bit for bit the plain ``round(y − μ)``, ``ŷ = symbols + μ``.

The level map travels as a third entropy-coded string, coded with the static 7-level CDF of
the adapter file (:class:`LevelCoder`, CompressAI's rANS). A frame whose map is all zero
carries no such string and is byte-identical to a frame of the same adapters without the
option (the selector's weights are encoder-only and stay out of the adapter id). In
training the level is rounded straight-through and its rate is ``−log2 p(k)`` of the same
static CDF, interpolated between levels for the gradient.

Task prompts (decoder side): a per-channel scale and shift of ``ŷ`` before the synthesis
transform, ``ŷ·(1 + a) + b`` (``2·M`` parameters, zero at the start: the identity).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from compressai.ans import RansDecoder, RansEncoder
from compressai.ops import quantize_ste
from torch import Tensor, nn

LEVEL_MIN, LEVEL_MAX = -3, 3
N_LEVELS = LEVEL_MAX - LEVEL_MIN + 1
Z_TO_Y = 4  # the selector's grid (z) is 4× coarser than y
CDF_PRECISION = 16  # CompressAI's rANS precision
SELECTOR_WIDTH = 16
#: Default level probabilities ∝ 4^(−|k|): most positions keep the codec's own quantiser.
DEFAULT_LEVEL_PMF = tuple(4.0 ** -abs(k) for k in range(LEVEL_MIN, LEVEL_MAX + 1))
MIN_SYMBOLS = 2  # CompressAI's RansEncoder corrupts memory on a one-symbol message: pad with level 0
_TAIL_MASS = 1e-9  # the rANS bypass symbol's share (never used: levels are clamped)


def _exact_gain(level: int) -> float:
    """``2^(level/2)`` as an exactly reproducible float64: a power of two, times ``sqrt(2)`` for odd levels
    (IEEE ``sqrt`` and multiplication by a power of two are exact / correctly rounded everywhere)."""
    half, odd = divmod(level, 2)
    return math.ldexp(math.sqrt(2.0) if odd else 1.0, half)


GAIN_TABLE = torch.tensor([_exact_gain(k) for k in range(LEVEL_MIN, LEVEL_MAX + 1)], dtype=torch.float64)


def level_gains(levels: Tensor) -> Tensor:
    """Float64 gains ``2^(k/2)`` of integer ``levels`` (…×h×w on the z grid), upsampled ×4 (nearest) to the y grid."""
    gains = GAIN_TABLE[(levels.to(torch.int64) - LEVEL_MIN).cpu()]
    return gains.repeat_interleave(Z_TO_Y, -2).repeat_interleave(Z_TO_Y, -1)


def quantized_level_cdf(pmf=DEFAULT_LEVEL_PMF) -> Tensor:
    """The rANS CDF (int32, ``N_LEVELS + 2`` entries, last 2^16) of level probabilities ``pmf`` plus a tiny bypass tail."""
    from compressai._CXX import pmf_to_quantized_cdf

    total = float(sum(pmf))
    probs = [p / total for p in pmf] + [_TAIL_MASS]
    return torch.tensor(pmf_to_quantized_cdf(probs, CDF_PRECISION), dtype=torch.int32)


class LevelCoder:
    """rANS coding of a level map with one static CDF (the adapter file's ``level_cdf``)."""

    def __init__(self, cdf: Tensor) -> None:
        self.cdf = [cdf.to(torch.int32).cpu().tolist()]
        self.lengths = [int(cdf.numel())]
        self.offsets = [LEVEL_MIN]

    def encode(self, levels: Tensor) -> bytes:
        """Encode integer levels in [−3, 3] (any shape, row-major) into one string."""
        values = levels.reshape(-1).to(torch.int32).tolist()
        values += [0] * (MIN_SYMBOLS - len(values))
        return RansEncoder().encode_with_indexes(values, [0] * len(values), self.cdf, self.lengths, self.offsets)

    def decode(self, string: bytes, shape) -> Tensor:
        """Decode ``prod(shape)`` levels from ``string``; returns an int64 tensor of ``shape``.

        Raises :class:`~icmh.errors.BitstreamError` for a string longer than any encoder writes.
        """
        from icmh.models.latent_coding import padded_stream

        count = int(torch.Size(shape).numel())
        coded = max(count, MIN_SYMBOLS)
        values = RansDecoder().decode_with_indexes(padded_stream(string, coded), [0] * coded,
                                                   self.cdf, self.lengths, self.offsets)
        return torch.tensor(values[:count], dtype=torch.int64).reshape(shape).clamp_(LEVEL_MIN, LEVEL_MAX)

    def bits(self, levels: Tensor) -> float:
        """The ideal code length of ``levels`` in bits (``−Σ log2 p(k)``), without the coder's overhead."""
        return float(level_bits(torch.as_tensor(self.cdf[0]))[(levels.to(torch.int64) - LEVEL_MIN).cpu()].sum())


def level_bits(cdf: Tensor) -> Tensor:
    """``−log2 p(k)`` of each level under the quantised ``cdf`` (float32, ``N_LEVELS`` entries)."""
    cdf = cdf.to(torch.float64)
    probs = (cdf[1:N_LEVELS + 1] - cdf[:N_LEVELS]) / float(1 << CDF_PRECISION)
    return (-torch.log2(probs)).float()


class ImportanceSelector(nn.Module):
    """Per-position quantiser levels from ``y``: ``k = round(3·tanh(net(y)))`` on the z grid.

    ``net``: 1×1 conv M→16, ReLU, 3×3/2 conv, ReLU, 3×3/2 conv →1 (about 4–6 k parameters).
    Its last layer starts at zero, so a new selector gives level 0 everywhere (the codec's own
    quantiser, and frames without a map). ``level_cdf`` (int32 buffer) is the static CDF the
    level map is coded with; both are stored in the adapter file. ``override`` (not stored)
    replaces the selector's output by a fixed level map (1×1×h×w or N×1×h×w): a hook for
    experiments and tests.
    """

    def __init__(self, latent_channels: int, width: int = SELECTOR_WIDTH) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, width, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, stride=2, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("level_cdf", quantized_level_cdf())
        self.override: Optional[Tensor] = None

    def continuous_levels(self, y: Tensor) -> Tensor:
        """Levels before rounding, in (−3, 3), N×1×h×w (h = y's height / 4)."""
        return LEVEL_MAX * torch.tanh(self.net(y.float()))

    def forward(self, y: Tensor) -> Tensor:
        """Training: straight-through rounded levels (float, N×1×h×w); the override if one is set."""
        if self.override is not None:
            return self._overridden(y).to(y.dtype)
        return quantize_ste(self.continuous_levels(y))

    @torch.no_grad()
    def levels(self, y: Tensor) -> Tensor:
        """Integer levels (int64, N×1×h×w, on the CPU) for coding ``y``."""
        if self.override is not None:
            return self._overridden(y)
        return torch.round(self.continuous_levels(y)).to(torch.int64).clamp_(LEVEL_MIN, LEVEL_MAX).cpu()

    def _overridden(self, y: Tensor) -> Tensor:
        n, _, height, width = y.shape
        levels = self.override.to(torch.int64).cpu().clamp(LEVEL_MIN, LEVEL_MAX)
        if tuple(levels.shape[-2:]) != (height // Z_TO_Y, width // Z_TO_Y):
            raise ValueError(f"importance override of {tuple(levels.shape[-2:])} positions does not fit a "
                             f"{height // Z_TO_Y}×{width // Z_TO_Y} latent grid")
        return levels.reshape(-1, 1, *levels.shape[-2:]).expand(n, 1, -1, -1)

    def level_likelihoods(self, levels: Tensor) -> Tensor:
        """Training likelihoods ``p(k)`` of straight-through ``levels`` under ``level_cdf``.

        The forward value is the exact ``p(round(k))``; the gradient is that of the code length
        interpolated linearly between neighbouring levels.
        """
        bits = level_bits(self.level_cdf).to(levels.device)
        position = (levels - LEVEL_MIN).clamp(0, N_LEVELS - 1)
        low = position.detach().floor().clamp(max=N_LEVELS - 2)
        frac = position - low
        low = low.long()
        smooth = bits[low] * (1 - frac) + bits[low + 1] * frac
        exact = bits[position.detach().round().long()]
        return torch.exp2(-(smooth + (exact - smooth).detach()))

    def selector_parameters(self) -> int:
        """Trainable parameters of the selector."""
        return sum(p.numel() for p in self.net.parameters())


def upsample_gains(levels: Tensor) -> Tensor:
    """Training gains ``2^(k/2)`` (differentiable in ``k``) upsampled ×4 (nearest) to the y grid."""
    return F.interpolate(torch.exp2(levels / 2), scale_factor=Z_TO_Y, mode="nearest")


class TaskPrompts(nn.Module):
    """Decoder-side task prompt: ``ŷ·(1 + a) + b`` per channel before ``g_s`` (zero at the start)."""

    def __init__(self, latent_channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(latent_channels))
        self.shift = nn.Parameter(torch.zeros(latent_channels))

    def forward(self, y_hat: Tensor) -> Tensor:
        """The prompted latent (same shape and dtype as ``y_hat``)."""
        scale = (1 + self.scale).to(y_hat.dtype).view(1, -1, 1, 1)
        return y_hat * scale + self.shift.to(y_hat.dtype).view(1, -1, 1, 1)


def level_strings_of(levels: Optional[Tensor], cdf: Tensor) -> Optional[List[Optional[bytes]]]:
    """One level-map string per image (``None`` where the map is all zero), or ``None`` without levels."""
    if levels is None:
        return None
    coder = LevelCoder(cdf)
    return [None if not bool(levels[i].any()) else coder.encode(levels[i]) for i in range(levels.shape[0])]
