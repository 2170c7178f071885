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

Each branch is ``up(middle(*(down(x) for down in downs)))``. :class:`Adapter` runs its
branches fused (:class:`FusedProjections`): the ``C → d`` projections of all branches
as ONE 1×1 convolution on their concatenated weights, and the ``d → C`` projections —
whose outputs are summed — as ONE 1×1 convolution on the concatenated middle outputs,
residual added in place. The module tree and the parameters stay those of the separate
convolutions (state dicts are unchanged); the concatenated weights are built at run time,
cached for inference and rebuilt whenever a parameter changes. Adapters work in
channels-last memory; for CPU inference the convolutions go to oneDNN directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INITS = ("zero", "authors")
CHANNELS_LAST = torch.channels_last


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1×1 convolution with bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


def depthwise(ch: int, kernel_size: int) -> nn.Conv2d:
    """A depth-wise ``kernel_size``² convolution with 'same' padding and bias."""
    return nn.Conv2d(ch, ch, kernel_size, padding=kernel_size // 2, groups=ch)


def eager_inference() -> bool:
    """True when no gradient is recorded and nothing traces the code (ONNX export, ``torch.compile``).

    Only then do adapters work in place and call oneDNN directly.
    """
    return not (torch.is_grad_enabled() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def conv(x: Tensor, weight: Tensor, bias: Tensor, padding: int = 0, groups: int = 1) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, groups=groups)``.

    For CPU inference it calls oneDNN directly: on one thread PyTorch runs 1×1
    convolutions as its own GEMM, about 2× slower on AVX-512 CPUs.
    """
    if eager_inference() and x.device.type == "cpu" and x.dtype == weight.dtype and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x, weight, bias, (padding, padding), (1, 1), (1, 1), groups)
    return F.conv2d(x, weight, bias, padding=padding, groups=groups)


def observed(layer: nn.Module) -> bool:
    """True if hooks watch ``layer`` (e.g. MAC counting): it must then be called as a module."""
    return bool(layer._forward_hooks or layer._forward_pre_hooks)


def apply(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """``layer(x)``, through :func:`conv` unless hooks watch ``layer``."""
    if observed(layer):
        return layer(x)
    return conv(x, layer.weight, layer.bias, layer.padding[0], layer.groups)


def parameter_versions(module: nn.Module) -> Tuple:
    """A cheap key that changes whenever a parameter of ``module`` is replaced, moved or written to."""
    return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())


def relu(x: Tensor) -> Tensor:
    """ReLU, in place when no gradient is recorded (``x`` is then an intermediate)."""
    return F.relu(x, inplace=not torch.is_grad_enabled())


class Branch(nn.Module):
    """One adapter branch: ``up(middle(*(down(x) for down in downs)))``.

    Subclasses define ``downs`` (their ``C → d`` projections, in order), ``middle`` and
    ``up``; :class:`Adapter` fuses the projections of all its branches. The ``middle``
    of a ``spectral`` branch uses FFTs (which ONNX cannot express).
    """

    up: nn.Conv2d
    spectral = False

    @property
    def downs(self) -> Tuple[nn.Conv2d, ...]:
        """The ``C → d`` projections of ``x`` whose outputs ``middle`` takes, in order."""
        raise NotImplementedError

    def middle(self, *projections: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """The input of ``up`` (N×d×H×W) from the down-projections of ``x``; written into ``out`` if given.

        ``out`` (a slice of the adapter's concatenated middles) is only passed for eager
        inference, never when gradients are recorded.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.middle(*(down(x) for down in self.downs)))


class SpatialModulation(Branch):
    """SMA: ``up(ReLU(DW5x5(down_a(x)) ⊙ down_b(x)))``, a gated product in space."""

    def __init__(self, channels: int, mid_dim: int) -> None:
        super().__init__()
        self.down_a = conv1x1(channels, mid_dim)
        self.dw = depthwise(mid_dim, 5)
        self.down_b = conv1x1(channels, mid_dim)
        self.up = conv1x1(mid_dim, channels)

    @property
    def downs(self) -> Tuple[nn.Conv2d, ...]:
        return (self.down_a, self.down_b)

    def middle(self, a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``ReLU(DW5x5(a) ⊙ b)``."""
        spatial = apply(self.dw, a)
        if out is not None:
            return relu(torch.mul(spatial, b, out=out))
        inplace = not torch.is_grad_enabled() and spatial.dtype == torch.promote_types(spatial.dtype, b.dtype)
        return relu(spatial.mul_(b) if inplace else spatial * b)


class FrequencyModulation(Branch):
    """FMA: gate the amplitude spectrum of ``down(x)``, keep its phase, project back up.

    ``U = rfft2(down(x))``, ``G = sigmoid(mix(ReLU(DW3x3(|U|))))``,
    ``out = up(ReLU(irfft2(U ⊙ G)))``. Multiplying the complex spectrum by the real,
    positive gate scales the amplitude and leaves the phase unchanged. Spectra are
    handled as real views (…×2, real and imaginary part), the FFTs in float32.
    """

    spectral = True

    def __init__(self, channels: int, mid_dim: int) -> None:
        super().__init__()
        self.down = conv1x1(channels, mid_dim)
        self.dw = depthwise(mid_dim, 3)
        self.mix = conv1x1(mid_dim, mid_dim)
        self.up = conv1x1(mid_dim, channels)

    @property
    def downs(self) -> Tuple[nn.Conv2d, ...]:
        return (self.down,)

    def gate(self, amplitude: Tensor) -> Tensor:
        """``sigmoid(mix(ReLU(DW3x3(amplitude))))``: a real gate in (0, 1) per frequency."""
        logits = apply(self.mix, relu(apply(self.dw, amplitude)))
        return logits.sigmoid_() if not torch.is_grad_enabled() else logits.sigmoid()

    @staticmethod
    def spectrum(u: Tensor) -> Tensor:
        """``rfft2(u)`` over (H, W), norm "backward", as a real view N×d×H×(W/2+1)×2."""
        return torch.view_as_real(torch.fft.rfft2(u.float(), dim=(-2, -1), norm="backward"))

    def modulate(self, spectrum: Tensor) -> Tensor:
        """``U ⊙ gate(|U|)`` for a spectrum ``U`` in real view; returns it in real view (in place for eager inference)."""
        gate = self.gate(amplitude(spectrum).contiguous(memory_format=CHANNELS_LAST)).unsqueeze(-1)
        if eager_inference():
            return spectrum.mul_(gate)
        return spectrum * gate

    @staticmethod
    def inverse(spectrum: Tensor, like: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``ReLU(irfft2(U))`` at ``like``'s height and width, in ``like``'s dtype (into ``out`` if given)."""
        height, width = like.shape[-2:]
        signal = torch.fft.irfft2(torch.view_as_complex(spectrum), s=(height, width), dim=(-2, -1), norm="backward")
        if out is not None:
            return torch.clamp_min(signal, 0, out=out)
        return relu(signal.to(like.dtype))

    def middle(self, u: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``ReLU(irfft2(U ⊙ gate(|U|)))`` with ``U = rfft2(u)``."""
        return self.inverse(self.modulate(self.spectrum(u)), u, out)


def amplitude(spectrum: Tensor) -> Tensor:
    """``|U|`` of a spectrum in real view (…×2).

    For eager inference ``sqrt(re² + im²)`` in one buffer: 3× faster than the complex ``abs``
    or ``hypot`` (which guard against overflow that float32 spectra of images never reach);
    its gradient at ``U = 0`` would not be the complex ``abs``'s zero, so training uses ``abs``.
    """
    if eager_inference():
        real, imag = spectrum[..., 0], spectrum[..., 1]
        return torch.mul(real, real).addcmul_(imag, imag).sqrt_()
    return torch.view_as_complex(spectrum).abs()


class PlainBottleneck(Branch):
    """A plain bottleneck adapter branch: ``up(ReLU(down(x)))``."""

    def __init__(self, channels: int, mid_dim: int) -> None:
        super().__init__()
        self.down = conv1x1(channels, mid_dim)
        self.up = conv1x1(mid_dim, channels)

    @property
    def downs(self) -> Tuple[nn.Conv2d, ...]:
        return (self.down,)

    def middle(self, p: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``ReLU(p)``."""
        return relu(p) if out is None else torch.clamp_min(p, 0, out=out)


@dataclass(frozen=True)
class FusedProjections:
    """The 1×1 projections of all branches of an adapter as two convolutions.

    ``down_*``: every branch's ``C → d`` projections stacked along the output channels
    (``split``: the width of each); ``up_*``: the ``d → C`` projections side by side along
    the input channels, their biases summed (the branch outputs are summed).
    """

    down_weight: Tensor
    down_bias: Tensor
    split: Tuple[int, ...]
    up_weight: Tensor
    up_bias: Tensor

    @classmethod
    def of(cls, branches: Sequence[Branch]) -> "FusedProjections":
        """Concatenate the projections of ``branches`` (differentiable: ``torch.cat`` and a sum of parameters)."""
        downs = [down for branch in branches for down in branch.downs]
        ups = [branch.up for branch in branches]
        return cls(
            down_weight=torch.cat([down.weight for down in downs]).contiguous(memory_format=CHANNELS_LAST),
            down_bias=torch.cat([down.bias for down in downs]),
            split=tuple(down.out_channels for down in downs),
            up_weight=torch.cat([up.weight for up in ups], dim=1).contiguous(memory_format=CHANNELS_LAST),
            up_bias=torch.stack([up.bias for up in ups]).sum(0),
        )


def channels_last_buffer(like: Tensor, channels: int) -> Tensor:
    """An empty N×channels×H×W tensor shaped like ``like``, in channels-last memory."""
    return torch.empty((like.shape[0], channels, *like.shape[2:]), dtype=like.dtype, device=like.device,
                       memory_format=CHANNELS_LAST)


class Adapter(nn.Module):
    """A residual adapter: ``x + Σ branch(x)`` over parallel branches, fused (see the module docstring).

    ``forward(x) = finish(x, middles(x))``; ``middles`` runs each branch's ``middle`` on its share of ``project(x)``.
    """

    def __init__(self, branches: Dict[str, Branch]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)
        self._fused_key: Tuple = ()
        self._fused: Tuple[FusedProjections, ...] = ()  # a plain attribute: never in the state dict

    def fused(self) -> FusedProjections:
        """The concatenated projections: cached for inference and rebuilt when a parameter changed.

        In training mode, with gradients on, or while the code is traced (ONNX export,
        ``torch.compile``), they are built on every call (gradients reach the separate
        parameters; traces see the parameters).
        """
        if self.training or not eager_inference():
            return FusedProjections.of(list(self.branches.values()))
        key = parameter_versions(self)
        if key != self._fused_key:
            self._fused = (FusedProjections.of(list(self.branches.values())),)
            self._fused_key = key
        return self._fused[0]

    def project(self, x: Tensor) -> List[Tuple[Tensor, ...]]:
        """The down-projections of ``x`` (ONE 1×1 convolution), grouped per branch in branch order."""
        fused = self.fused()
        flat = conv(x.contiguous(memory_format=CHANNELS_LAST), fused.down_weight, fused.down_bias).split(fused.split, 1)
        groups, start = [], 0
        for branch in self.branches.values():
            groups.append(tuple(flat[start:start + len(branch.downs)]))
            start += len(branch.downs)
        return groups

    def middles(self, x: Tensor) -> Tensor:
        """The middles of all branches, concatenated along the channels (channels-last memory).

        For eager inference each branch writes straight into its slice of one buffer.
        """
        branches, projections = list(self.branches.values()), self.project(x)
        if not eager_inference():
            parts = [branch.middle(*p) for branch, p in zip(branches, projections)]
            return torch.cat(parts, dim=1).contiguous(memory_format=CHANNELS_LAST)
        out = channels_last_buffer(projections[0][0], sum(p[0].shape[1] for p in projections))
        for branch, p, part in zip(branches, projections, out.split([q[0].shape[1] for q in projections], 1)):
            branch.middle(*p, out=part)
        return out

    def finish(self, x: Tensor, middles: Tensor) -> Tensor:
        """``x`` + the up-projections of the concatenated branch middles (ONE 1×1 convolution).

        The result has ``x``'s memory layout, so that a fresh (zero) adapter leaves the rest
        of the transform computing exactly what it computes without adapters.
        """
        fused = self.fused()
        update = conv(middles, fused.up_weight, fused.up_bias)
        same_dtype = update.dtype == torch.promote_types(update.dtype, x.dtype)
        if eager_inference() and same_dtype and x.is_contiguous(memory_format=CHANNELS_LAST):
            return update.add_(x)  # in place on the fresh update; ``x`` itself is left alone
        if eager_inference():
            return torch.add(x, update, out=torch.empty_like(x, dtype=torch.promote_types(x.dtype, update.dtype)))
        layout = CHANNELS_LAST if x.is_contiguous(memory_format=CHANNELS_LAST) else torch.contiguous_format
        return (x + update).contiguous(memory_format=layout)

    def forward(self, x: Tensor) -> Tensor:
        if any(observed(layer) for branch in self.branches.values() for layer in (*branch.downs, branch.up)):
            return self.unfused(x)
        return self.finish(x, self.middles(x.contiguous(memory_format=CHANNELS_LAST)))

    def unfused(self, x: Tensor) -> Tensor:
        """``x + Σ branch(x)`` with every layer called as a module (for hooks that watch them)."""
        out = x
        for branch in self.branches.values():
            out = out + branch(x)
        return out

    def zero_up_projections(self) -> None:
        """Set every ``d → C`` projection to zero, making the adapter the identity."""
        for branch in self.branches.values():
            nn.init.zeros_(branch.up.weight)
            nn.init.zeros_(branch.up.bias)


ADAPTER_VARIANTS: Dict[str, Callable[[int, int], Dict[str, Branch]]] = {
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
