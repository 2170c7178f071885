"""Deterministic entropy coding of a codec's latents ``y`` and hyper-latents ``z``.

The arithmetic decoder only works if it is driven by the *same* CDF indexes (and
means) that the encoder used. CompressAI computes them with the float32 hyper-synthesis
``h_s`` on whatever device and thread count is at hand, so a frame encoded on one
machine can decode to garbage on another (CompressAI issues #279, #309, #320).

This module puts everything between the two entropy coders on one well-defined path:

* ``z`` is coded with the factorized prior's integer tables; ``ẑ = symbols + medians``
  is computed in float64 (an exact operation).
* ``h_s`` (and, for autoregressive codecs, the context model and the entropy-parameter
  network) run on the CPU in float64, from frozen float64 copies of the base modules,
  on both ends. Float64 rounding noise (~1e-16 relative) is 2^29 times smaller than
  float32's, so the scale that selects a CDF practically never lands on the other side
  of a table boundary on another machine, thread count or batch size.
* The scale → index look-up is a ``searchsorted`` in float64 against the codec's own
  scale table (the same rule as CompressAI's ``build_indexes``).
* The encoder stores a CRC32 of all indexes in the frame header (``index_check``);
  the decoder recomputes it and raises :class:`IndexMismatchError` instead of returning
  garbage if anything is left.

Strings handed to the rANS decoder are padded with zeros sized from the symbol count
and string length, because the C++ decoder reads without bounds checks.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.ans import RansDecoder, RansEncoder
from torch import Tensor, nn

from icmh.errors import BitstreamError, IndexMismatchError
from icmh.models.importance import LevelCoder, level_gains, level_strings_of
from icmh.models.registry import AUTOREGRESSIVE, MEAN_SCALE_HYPERPRIOR, SCALE_HYPERPRIOR

EXACT = torch.float64
CONTEXT_KERNEL = 5
CONTEXT_PAD = CONTEXT_KERNEL // 2
Z_TO_Y = 4  # spatial factor between z and y


def index_check(indexes: Tensor, levels: Optional[Tensor] = None) -> int:
    """CRC32 of an index tensor (as little-endian int32, in memory order), continued over the
    importance level map (same encoding) when the frame carries one."""
    data = indexes.to(torch.int32).contiguous().cpu().numpy().astype("<i4").tobytes()
    crc = zlib.crc32(data)
    if levels is not None:
        crc = zlib.crc32(levels.to(torch.int32).contiguous().cpu().numpy().astype("<i4").tobytes(), crc)
    return crc & 0xFFFFFFFF


class _CdfTables:
    """CPU copies of one entropy model's quantised CDF tables, for the rANS coder."""

    def __init__(self, module: nn.Module) -> None:
        self.cdf = module.quantized_cdf.cpu().tolist()
        self.lengths = module.cdf_length.reshape(-1).int().cpu().tolist()
        self.offsets = module.offset.reshape(-1).int().cpu().tolist()

    def encode(self, symbols: Tensor, indexes: Tensor) -> bytes:
        """rANS-encode integer ``symbols`` with CDF ``indexes`` (same shape)."""
        return RansEncoder().encode_with_indexes(
            symbols.reshape(-1).to(torch.int32).tolist(),
            indexes.reshape(-1).to(torch.int32).tolist(),
            self.cdf, self.lengths, self.offsets,
        )

    def decode(self, string: bytes, indexes: Tensor) -> Tensor:
        """Decode ``indexes.numel()`` symbols from ``string``; returns an int64 tensor shaped like ``indexes``."""
        values = RansDecoder().decode_with_indexes(
            padded_stream(string, indexes.numel()),
            indexes.reshape(-1).to(torch.int32).tolist(),
            self.cdf, self.lengths, self.offsets,
        )
        return torch.tensor(values, dtype=torch.int64).reshape(indexes.shape)


MAX_BYTES_PER_SYMBOL = 8  # an encoder never writes more: a symbol plus the bypass chunks of an int32 value


def padded_stream(string: bytes, n_symbols: int) -> bytes:
    """Return ``string`` followed by enough zero bytes that no decode can read past it.

    Raises :class:`BitstreamError` for a string longer than any encoder writes for
    ``n_symbols`` symbols (:data:`MAX_BYTES_PER_SYMBOL` each), so the padding — and the
    memory a frame can make the decoder allocate — stays proportional to its latent.

    Per symbol the rANS decoder reads at most one 32-bit word once it is in the zero
    padding (8 bytes per symbol below). A bypass run reads 4-bit chunks: its length is a sum
    of chunks taken from the stream, so the chunks of all runs together come from at most
    ``2·len(string)`` nibbles of real data, each adding at most 15 chunks to read from the
    zeros: ``30·len(string)`` nibbles, 16 bytes per string byte with room to spare.
    """
    if len(string) > MAX_BYTES_PER_SYMBOL * n_symbols + 64:
        raise BitstreamError(f"entropy-coded string of {len(string)} bytes is longer than any encoder writes for "
                             f"{n_symbols} symbols")
    return bytes(string) + bytes(8 * n_symbols + 16 * len(string) + 64)


@dataclass
class CodedLatents:
    """What the latent coder produced for a batch: one entry per image."""

    y_strings: List[bytes]
    z_strings: List[bytes]
    z_shape: Tuple[int, int]
    index_checks: List[int]
    y_hat: Tensor  # float32, CPU: exactly what the decoder will reconstruct
    level_strings: Optional[List[Optional[bytes]]] = None  # importance maps (None: all zero, no string)


class LatentCoder:
    """Base: codes ``z`` with the factorized prior and ``y`` with the Gaussian conditional."""

    def __init__(self, base: nn.Module) -> None:
        self.z_tables = _CdfTables(base.entropy_bottleneck)
        self.y_tables = _CdfTables(base.gaussian_conditional)
        self.medians = base.entropy_bottleneck.quantiles[:, 0, 1].detach().to(EXACT).cpu()
        gc = base.gaussian_conditional
        self.scale_bound = float(gc.lower_bound_scale.bound.item())
        self.scale_thresholds = gc.scale_table[:-1].detach().to(EXACT).cpu().contiguous()
        self.h_s = _exact_copy(base.h_s)

    # -- z ---------------------------------------------------------------------------------
    def _z_indexes(self, shape: Tuple[int, int]) -> Tensor:
        channels = self.medians.numel()
        return torch.arange(channels, dtype=torch.int32).repeat_interleave(shape[0] * shape[1])

    def _code_z(self, z: Tensor) -> Tuple[List[bytes], Tensor]:
        """Encode ``z`` (N×C×h×w); return its strings and ``ẑ`` in float64."""
        shape = tuple(z.shape[-2:])
        medians = self.medians.view(1, -1, 1, 1)
        symbols = torch.round(z.detach().cpu().to(EXACT) - medians).to(torch.int64)
        indexes = self._z_indexes(shape)
        strings = [self.z_tables.encode(symbols[i], indexes) for i in range(z.shape[0])]
        return strings, symbols.to(EXACT) + medians

    def _decode_z(self, strings: Sequence[bytes], shape: Tuple[int, int]) -> Tensor:
        indexes = self._z_indexes(shape)
        symbols = torch.stack([self.z_tables.decode(s, indexes) for s in strings])
        return symbols.reshape(len(strings), -1, *shape).to(EXACT) + self.medians.view(1, -1, 1, 1)

    # -- scale -> CDF index -----------------------------------------------------------------
    def scale_indexes(self, scales: Tensor) -> Tensor:
        """CDF indexes of float64 ``scales``: CompressAI's ``build_indexes`` rule, in float64."""
        bounded = scales.clamp(min=self.scale_bound).contiguous()
        return torch.searchsorted(self.scale_thresholds, bounded, right=False).to(torch.int32)

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def compress(self, y: Tensor, z: Tensor, levels: Optional[Tensor] = None,
                 level_cdf: Optional[Tensor] = None) -> CodedLatents:
        """Entropy-code a batch of latents ``y`` with hyper-latents ``z``.

        ``levels`` (int, N×1×h×w on the z grid) is an importance map (:mod:`icmh.models.importance`),
        coded with ``level_cdf``; an image whose map is all zero is coded exactly as without one.
        """
        z_strings, z_hat = self._code_z(z)
        level_strings = level_strings_of(levels, level_cdf)
        per_image = None if level_strings is None else [None if s is None else levels[i]
                                                        for i, s in enumerate(level_strings)]
        y_strings, checks, y_hat = self._code_y(y.detach().cpu().to(EXACT), z_hat, per_image)
        return CodedLatents(y_strings, z_strings, tuple(z.shape[-2:]), checks, y_hat, level_strings)

    @torch.no_grad()
    def decompress(
        self,
        y_strings: Sequence[bytes],
        z_strings: Sequence[bytes],
        z_shape: Tuple[int, int],
        index_checks: Optional[Sequence[int]] = None,
        level_strings: Optional[Sequence[Optional[bytes]]] = None,
        level_cdf: Optional[Tensor] = None,
    ) -> Tensor:
        """Decode a batch of latents; returns ``ŷ`` (float32, CPU).

        ``level_strings``: each image's importance-map string (``None``: no map), decoded with
        ``level_cdf``. Raises :class:`IndexMismatchError` when ``index_checks`` is given and the
        indexes derived here differ from the encoder's.
        """
        if len(y_strings) != len(z_strings):
            raise ValueError("need one y string and one z string per image")
        z_hat = self._decode_z(z_strings, tuple(z_shape))
        levels = None
        if level_strings is not None and any(s is not None for s in level_strings):
            if level_cdf is None:
                raise BitstreamError("the frame carries an importance map but no level CDF is loaded here")
            coder = LevelCoder(level_cdf)
            levels = [None if s is None else coder.decode(s, (1, *z_shape)) for s in level_strings]
        return self._decode_y(y_strings, z_hat, index_checks, levels)

    def _code_y(self, y: Tensor, z_hat: Tensor,
                levels: Optional[List[Optional[Tensor]]] = None) -> Tuple[List[bytes], List[int], Tensor]:
        raise NotImplementedError

    def _decode_y(self, strings: Sequence[bytes], z_hat: Tensor, checks: Optional[Sequence[int]],
                  levels: Optional[List[Optional[Tensor]]] = None) -> Tensor:
        raise NotImplementedError


def _exact_copy(module: nn.Module) -> nn.Module:
    """A frozen float64 CPU copy of ``module``."""
    clone = copy.deepcopy(module).to(device="cpu", dtype=EXACT).eval()
    clone.requires_grad_(False)
    return clone


def _verify(expected: Optional[int], indexes: Tensor, image: int, levels: Optional[Tensor] = None) -> int:
    actual = index_check(indexes, levels)
    if expected is not None and actual != expected:
        raise IndexMismatchError(
            f"image {image}: entropy-coding indexes differ from the encoder's "
            f"(check {actual:08x} != {expected:08x}); the frame cannot be decoded exactly"
        )
    return actual


class HyperpriorCoder(LatentCoder):
    """Scale (``bmshj2018-hyperprior``) or mean-scale (``mbt2018-mean``) hyperprior."""

    def __init__(self, base: nn.Module, with_means: bool) -> None:
        super().__init__(base)
        self.with_means = with_means

    def _params(self, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        params = self.h_s(z_hat)
        if self.with_means:
            scales, means = params.chunk(2, 1)
            return scales, means
        return params, torch.zeros_like(params)

    def _code_y(self, y, z_hat, levels=None):
        scales, means = self._params(z_hat)
        if levels is not None and any(k is not None for k in levels):
            return self._code_y_scaled(y, scales, means, levels)
        indexes = self.scale_indexes(scales)
        symbols = torch.round(y - means).to(torch.int64)
        strings = [self.y_tables.encode(symbols[i], indexes[i]) for i in range(y.shape[0])]
        checks = [index_check(indexes[i]) for i in range(y.shape[0])]
        return strings, checks, (symbols.to(EXACT) + means).float()

    def _code_y_scaled(self, y, scales, means, levels):
        """Per image: the plain path where its map is ``None``, else the importance quantiser
        ``round(y·m − μ·m)`` with scales ``σ·m`` (all float64), ``ŷ = (symbols + μ·m) / m``."""
        strings, checks, y_hats = [], [], []
        for i in range(y.shape[0]):
            scale, mean, gains = self._scaled(scales[i], means[i], None if levels[i] is None else levels[i])
            indexes = self.scale_indexes(scale)
            symbols = torch.round(y[i] * gains - mean if gains is not None else y[i] - mean).to(torch.int64)
            strings.append(self.y_tables.encode(symbols, indexes))
            checks.append(index_check(indexes, levels[i]))
            y_hats.append(symbols.to(EXACT) + mean if gains is None else (symbols.to(EXACT) + mean) / gains)
        return strings, checks, torch.stack(y_hats).float()

    @staticmethod
    def _scaled(scales: Tensor, means: Tensor, levels: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        if levels is None:
            return scales, means, None
        gains = level_gains(levels.reshape(1, *levels.shape[-2:]))  # 1×H×W, float64
        return scales * gains, means * gains, gains

    def _decode_y(self, strings, z_hat, checks, levels=None):
        scales, means = self._params(z_hat)
        if levels is not None:
            y_hats = []
            for i, string in enumerate(strings):
                scale, mean, gains = self._scaled(scales[i], means[i], levels[i])
                indexes = self.scale_indexes(scale)
                _verify(None if checks is None else checks[i], indexes, i, levels[i])
                symbols = self.y_tables.decode(string, indexes).to(EXACT)
                y_hats.append(symbols + mean if gains is None else (symbols + mean) / gains)
            return torch.stack(y_hats).float()
        indexes = self.scale_indexes(scales)
        symbols = []
        for i, string in enumerate(strings):
            _verify(None if checks is None else checks[i], indexes[i], i)
            symbols.append(self.y_tables.decode(string, indexes[i]))
        return (torch.stack(symbols).to(EXACT) + means).float()


class AutoregressiveCoder(LatentCoder):
    """Hyperprior + causal 5×5 context model (``cheng2020-anchor``): serial, per position."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__(base)
        self.entropy_parameters = _exact_copy(base.entropy_parameters)
        cp = base.context_prediction
        self.ctx_weight = (cp.weight * cp.mask).detach().to(EXACT).cpu()
        self.ctx_bias = cp.bias.detach().to(EXACT).cpu()
        self.channels = int(cp.in_channels)

    def _position_params(self, y_pad: Tensor, params: Tensor, h: int, w: int) -> Tuple[Tensor, Tensor]:
        crop = y_pad[:, :, h : h + CONTEXT_KERNEL, w : w + CONTEXT_KERNEL]
        ctx = F.conv2d(crop, self.ctx_weight, self.ctx_bias)
        gaussian = self.entropy_parameters(torch.cat((params[:, :, h : h + 1, w : w + 1], ctx), dim=1))
        scales, means = gaussian.chunk(2, 1)
        return scales.reshape(-1), means.reshape(-1)

    def _y_size(self, z_hat: Tensor) -> Tuple[int, int]:
        return z_hat.shape[-2] * Z_TO_Y, z_hat.shape[-1] * Z_TO_Y

    def _code_y(self, y, z_hat, levels=None):
        _no_importance(levels)
        height, width = self._y_size(z_hat)
        params = self.h_s(z_hat)
        strings, checks, y_hats = [], [], []
        for i in range(y.shape[0]):
            y_pad = F.pad(y[i : i + 1], (CONTEXT_PAD,) * 4)
            all_symbols, all_indexes = [], []
            for h in range(height):
                for w in range(width):
                    scales, means = self._position_params(y_pad, params[i : i + 1], h, w)
                    indexes = self.scale_indexes(scales)
                    symbols = torch.round(y_pad[0, :, h + CONTEXT_PAD, w + CONTEXT_PAD] - means)
                    y_pad[0, :, h + CONTEXT_PAD, w + CONTEXT_PAD] = symbols + means
                    all_symbols.append(symbols.to(torch.int64))
                    all_indexes.append(indexes)
            indexes = torch.cat(all_indexes)
            strings.append(self.y_tables.encode(torch.cat(all_symbols), indexes))
            checks.append(index_check(indexes))
            y_hats.append(y_pad[:, :, CONTEXT_PAD:-CONTEXT_PAD, CONTEXT_PAD:-CONTEXT_PAD])
        return strings, checks, torch.cat(y_hats).float()

    def _decode_y(self, strings, z_hat, checks, levels=None):
        _no_importance(levels)
        height, width = self._y_size(z_hat)
        params = self.h_s(z_hat)
        y_hats = []
        for i, string in enumerate(strings):
            y_pad = torch.zeros(1, self.channels, height + 2 * CONTEXT_PAD, width + 2 * CONTEXT_PAD, dtype=EXACT)
            decoder = RansDecoder()
            decoder.set_stream(padded_stream(string, self.channels * height * width))
            all_indexes = []
            for h in range(height):
                for w in range(width):
                    scales, means = self._position_params(y_pad, params[i : i + 1], h, w)
                    indexes = self.scale_indexes(scales)
                    values = decoder.decode_stream(
                        indexes.tolist(), self.y_tables.cdf, self.y_tables.lengths, self.y_tables.offsets
                    )
                    y_pad[0, :, h + CONTEXT_PAD, w + CONTEXT_PAD] = torch.tensor(values, dtype=EXACT) + means
                    all_indexes.append(indexes)
            _verify(None if checks is None else checks[i], torch.cat(all_indexes), i)
            y_hats.append(y_pad[:, :, CONTEXT_PAD:-CONTEXT_PAD, CONTEXT_PAD:-CONTEXT_PAD])
        return torch.cat(y_hats).float()


def _no_importance(levels) -> None:
    if levels is not None and any(k is not None for k in levels):
        raise BitstreamError("importance maps are not supported by the autoregressive latent coder")


LATENT_CODERS = {
    SCALE_HYPERPRIOR: lambda base: HyperpriorCoder(base, with_means=False),
    MEAN_SCALE_HYPERPRIOR: lambda base: HyperpriorCoder(base, with_means=True),
    AUTOREGRESSIVE: AutoregressiveCoder,
}


def build_latent_coder(kind: str, base: nn.Module) -> LatentCoder:
    """Return the deterministic latent coder of ``kind`` for the (frozen) ``base`` model."""
    try:
        return LATENT_CODERS[kind](base)
    except KeyError:
        raise ValueError(f"unknown latent coder {kind!r}") from None
