"""A frozen base codec with per-task adapter sets attached from the outside.

:class:`AdaptedCodec` wraps a CompressAI model (``self.base``) without changing it:
adapters live in ``self.adapters`` (one :class:`AdapterSet` per task) and are applied by
forward hooks on the base's ``g_a`` / ``g_s`` stages. Selecting a task switches which
set the hooks apply; task ``human`` applies none, so the base codec runs untouched and
zoo state dicts load into ``self.base`` unchanged.

Verbs, as in CompressAI:

* ``forward(x)`` — training forward: noisy likelihoods, straight-through rounding of
  ``y − means`` (plus means) for the decoder input; returns ``x_hat`` and likelihoods.
* ``compress(x)`` / ``decompress(strings, shape)`` — real bitstreams through the
  deterministic :mod:`~icmh.models.latent_coding`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.ops import quantize_ste
from torch import Tensor, nn

from icmh.errors import AdapterMismatchError
from icmh.hashing import ADAPTER_ID_BYTES, short_digest, tensors_digest
from icmh.tasks import Task
from icmh.models.adapters import build_adapter
from icmh.models.latent_coding import AUTOREGRESSIVE, SCALE_HYPERPRIOR, build_latent_coder
from icmh.models.registry import CodecSpec


@dataclass(frozen=True)
class AdapterConfig:
    """How one task's adapters are built."""

    variant: str = "sfma"
    mid_dim: int = 64
    init: str = "zero"
    decoder_position: Optional[str] = None  # None: the codec's default

    def resolved(self, spec: CodecSpec) -> "AdapterConfig":
        """This config with ``decoder_position`` filled in and checked against ``spec``."""
        position = self.decoder_position or spec.default_decoder_position
        if position not in spec.decoder_taps:
            valid = ", ".join(spec.decoder_taps)
            raise AdapterMismatchError(f"{spec.name} has no decoder position {position!r} (valid: {valid})")
        return AdapterConfig(self.variant, self.mid_dim, self.init, position)


class AdapterSet(nn.Module):
    """The encoder and decoder adapters of one task for one codec and quality."""

    def __init__(self, spec: CodecSpec, quality: int, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config.resolved(spec)
        channels = spec.adapter_channels(quality)
        make = lambda: build_adapter(self.config.variant, channels, self.config.mid_dim, self.config.init)
        self.encoder_taps = tuple(spec.encoder_taps)
        self.decoder_taps = tuple(spec.decoder_taps[self.config.decoder_position])
        self.encoder = nn.ModuleList(make() for _ in self.encoder_taps)
        self.decoder = nn.ModuleList(make() for _ in self.decoder_taps)

    def adapter_at(self, side: str, index: int) -> Optional[nn.Module]:
        """The adapter after stage ``index`` of ``g_a`` (side ``"encoder"``) or ``g_s``, if any."""
        taps = self.encoder_taps if side == "encoder" else self.decoder_taps
        if index not in taps:
            return None
        return getattr(self, side)[taps.index(index)]

    def digest(self) -> str:
        """SHA-256 (hex) of the adapter weights; the frame header carries its first 8 bytes."""
        return tensors_digest(self.state_dict())


class AdaptedCodec(nn.Module):
    """Base codec (frozen) + adapter sets per task; see the module docstring."""

    def __init__(self, base: nn.Module, spec: CodecSpec, quality: int) -> None:
        super().__init__()
        spec.check_quality(quality)
        self.spec = spec
        self.quality = quality
        self.base = base
        self.base.requires_grad_(False)
        self.base.eval()
        self.adapters = nn.ModuleDict()
        self._adapter_ids: Dict[str, Tuple[tuple, bytes]] = {}  # task -> (weights' versions, id)
        self._task: Task = Task.HUMAN
        self.latent_coder = build_latent_coder(spec.latent_coder, base)
        for index in spec.encoder_taps:
            base.g_a[index].register_forward_hook(self._hook("encoder", index))
        for index in sorted({i for taps in spec.decoder_taps.values() for i in taps}):
            base.g_s[index].register_forward_hook(self._hook("decoder", index))

    # -- adapters ---------------------------------------------------------------------------
    def _hook(self, side: str, index: int):
        def apply(_module: nn.Module, _inputs: Tuple[Tensor, ...], output: Tensor) -> Optional[Tensor]:
            adapter_set = self.active_adapters
            adapter = None if adapter_set is None else adapter_set.adapter_at(side, index)
            return None if adapter is None else adapter(output)

        return apply

    def add_adapters(self, task: Task, config: AdapterConfig = AdapterConfig()) -> AdapterSet:
        """Create (or replace) the adapter set of ``task``; returns it. ``human`` has none."""
        if not task.uses_adapters:
            raise AdapterMismatchError("task 'human' is the base codec and takes no adapters")
        device = next(self.base.parameters()).device
        adapter_set = AdapterSet(self.spec, self.quality, config).to(device)
        self.adapters[task.value] = adapter_set
        return adapter_set

    def adapter_set(self, task: Task) -> AdapterSet:
        """The adapter set of ``task``; raises :class:`AdapterMismatchError` if it has none."""
        if task.value not in self.adapters:
            raise AdapterMismatchError(f"no adapters loaded for task {task.value!r}")
        return self.adapters[task.value]

    @property
    def task(self) -> Task:
        """The task whose adapters the hooks apply now."""
        return self._task

    def set_task(self, task: Task) -> None:
        """Select ``task``; raises :class:`AdapterMismatchError` if its adapters are missing."""
        if task.uses_adapters:
            self.adapter_set(task)
        self._task = task

    @contextlib.contextmanager
    def use(self, task: Task) -> Iterator["AdaptedCodec"]:
        """Context manager: run with ``task`` selected, then restore the previous task."""
        previous = self._task
        self.set_task(task)
        try:
            yield self
        finally:
            self._task = previous

    @property
    def active_adapters(self) -> Optional[AdapterSet]:
        """The adapter set applied now (``None`` for ``human``)."""
        return self.adapters[self._task.value] if self._task.uses_adapters else None

    def adapter_hash(self, task: Task) -> bytes:
        """The 8-byte adapter id written into frame headers (zeros for ``human``).

        Computed once per state of the weights: the cache is keyed by the tensors' version
        counters, which every in-place change (an optimizer step, ``load_state_dict``) bumps.
        """
        if not task.uses_adapters:
            return bytes(ADAPTER_ID_BYTES)
        adapter_set = self.adapter_set(task)
        versions = tuple((id(t), t._version) for t in adapter_set.state_dict(keep_vars=True).values())
        cached = self._adapter_ids.get(task.value)
        if cached is None or cached[0] != versions:
            cached = (versions, short_digest(adapter_set.state_dict(), ADAPTER_ID_BYTES))
            self._adapter_ids[task.value] = cached
        return cached[1]

    def train(self, mode: bool = True) -> "AdaptedCodec":
        """Switch the adapters' mode; the frozen base codec always stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    # -- CompressAI verbs -------------------------------------------------------------------
    def _hyper_analysis(self, y: Tensor) -> Tensor:
        return hyper_analysis(self.base, self.spec.latent_coder, y)

    def forward(self, x: Tensor, amp: Optional[torch.dtype] = None) -> Dict[str, object]:
        """Training forward with the current task's adapters; see :func:`training_forward`."""
        return training_forward(self.base, self.spec.latent_coder, x, amp)

    @torch.no_grad()
    def compress(self, x: Tensor) -> Dict[str, object]:
        """Encode ``x`` (N×3×H×W in [0, 1], H and W multiples of 64) with the current task.

        Returns ``{"strings": [y_strings, z_strings], "shape": z_shape,
        "index_checks": [...], "y_hat": ŷ}`` (``ŷ`` is what the decoder will reconstruct).
        """
        y = self.base.g_a(x)
        z = self._hyper_analysis(y)
        coded = self.latent_coder.compress(y, z)
        return {
            "strings": [coded.y_strings, coded.z_strings],
            "shape": coded.z_shape,
            "index_checks": coded.index_checks,
            "y_hat": coded.y_hat,
        }

    @torch.no_grad()
    def decompress(
        self,
        strings: Sequence[Sequence[bytes]],
        shape: Tuple[int, int],
        index_checks: Optional[Sequence[int]] = None,
    ) -> Dict[str, Tensor]:
        """Decode ``strings`` (``[y_strings, z_strings]``) with the current task.

        Returns ``{"x_hat", "y_hat"}``; raises :class:`~icmh.errors.IndexMismatchError`
        if ``index_checks`` are given and do not match.
        """
        y_strings, z_strings = strings
        y_hat = self.latent_coder.decompress(y_strings, z_strings, shape, index_checks)
        device = next(self.base.parameters()).device
        x_hat = self.base.g_s(y_hat.to(device)).clamp_(0, 1)
        return {"x_hat": x_hat, "y_hat": y_hat}


def hyper_analysis(base: nn.Module, latent_coder: str, y: Tensor) -> Tensor:
    """``h_a(y)`` (``h_a(|y|)`` for the scale-only hyperprior)."""
    return base.h_a(torch.abs(y) if latent_coder == SCALE_HYPERPRIOR else y)


def training_forward(base: nn.Module, latent_coder: str, x: Tensor, amp: Optional[torch.dtype] = None) -> Dict[str, object]:
    """Training forward of a CompressAI hyperprior codec (mixed quantisation).

    Likelihoods come from additive uniform noise; the decoder sees the straight-through
    rounded latent ``round(y − means) + means`` it will really get. With ``amp`` (e.g.
    ``torch.bfloat16``) the analysis and synthesis transforms run under autocast while the
    entropy models stay in float32. Returns ``{"x_hat", "likelihoods": {"y", "z"}}``.
    """
    with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        y = base.g_a(x)
    y = y.float()
    z = hyper_analysis(base, latent_coder, y)
    _, z_likelihoods = base.entropy_bottleneck(z, training=True)
    medians = base.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)
    z_hat = quantize_ste(z - medians) + medians
    params = base.h_s(z_hat)
    if latent_coder == AUTOREGRESSIVE:
        masked = base.context_prediction  # its forward masks its weight in place: stay functional
        context = F.conv2d(quantize_ste(y), masked.weight * masked.mask, masked.bias, padding=masked.padding)
        params = base.entropy_parameters(torch.cat((params, context), dim=1))
    if latent_coder == SCALE_HYPERPRIOR:
        scales, means = params, torch.zeros_like(params)
    else:
        scales, means = params.chunk(2, 1)
    _, y_likelihoods = base.gaussian_conditional(y, scales, means=means, training=True)
    y_hat = quantize_ste(y - means) + means
    with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        x_hat = base.g_s(y_hat)
    return {"x_hat": x_hat.float(), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}
