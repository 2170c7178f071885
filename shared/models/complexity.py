"""Parameter and multiply–accumulate (MAC) counts of base codecs and adapters.

MACs are counted per convolution (``Conv2d``, ``ConvTranspose2d``, masked convolutions)
and per GDN/IGDN (a C×C 1×1 convolution over ``x²``) at the size they really run at,
including the frequency branch's convolutions on the H×(W/2+1) spectrum; FFTs and
element-wise operations are not counted (the usual convention of MAC counters and the
one the paper's figures follow). Results are per input pixel.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict

import torch
from compressai.layers import GDN
from torch import nn

from icmh.tasks import Task
from icmh.models.adapted import AdaptedCodec

GROUPS = {
    "base.g_a": "encoder", "base.h_a": "hyper", "base.h_s": "hyper",
    "base.entropy_parameters": "hyper", "base.context_prediction": "hyper", "base.g_s": "decoder",
}


@dataclass(frozen=True)
class Complexity:
    """Parameter counts and MACs per pixel of a base codec and one adapter set."""

    base_params: int
    adapter_params: int
    base_macs_per_pixel: Dict[str, float]  # encoder (g_a), decoder (g_s), hyper (h_a, h_s, context)
    adapter_macs_per_pixel: Dict[str, float]  # encoder, decoder


def _module_macs(module: nn.Module, inputs, output) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return inputs[0].numel() * module.out_channels // module.groups * k
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * module.in_channels // module.groups * k
    if isinstance(module, GDN):
        return output.numel() * output.shape[1]
    return 0


def _group(name: str) -> str:
    if name.startswith("adapters."):
        return "adapter_" + name.split(".")[2]  # adapters.<task>.<encoder|decoder>...
    for prefix, group in GROUPS.items():
        if name.startswith(prefix):
            return group
    return "other"


@torch.no_grad()
def measure(codec: AdaptedCodec, task: Task, size: int = 256) -> Complexity:
    """Count parameters and MACs per pixel of ``codec``'s base and ``task``'s adapters.

    Runs one training-mode forward on a ``size``×``size`` input with hooks on every
    convolution and GDN.
    """
    macs: Dict[str, int] = defaultdict(int)
    handles = []
    for name, module in codec.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, GDN)):
            group = _group(name)
            handles.append(module.register_forward_hook(
                lambda m, i, o, group=group: macs.__setitem__(group, macs[group] + _module_macs(m, i, o))))
    try:
        with codec.use(task):
            codec(torch.rand(1, 3, size, size, device=next(codec.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    pixels = size * size
    adapter_params = sum(p.numel() for p in codec.adapter_set(task).parameters()) if task.uses_adapters else 0
    return Complexity(
        base_params=sum(p.numel() for p in codec.base.parameters()),
        adapter_params=adapter_params,
        base_macs_per_pixel={k: macs[k] / pixels for k in ("encoder", "decoder", "hyper")},
        adapter_macs_per_pixel={k: macs["adapter_" + k] / pixels for k in ("encoder", "decoder")},
    )
