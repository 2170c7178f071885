"""A frozen base codec with per-task adapter sets attached from the outside.

:class:`AdaptedCodec` wraps a CompressAI model (``self.base``) without changing it:
adapters live in ``self.adapters`` (one :class:`AdapterSet` per task) and are applied by
forward hooks on the base's ``g_a`` / ``g_s`` stages. Selecting a task switches which
set the hooks apply; task ``human`` applies none, so the base codec runs untouched and
zoo state dicts load into ``self.base`` unchanged.

Universal coding (Adapt-ICMH §4.6, UG-ICM): one bitstream for every consumer. The encoder
side is shared — the base encoder, or task-agnostic encoder adapters
(``self.shared_encoder``, an encoder-only set) — and each consumer has a decoder head
(``self.heads``, decoder-only sets) chosen at decode time; ``human`` without a head is the
base decoder. :meth:`AdaptedCodec.use_universal` selects the shared encoder and one head;
:meth:`AdaptedCodec.synthesize` runs several heads on one decoded latent, sharing the
synthesis stages before the first adapted one.

Verbs, as in CompressAI:

* ``forward(x)`` — training forward: noisy likelihoods, straight-through rounding of
  ``y − means`` (plus means) for the decoder input; returns ``x_hat`` and likelihoods.
* ``compress(x)`` / ``decompress(strings, shape)`` — real bitstreams through the
  deterministic :mod:`~icmh.models.latent_coding`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.ops import quantize_ste
from torch import Tensor, nn

from icmh.errors import AdapterMismatchError
from icmh.hashing import ADAPTER_ID_BYTES, short_digest, tensors_digest
from icmh.tasks import Task
from icmh.models.adapters import build_adapter
from icmh.models.importance import ImportanceSelector, TaskPrompts, upsample_gains
from icmh.models.latent_coding import AUTOREGRESSIVE, SCALE_HYPERPRIOR, build_latent_coder
from icmh.models.registry import MEAN_SCALE_HYPERPRIOR
from icmh.models.registry import CodecSpec


BOTH, ENCODER, DECODER = "both", "encoder", "decoder"
IMPORTANCE_CODERS = (SCALE_HYPERPRIOR, MEAN_SCALE_HYPERPRIOR)  # latent coders with importance-map coding
SIDES = {BOTH: (ENCODER, DECODER), ENCODER: (ENCODER,), DECODER: (DECODER,)}


@dataclass(frozen=True)
class AdapterConfig:
    """How one task's adapters are built."""

    variant: str = "sfma"
    mid_dim: int = 64
    init: str = "zero"
    decoder_position: Optional[str] = None  # None: the codec's default
    sides: str = BOTH  # which transforms get adapters: both, encoder (shared encoder), decoder (a head)
    importance: bool = False  # an importance-map selector on the encoder side (icmh.models.importance)
    prompts: bool = False  # a per-channel task prompt on ŷ before g_s (icmh.models.importance)

    def resolved(self, spec: CodecSpec) -> "AdapterConfig":
        """This config with ``decoder_position`` filled in and checked against ``spec``."""
        position = self.decoder_position or spec.default_decoder_position
        if position not in spec.decoder_taps:
            valid = ", ".join(spec.decoder_taps)
            raise AdapterMismatchError(f"{spec.name} has no decoder position {position!r} (valid: {valid})")
        if self.sides not in SIDES:
            raise AdapterMismatchError(f"bad adapter sides {self.sides!r} (valid: {', '.join(SIDES)})")
        if self.importance and spec.latent_coder not in IMPORTANCE_CODERS:
            raise AdapterMismatchError(f"{spec.name} has no importance-map coding (hyperprior codecs only)")
        if self.importance and ENCODER not in SIDES[self.sides]:
            raise AdapterMismatchError("an importance selector belongs to encoder-side adapters")
        if self.prompts and DECODER not in SIDES[self.sides]:
            raise AdapterMismatchError("task prompts belong to decoder-side adapters")
        return replace(self, decoder_position=position)


class AdapterSet(nn.Module):
    """The encoder and/or decoder adapters of one task (or shared encoder, or head) for one codec and quality."""

    def __init__(self, spec: CodecSpec, quality: int, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config.resolved(spec)
        channels = spec.adapter_channels(quality)
        make = lambda: build_adapter(self.config.variant, channels, self.config.mid_dim, self.config.init)
        sides = SIDES[self.config.sides]
        self.encoder_taps = tuple(spec.encoder_taps) if ENCODER in sides else ()
        self.decoder_taps = tuple(spec.decoder_taps[self.config.decoder_position]) if DECODER in sides else ()
        self.encoder = nn.ModuleList(make() for _ in self.encoder_taps)
        self.decoder = nn.ModuleList(make() for _ in self.decoder_taps)
        latent_channels = spec.configs[quality][-1]
        self.importance = ImportanceSelector(latent_channels) if self.config.importance else None
        self.prompts = TaskPrompts(latent_channels) if self.config.prompts else None

    def frame_state(self, keep_vars: bool = False) -> Dict[str, Tensor]:
        """The tensors a decoder must share with the encoder: all but the importance selector's
        (frames carry its output, the level map, and the index check covers it)."""
        return {k: v for k, v in self.state_dict(keep_vars=keep_vars).items() if not k.startswith("importance.")}

    def adapter_at(self, side: str, index: int) -> Optional[nn.Module]:
        """The adapter after stage ``index`` of ``g_a`` (side ``"encoder"``) or ``g_s``, if any."""
        taps = self.encoder_taps if side == "encoder" else self.decoder_taps
        if index not in taps:
            return None
        return getattr(self, side)[taps.index(index)]

    def digest(self) -> str:
        """SHA-256 (hex) of the adapter weights; the frame header carries its first 8 bytes."""
        return tensors_digest(self.frame_state())


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
        self.heads = nn.ModuleDict()  # universal coding: consumer -> decoder-only set
        self.shared_encoder: Optional[AdapterSet] = None  # universal coding: encoder-only set (None: base encoder)
        self._adapter_ids: Dict[int, Tuple[tuple, bytes]] = {}  # id(set) -> (weights' versions, id)
        self._task: Task = Task.HUMAN
        self._encoder_set: Optional[AdapterSet] = None  # what the g_a hooks apply now
        self._decoder_set: Optional[AdapterSet] = None  # what the g_s hooks apply now
        self.latent_coder = build_latent_coder(spec.latent_coder, base)
        for index in spec.encoder_taps:
            base.g_a[index].register_forward_hook(self._hook("encoder", index))
        for index in sorted({i for taps in spec.decoder_taps.values() for i in taps}):
            base.g_s[index].register_forward_hook(self._hook("decoder", index))
        base.g_s[0].register_forward_pre_hook(self._prompt_hook)

    def _prompt_hook(self, _module: nn.Module, inputs: Tuple[Tensor, ...]) -> Optional[Tuple[Tensor, ...]]:
        prompts = None if self._decoder_set is None else self._decoder_set.prompts
        return None if prompts is None else (prompts(inputs[0]), *inputs[1:])

    @property
    def active_selector(self) -> Optional[ImportanceSelector]:
        """The importance selector of the encoder-side set applied now (``None``: no importance map)."""
        return None if self._encoder_set is None else self._encoder_set.importance

    def importance_levels(self, y: Tensor) -> Optional[Tensor]:
        """The importance level map (int64, N×1×h×w) of latent ``y`` for the active encoder set, or ``None``."""
        selector = self.active_selector
        return None if selector is None else selector.levels(y)

    # -- adapters ---------------------------------------------------------------------------
    def _hook(self, side: str, index: int):
        def apply(_module: nn.Module, _inputs: Tuple[Tensor, ...], output: Tensor) -> Optional[Tensor]:
            adapter_set = self._encoder_set if side == ENCODER else self._decoder_set
            adapter = None if adapter_set is None else adapter_set.adapter_at(side, index)
            return None if adapter is None else adapter(output)

        return apply

    def add_adapters(self, task: Task, config: AdapterConfig = AdapterConfig()) -> AdapterSet:
        """Create (or replace) the adapter set of ``task``; returns it. ``human`` has none."""
        if not task.uses_adapters:
            raise AdapterMismatchError("task 'human' is the base codec and takes no adapters")
        adapter_set = self._new_set(config)
        self.adapters[task.value] = adapter_set
        return adapter_set

    def _new_set(self, config: AdapterConfig) -> AdapterSet:
        device = next(self.base.parameters()).device
        return AdapterSet(self.spec, self.quality, config).to(device)

    def add_shared_encoder(self, config: AdapterConfig = AdapterConfig(sides=ENCODER)) -> AdapterSet:
        """Create (or replace) the task-agnostic encoder adapters of universal coding; returns them."""
        self.shared_encoder = self._new_set(replace(config, sides=ENCODER))
        return self.shared_encoder

    def add_head(self, consumer: Task, config: AdapterConfig = AdapterConfig(sides=DECODER)) -> AdapterSet:
        """Create (or replace) the decoder head of ``consumer`` for universal frames; returns it."""
        head = self._new_set(replace(config, sides=DECODER))
        self.heads[consumer.value] = head
        return head

    @property
    def consumers(self) -> List[Task]:
        """Consumers of universal frames: ``human`` (the base decoder, unless it has a head) and every head."""
        return [task for task in Task if task is Task.HUMAN or task.value in self.heads]  # in the enum's order
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
        adapter_set = self.adapter_set(task) if task.uses_adapters else None
        self._task, self._encoder_set, self._decoder_set = task, adapter_set, adapter_set

    def set_universal(self, consumer: Optional[Task]) -> None:
        """Select the shared encoder and ``consumer``'s decoder head (``None``: no head, the base
        decoder); raises :class:`AdapterMismatchError` for a consumer without a head other than ``human``."""
        head = None if consumer is None else self.heads[consumer.value] if consumer.value in self.heads else None
        if consumer is not None and head is None and consumer is not Task.HUMAN:
            raise AdapterMismatchError(f"no decoder head loaded for consumer {consumer.value!r}")
        self._task, self._encoder_set, self._decoder_set = consumer or Task.HUMAN, self.shared_encoder, head

    @contextlib.contextmanager
    def _selected(self, select: Callable[[], None]) -> Iterator["AdaptedCodec"]:
        previous = self._task, self._encoder_set, self._decoder_set
        select()
        try:
            yield self
        finally:
            self._task, self._encoder_set, self._decoder_set = previous

    def use(self, task: Task) -> ContextManager["AdaptedCodec"]:
        """Context manager: run with ``task`` selected, then restore the previous selection."""
        return self._selected(lambda: self.set_task(task))

    def use_universal(self, consumer: Optional[Task] = None) -> ContextManager["AdaptedCodec"]:
        """Context manager: run with the shared encoder and ``consumer``'s head, then restore."""
        return self._selected(lambda: self.set_universal(consumer))

    @property
    def active_adapters(self) -> Optional[AdapterSet]:
        """The encoder-side adapter set applied now (``None``: the base encoder)."""
        return self._encoder_set

    def adapter_hash(self, task: Task) -> bytes:
        """The 8-byte adapter id written into frame headers (zeros for ``human``).

        Computed once per state of the weights: the cache is keyed by the tensors' version
        counters, which every in-place change (an optimizer step, ``load_state_dict``) bumps.
        """
        if not task.uses_adapters:
            return bytes(ADAPTER_ID_BYTES)
        return self._set_id(self.adapter_set(task))

    def universal_hash(self) -> bytes:
        """The 8-byte id of the shared encoder (zeros: the base encoder), written into universal frames."""
        return bytes(ADAPTER_ID_BYTES) if self.shared_encoder is None else self._set_id(self.shared_encoder)

    def _set_id(self, adapter_set: AdapterSet) -> bytes:
        versions = tuple((id(t), t._version) for t in adapter_set.frame_state(keep_vars=True).values())
        cached = self._adapter_ids.get(id(adapter_set))
        if cached is None or cached[0] != versions:
            cached = (versions, short_digest(adapter_set.frame_state(), ADAPTER_ID_BYTES))
            self._adapter_ids[id(adapter_set)] = cached
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
        return training_forward(self.base, self.spec.latent_coder, x, amp, self.active_selector)

    def universal_forward(self, x: Tensor, consumers: Sequence[Task],
                          amp: Optional[torch.dtype] = None) -> Dict[str, object]:
        """Training forward of universal coding: the shared encoder once, then every consumer's head.

        Returns ``{"x_hats": {consumer: x̂}, "likelihoods": {"y", "z"}}`` (see :func:`training_latents`).
        """
        with self.use_universal(None):
            y_hat, likelihoods = training_latents(self.base, self.spec.latent_coder, x, amp)
        with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            x_hats = self.synthesize(y_hat, consumers)
        return {"x_hats": {task: x_hat.float() for task, x_hat in x_hats.items()}, "likelihoods": likelihoods}

    def synthesize(self, y_hat: Tensor, consumers: Sequence[Task],
                   seconds: Optional[Dict[Optional[Task], float]] = None) -> Dict[Task, Tensor]:
        """``x̂`` of each consumer's decoder head (universal selection) from one ``ŷ``, unclamped.

        The synthesis stages before the first stage any of these heads adapts run once and
        are shared; each head runs the rest. ``seconds``, if given, gets the wall time of the
        shared stages (key ``None``) and of each consumer's.
        """
        g_s = self.base.g_s
        heads = [self.heads[c.value] for c in consumers if c.value in self.heads]
        first = min((min(h.decoder_taps) for h in heads if h.decoder_taps), default=len(g_s))
        if any(h.prompts is not None for h in heads):
            first = 0  # a prompt changes ŷ itself: nothing is shared
        times: Dict[Optional[Task], float] = {}
        began = time.perf_counter()
        with self.use_universal(None):
            shared = g_s[:first](y_hat) if first else y_hat
        times[None] = time.perf_counter() - began
        out: Dict[Task, Tensor] = {}
        for consumer in consumers:
            began = time.perf_counter()
            with self.use_universal(consumer):
                out[consumer] = g_s[first:](shared) if first < len(g_s) else shared
            times[consumer] = time.perf_counter() - began
        if seconds is not None:
            seconds.update(times)
        return out

    @torch.no_grad()
    def compress(self, x: Tensor) -> Dict[str, object]:
        """Encode ``x`` (N×3×H×W in [0, 1], H and W multiples of 64) with the current task.

        Returns ``{"strings": [y_strings, z_strings], "shape": z_shape,
        "index_checks": [...], "y_hat": ŷ}`` (``ŷ`` is what the decoder will reconstruct).
        """
        y = self.base.g_a(x)
        z = self._hyper_analysis(y)
        selector = self.active_selector
        coded = self.latent_coder.compress(y, z, self.importance_levels(y),
                                           None if selector is None else selector.level_cdf)
        strings = [coded.y_strings, coded.z_strings]
        if coded.level_strings is not None:
            strings.append(coded.level_strings)
        return {
            "strings": strings,
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
        y_hat = self.decode_latents(strings, shape, index_checks)
        device = next(self.base.parameters()).device
        x_hat = self.base.g_s(y_hat.to(device)).clamp_(0, 1)
        return {"x_hat": x_hat, "y_hat": y_hat}

    @torch.no_grad()
    def decode_latents(self, strings: Sequence[Sequence[bytes]], shape: Tuple[int, int],
                       index_checks: Optional[Sequence[int]] = None) -> Tensor:
        """The quantised latent ``ŷ`` of ``[y_strings, z_strings]`` (and ``level_strings``, one per image,
        ``None`` without an importance map): entropy decoding only, no synthesis."""
        y_strings, z_strings = strings[0], strings[1]
        level_strings = strings[2] if len(strings) > 2 else None
        selector = self.active_selector
        return self.latent_coder.decompress(y_strings, z_strings, shape, index_checks, level_strings,
                                            None if selector is None else selector.level_cdf)


def hyper_analysis(base: nn.Module, latent_coder: str, y: Tensor) -> Tensor:
    """``h_a(y)`` (``h_a(|y|)`` for the scale-only hyperprior)."""
    return base.h_a(torch.abs(y) if latent_coder == SCALE_HYPERPRIOR else y)


def training_forward(base: nn.Module, latent_coder: str, x: Tensor, amp: Optional[torch.dtype] = None,
                     selector: Optional[ImportanceSelector] = None) -> Dict[str, object]:
    """Training forward of a CompressAI hyperprior codec (mixed quantisation).

    :func:`training_latents`, then the synthesis transform (under autocast with ``amp``).
    Returns ``{"x_hat", "likelihoods": {"y", "z"}}``.
    """
    y_hat, likelihoods = training_latents(base, latent_coder, x, amp, selector)
    with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        x_hat = base.g_s(y_hat)
    return {"x_hat": x_hat.float(), "likelihoods": likelihoods}


def training_latents(base: nn.Module, latent_coder: str, x: Tensor, amp: Optional[torch.dtype] = None,
                     selector: Optional[ImportanceSelector] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The latent the decoder will see and the likelihoods, for training (mixed quantisation).

    Likelihoods come from additive uniform noise; the decoder sees the straight-through
    rounded latent ``round(y − means) + means`` it will really get. With ``amp`` (e.g.
    ``torch.bfloat16``) the analysis transform runs under autocast while the entropy models
    stay in float32. Returns ``(ŷ, {"y": likelihoods, "z": likelihoods})``.

    With an importance ``selector`` (:mod:`icmh.models.importance`) the latent is quantised with
    the gains ``m`` of its straight-through levels (``y·m``, ``σ·m``, ``μ·m``; ``ŷ = (round(y·m −
    μ·m) + μ·m) / m``) and the likelihoods gain ``"levels"``, the side information's.
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
    if selector is not None:
        levels = selector(y)
        gains = upsample_gains(levels)
        _, y_likelihoods = base.gaussian_conditional(y * gains, scales * gains, means=means * gains, training=True)
        y_hat = (quantize_ste(y * gains - means * gains) + means * gains) / gains
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods, "levels": selector.level_likelihoods(levels)}
    _, y_likelihoods = base.gaussian_conditional(y, scales, means=means, training=True)
    y_hat = quantize_ste(y - means) + means
    return y_hat, {"y": y_likelihoods, "z": z_likelihoods}
