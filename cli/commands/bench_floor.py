"""The adapters' floor in ``icmh bench codec``: what no implementation of SFMA on this CPU can undercut.

Two parts, both measured in the run that times the codec:

* the adapters' multiply–accumulates at the fastest measured matrix-multiply rate (no
  convolution kernel of this CPU runs faster), and
* the FFTs the method requires: one ``rfft2``/``irfft2`` pair per frequency branch, at the
  shape it really has (``d`` channels at the adapter's resolution), timed alone.

Element-wise work (gates, amplitude, ReLU, residual) and memory traffic come on top, so
the measured ratio of the adapted path can only exceed ``1 + floor / base``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor

from icmh.cli.commands.timing import time_interleaved
from icmh.codec.frame_codec import FrameCodec
from icmh.models.adapted import BOTH, SIDES as ADAPTER_SIDES
from icmh.tasks import Task

SIDES = ADAPTER_SIDES[BOTH]  # encoder, decoder


def spectral_inputs(frame_codec: FrameCodec, task: Task, image: Tensor) -> Dict[str, List[Tensor]]:
    """Random stand-ins for the input of every frequency branch of ``task``'s adapters, per side,
    shaped as when ``frame_codec`` encodes and decodes ``image`` (3×H×W)."""
    adapter_set = frame_codec.codec.adapter_set(task)
    shapes: Dict[str, List[torch.Size]] = {side: [] for side in SIDES}
    handles = []
    for side in SIDES:
        for adapter in getattr(adapter_set, side):
            widths = [branch.downs[0].out_channels for branch in adapter.branches.values() if branch.spectral]
            handles.append(adapter.register_forward_pre_hook(
                lambda _m, inputs, side=side, widths=widths: shapes[side].extend(
                    torch.Size((inputs[0].shape[0], d, *inputs[0].shape[2:])) for d in widths)))
    try:
        frame = frame_codec.encode([image], task)[0]
        frame_codec.decode([frame.data])
    finally:
        for handle in handles:
            handle.remove()
    generator = torch.Generator().manual_seed(0)
    return {side: [torch.randn(shape, generator=generator) for shape in shapes[side]] for side in SIDES}


def fft_pairs(inputs: Sequence[Tensor]) -> List[Tensor]:
    """``irfft2(rfft2(u))`` over (H, W) of each of ``inputs``: the FFTs of the frequency branches."""
    return [torch.fft.irfft2(torch.fft.rfft2(u, dim=(-2, -1)), s=u.shape[-2:], dim=(-2, -1)) for u in inputs]


def adapter_fft_ms(frame_codec: FrameCodec, task: Task, image: Tensor, repeats: int) -> Dict[str, float]:
    """Median milliseconds of the frequency branches' FFT pairs alone, per side (``encoder``, ``decoder``)."""
    inputs = spectral_inputs(frame_codec, task, image)
    return time_interleaved({side: lambda u=inputs[side]: fft_pairs(u) for side in SIDES}, repeats)


def adapter_floor_ms(mac_per_pixel: Dict[str, float], pixels: int, matmul_gmac_per_s: float,
                     fft_ms: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """Per side: the adapters' MACs at ``matmul_gmac_per_s`` (``macs_ms``), their FFT pairs
    (``fft_ms``) and the sum (``ms``)."""
    out = {}
    for side in SIDES:
        macs_ms = mac_per_pixel[side] * pixels / matmul_gmac_per_s / 1e6
        out[side] = {"macs_ms": macs_ms, "fft_ms": fft_ms[side], "ms": macs_ms + fft_ms[side]}
    return out
