"""ncnn models (text ``.param`` + ``.bin`` weights) as differentiable PyTorch graphs.

ncnn keeps a network in two files (ncnn wiki, "param and model file structure"):

* the ``.param`` text: the magic ``7767517``, ``layer_count blob_count``, then one line per
  layer, in execution order: ``type name n_in n_out inputs… outputs… key=value…``. Keys
  0–19 hold scalars (an int, or a float when spelled with ``.`` or an exponent); a key
  ``-23300 - k`` holds the array ``k`` as ``count,v1,v2,…``;
* the ``.bin``: the weight blobs of the layers one after another, in layer order, each
  padded to 4 bytes. A blob read "with its tag" (a convolution's weights) starts with a
  4-byte storage tag (0: fp32, ``0x01306B47``: fp16, ``0x000D4B38``: int8, another
  non-zero tag: a 256-entry fp32 table and uint8 indexes); a bias is raw fp32.

ncnn blobs are ``c×h×w`` without a batch. Here a blob of ncnn rank ``r`` is a tensor of
rank ``r + 1`` whose first dimension is the batch, in ncnn's element order (3-D:
``N×C×H×W``, 2-D: ``N×H×W``, 1-D: ``N×W``): ncnn axis ``a`` is tensor dimension ``a + 1``,
and Reshape and Permute keep ncnn's element order exactly.

:func:`load_ncnn` turns the bytes of both files (read them with
:func:`~icmh.taskmodels.files.read_verified`) into an :class:`NcnnNet`: one ``nn.Module``
per layer (a Convolution is an ``nn.Conv2d``) holding float32 parameters, and a
``forward`` that runs only the layers the requested blobs need. The layer types are the
registry :data:`LAYER_BUILDERS`; they cover the ncnn models of ``../shared/models``
(YOLOv5n-seg and SqueezeNet 1.1). A file that does not fit raises
:class:`~icmh.errors.InvalidInputError` in one line naming the file and the layer.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError

MAGIC = 7767517
ARRAY_KEY_BASE = -23300  # key -23300 - k is the array parameter k
FP32_TAG, FP16_TAG, INT8_TAG, FP32_SCALED_TAG = 0x00000000, 0x01306B47, 0x000D4B38, 0x0002C056
QUANTIZE_TABLE_SIZE = 256
SAME_UPPER, SAME_LOWER = -233, -234  # convolution pads meaning TensorFlow/ONNX "same"
DROP_DIM = -233  # Reshape: this dimension is absent

Number = Union[int, float]
ParamValue = Union[Number, Tuple[Number, ...]]
Pads = Tuple[int, int, int, int]  # left, right, top, bottom (F.pad's order)


# -- the .param text --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One layer line of a ``.param`` file; ``origin`` names the file in error messages."""

    type: str
    name: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    params: Mapping[int, ParamValue]
    origin: str = "ncnn model"

    def error(self, message: str) -> InvalidInputError:
        """An :class:`InvalidInputError` about this layer (to raise)."""
        return InvalidInputError(f"{self.origin}: layer {self.name} ({self.type}): {message}")

    def int_param(self, key: int, default: int) -> int:
        """Integer parameter ``key`` (``default`` when absent); raises :class:`InvalidInputError` for a non-int."""
        value = self.params.get(key, default)
        if not isinstance(value, int):
            raise self.error(f"parameter {key} must be an integer, not {value!r}")
        return value

    def float_param(self, key: int, default: float) -> float:
        """Float parameter ``key`` (``default`` when absent; an integer spelling is accepted)."""
        value = self.params.get(key, default)
        if isinstance(value, tuple):
            raise self.error(f"parameter {key} must be a number, not an array")
        return float(value)

    def array_param(self, key: int) -> Tuple[float, ...]:
        """Array parameter ``key`` as floats (empty when absent; a scalar is a one-element array)."""
        value = self.params.get(key, ())
        return tuple(float(v) for v in (value if isinstance(value, tuple) else (value,)))

    def require_blobs(self, inputs: Optional[int], outputs: Optional[int] = 1) -> None:
        """Check the layer's input and output counts (``None``: any number, at least one)."""
        for kind, count, expected in (("inputs", len(self.inputs), inputs), ("outputs", len(self.outputs), outputs)):
            if (expected is None and count < 1) or (expected is not None and count != expected):
                raise self.error(f"has {count} {kind}, expected {expected if expected is not None else 'one or more'}")


def parse_param(data: bytes, what: str = "ncnn param") -> Tuple[LayerSpec, ...]:
    """The layers of a text ``.param`` file, in execution order, checked as a graph.

    ``what`` names the file in errors. Raises :class:`InvalidInputError` for a file that is
    not ncnn param text (bad magic, binary), malformed lines or parameters, counts that do
    not match the header, or blobs read before any layer produces them.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{what}: not a text ncnn .param file (binary .param.bin files are not read)") from None
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines or lines[0][1] != [str(MAGIC)]:
        first = " ".join(lines[0][1])[:40] if lines else ""
        raise InvalidInputError(f"{what}: bad magic {first!r}, expected {MAGIC}: not an ncnn .param file")
    if len(lines) < 2:
        raise InvalidInputError(f"{what}: the 'layer_count blob_count' line is missing")
    layer_count, blob_count = _header(lines[1][1], what)
    layers = tuple(_layer(tokens, number, what) for number, tokens in lines[2:])
    _check_graph(layers, layer_count, blob_count, what)
    return layers


def _header(tokens: Sequence[str], what: str) -> Tuple[int, int]:
    if len(tokens) != 2 or not all(t.isdigit() for t in tokens):
        raise InvalidInputError(f"{what}: line 2 must be 'layer_count blob_count', not {' '.join(tokens)[:60]!r}")
    return int(tokens[0]), int(tokens[1])


def _layer(tokens: Sequence[str], line: int, what: str) -> LayerSpec:
    where = f"{what} line {line}"
    if len(tokens) < 4 or not tokens[2].isdigit() or not tokens[3].isdigit():
        raise InvalidInputError(f"{where}: a layer line is 'type name n_in n_out inputs… outputs… key=value…'")
    n_in, n_out = int(tokens[2]), int(tokens[3])
    blobs, rest = tokens[4:4 + n_in + n_out], tokens[4 + n_in + n_out:]
    if len(blobs) < n_in + n_out:
        raise InvalidInputError(f"{where}: layer {tokens[1]} names {len(blobs)} blobs, expected {n_in + n_out}")
    params: Dict[int, ParamValue] = {}
    for token in rest:
        key, value = _param(token, where)
        if key in params:
            raise InvalidInputError(f"{where}: parameter {key} given twice")
        params[key] = value
    return LayerSpec(tokens[0], tokens[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params, what)


def _param(token: str, where: str) -> Tuple[int, ParamValue]:
    """``key=value`` → (key, value): arrays for keys ≤ -23300 (``count,v…``) or comma lists."""
    key_text, sep, value_text = token.partition("=")
    try:
        key = int(key_text)
        if not sep or not value_text:
            raise ValueError("no value")
        if key <= ARRAY_KEY_BASE:
            count, *items = value_text.split(",")
            if int(count) != len(items):
                raise ValueError(f"array says {count} values, has {len(items)}")
            return ARRAY_KEY_BASE - key, tuple(_number(v) for v in items)
        if "," in value_text:
            return key, tuple(_number(v) for v in value_text.split(","))
        return key, _number(value_text)
    except ValueError as exc:
        raise InvalidInputError(f"{where}: bad parameter {token[:40]!r} ({exc})") from None


def _number(text: str) -> Number:
    """An ncnn parameter value: a float when spelled with '.' or an exponent, else an int."""
    is_float = any(c in text for c in ".eE") or text.lower().lstrip("+-") in ("inf", "nan")
    return float(text) if is_float else int(text)


def _check_graph(layers: Sequence[LayerSpec], layer_count: int, blob_count: int, what: str) -> None:
    if len(layers) != layer_count:
        raise InvalidInputError(f"{what}: the header announces {layer_count} layers, the file has {len(layers)}")
    names = set()
    produced: set = set()
    for layer in layers:
        if layer.name in names:
            raise InvalidInputError(f"{what}: two layers are called {layer.name}")
        names.add(layer.name)
        missing = [b for b in layer.inputs if b not in produced]
        if missing:
            raise InvalidInputError(f"{what}: layer {layer.name} reads blob {missing[0]!r}, which no earlier layer "
                                    f"produces")
        twice = [b for b in layer.outputs if b in produced]
        if twice:
            raise InvalidInputError(f"{what}: blob {twice[0]!r} is produced twice (again by layer {layer.name})")
        produced.update(layer.outputs)
    if len(produced) != blob_count:
        raise InvalidInputError(f"{what}: the header announces {blob_count} blobs, the layers make {len(produced)}")


# -- the .bin weights -------------------------------------------------------------------------------
class WeightReader:
    """Reads the weight blobs of an ncnn ``.bin`` in order; ``what`` names the file in errors."""

    def __init__(self, data: bytes, what: str = "ncnn weights") -> None:
        self.data = data
        self.what = what
        self.offset = 0

    def tagged(self, count: int, layer: LayerSpec) -> Tensor:
        """The next blob of ``count`` values, stored after a 4-byte storage tag, as float32.

        Raises :class:`InvalidInputError` for int8 weights (not run here) or a file that ends early.
        """
        (tag,) = struct.unpack("<I", self._take(4, layer, "its storage tag"))
        if tag == FP16_TAG:
            return self._array(count, np.dtype("<f2"), layer)
        if tag in (FP32_TAG, FP32_SCALED_TAG):
            return self._array(count, np.dtype("<f4"), layer)
        if tag == INT8_TAG:
            raise layer.error(f"int8 weights ({self.what}) are not supported; convert the model with fp32 or fp16 "
                              f"weights")
        table = self._array(QUANTIZE_TABLE_SIZE, np.dtype("<f4"), layer)
        indexes = np.frombuffer(self._take(count, layer, "its quantised weights"), dtype=np.uint8)
        return table[torch.from_numpy(indexes.astype(np.int64))]

    def raw(self, count: int, layer: LayerSpec) -> Tensor:
        """The next blob of ``count`` raw float32 values (a bias); raises :class:`InvalidInputError` at the end."""
        return self._array(count, np.dtype("<f4"), layer)

    def finish(self) -> None:
        """Check that every byte was read; raises :class:`InvalidInputError` when bytes are left over."""
        left = len(self.data) - self.offset
        if left:
            raise InvalidInputError(
                f"{self.what}: {left} bytes are left after the last layer's weights ({len(self.data)} bytes in all): "
                f"the .bin does not belong to this .param")

    def _array(self, count: int, dtype: np.dtype, layer: LayerSpec) -> Tensor:
        data = self._take(count * dtype.itemsize, layer, f"{count} weights")
        return torch.from_numpy(np.frombuffer(data, dtype=dtype).astype(np.float32))

    def _take(self, size: int, layer: LayerSpec, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise InvalidInputError(
                f"{self.what}: the file ends ({len(self.data)} bytes) inside the weights of layer {layer.name} "
                f"({layer.type}, {what} need {end - len(self.data)} more bytes): truncated, or not the .bin of this "
                f".param")
        chunk = self.data[self.offset:end]
        self.offset = end + (-size) % 4  # every blob is padded to 4 bytes
        return chunk


class NoWeights:
    """Stands in for the ``.bin`` when only the architecture is wanted: every blob is zeros."""

    def tagged(self, count: int, layer: LayerSpec) -> Tensor:
        """``count`` zeros."""
        return torch.zeros(count)

    raw = tagged

    def finish(self) -> None:
        """Nothing to check."""


WeightSource = Union[WeightReader, NoWeights]


# -- layers -----------------------------------------------------------------------------------------
def tensor_dim(x: Tensor, axis: int) -> int:
    """The tensor dimension of ncnn axis ``axis`` (negative: from the end) of a batched blob ``x``."""
    rank = x.dim() - 1
    return 1 + (axis if axis >= 0 else axis + rank)


def same_padding(size: int, extent: int, stride: int, lower: bool) -> Tuple[int, int]:
    """ncnn's "same" padding of one axis (before, after): the extra pixel goes after (upper) or before (lower)."""
    total = max(0, extent + (size - 1) // stride * stride - size)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def resolve_pads(x: Tensor, pads: Pads, extents: Tuple[int, int], strides: Tuple[int, int]) -> Pads:
    """``pads`` (left, right, top, bottom) for input ``x``, with ncnn's -233/-234 "same" pads computed."""
    if pads[0] not in (SAME_UPPER, SAME_LOWER):
        return pads
    lower = pads[0] == SAME_LOWER
    left, right = same_padding(x.shape[-1], extents[1], strides[1], lower)
    top, bottom = same_padding(x.shape[-2], extents[0], strides[0], lower)
    return left, right, top, bottom


ACTIVATIONS: Dict[int, Callable[[Tuple[float, ...]], nn.Module]] = {
    0: lambda p: nn.Identity(),
    1: lambda p: nn.ReLU(),
    2: lambda p: nn.LeakyReLU(p[0] if p else 0.0),
    3: lambda p: nn.Hardtanh(p[0] if p else -math.inf, p[1] if len(p) > 1 else math.inf),
    4: lambda p: nn.Sigmoid(),
    5: lambda p: nn.Mish(),
}
"""A convolution's fused activation (``activation_type`` → module from ``activation_params``)."""


class Convolution(nn.Conv2d):
    """ncnn Convolution / ConvolutionDepthWise: padding (explicit, asymmetric, "same", any value), the
    convolution, then the fused activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Tuple[int, int], stride: Tuple[int, int],
                 dilation: Tuple[int, int], groups: int, bias: bool, pads: Pads, pad_value: float,
                 activation: nn.Module) -> None:
        plain = pads[0] == pads[1] >= 0 and pads[2] == pads[3] >= 0 and pad_value == 0
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=(pads[2], pads[0]) if plain else 0,
                         dilation=dilation, groups=groups, bias=bias)
        self.explicit_pads: Optional[Pads] = None if plain else pads
        self.pad_value = pad_value
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.explicit_pads is not None:
            extents = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
            x = F.pad(x, resolve_pads(x, self.explicit_pads, extents, self.stride), value=self.pad_value)
        return self.activation(super().forward(x))


def build_convolution(spec: LayerSpec, weights: WeightSource) -> Convolution:
    """A :class:`Convolution` with the layer's weights; raises :class:`InvalidInputError` for sizes that do not fit."""
    spec.require_blobs(1)
    out_channels, size = spec.int_param(0, 0), spec.int_param(6, 0)
    kernel_w = spec.int_param(1, 0)
    kernel = (spec.int_param(11, kernel_w), kernel_w)
    dilation_w, stride_w = spec.int_param(2, 1), spec.int_param(3, 1)
    dilation, stride = (spec.int_param(12, dilation_w), dilation_w), (spec.int_param(13, stride_w), stride_w)
    left = spec.int_param(4, 0)
    top = spec.int_param(14, left)
    pads = (left, spec.int_param(15, left), top, spec.int_param(16, top))
    groups = spec.int_param(7, 1) if spec.type == "ConvolutionDepthWise" else 1
    if spec.int_param(8, 0) or spec.int_param(19, 0):
        raise spec.error("int8 quantised or dynamic-weight convolutions are not supported")
    activation = spec.int_param(9, 0)
    if activation not in ACTIVATIONS:
        raise spec.error(f"activation_type {activation} is not supported (known: {sorted(ACTIVATIONS)})")
    per_output = out_channels * kernel[0] * kernel[1]
    per_group_in = size // per_output if per_output > 0 else 0  # the weights are out × in/groups × kh × kw
    if per_group_in < 1 or per_group_in * per_output != size or groups < 1 or out_channels % groups:
        raise spec.error(f"weight_data_size {size} does not fit {out_channels} outputs, kernel {kernel[1]}x{kernel[0]} "
                         f"and {groups} groups")
    layer = Convolution(per_group_in * groups, out_channels, kernel, stride, dilation, groups,
                        bool(spec.int_param(5, 0)), pads, spec.float_param(18, 0.0),
                        ACTIVATIONS[activation](spec.array_param(10)))
    with torch.no_grad():
        layer.weight.copy_(weights.tagged(size, spec).view_as(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(weights.raw(out_channels, spec))
    return layer


class Pooling(nn.Module):
    """ncnn Pooling: max or average, global or windowed, with ncnn's four padding modes."""

    def __init__(self, average: bool, kernel: Tuple[int, int], stride: Tuple[int, int], pads: Pads, pad_mode: int,
                 global_pooling: bool, count_include_pad: bool) -> None:
        super().__init__()
        self.average, self.kernel, self.stride, self.pads = average, kernel, stride, pads
        self.pad_mode, self.global_pooling, self.count_include_pad = pad_mode, global_pooling, count_include_pad

    def padding(self, x: Tensor) -> Pads:
        """The padding of ``x`` (left, right, top, bottom): mode 0 adds the tail that makes the last window
        fit (Caffe's ceil mode), 1 uses the pads as given, 2/3 are "same" (upper/lower)."""
        if self.pad_mode in (2, 3):
            return resolve_pads(x, (SAME_UPPER if self.pad_mode == 2 else SAME_LOWER,) * 4, self.kernel, self.stride)
        left, right, top, bottom = self.pads
        if self.pad_mode == 0:
            right += (-(x.shape[-1] + left + right - self.kernel[1])) % self.stride[1]
            bottom += (-(x.shape[-2] + top + bottom - self.kernel[0])) % self.stride[0]
        return left, right, top, bottom

    def forward(self, x: Tensor) -> Tensor:
        if self.global_pooling:  # a 1-D blob of channels
            return x.mean(dim=(-2, -1)) if self.average else x.amax(dim=(-2, -1))
        pads = self.padding(x)
        if not self.average:
            return F.max_pool2d(F.pad(x, pads, value=-math.inf), self.kernel, self.stride)
        mean = F.avg_pool2d(F.pad(x, pads), self.kernel, self.stride)
        if self.count_include_pad:
            return mean
        inside = F.avg_pool2d(F.pad(torch.ones_like(x[:, :1]), pads), self.kernel, self.stride)
        return mean / inside  # averages over the pixels inside the image only, as ncnn


def build_pooling(spec: LayerSpec, weights: WeightSource) -> Pooling:
    """A :class:`Pooling`; raises :class:`InvalidInputError` for adaptive pooling or unknown types and modes."""
    spec.require_blobs(1)
    pooling_type, pad_mode = spec.int_param(0, 0), spec.int_param(5, 0)
    if pooling_type not in (0, 1) or pad_mode not in (0, 1, 2, 3) or spec.int_param(7, 0):
        raise spec.error("only max/average pooling (type 0/1), pad modes 0-3 and no adaptive pooling are supported")
    kernel_w, stride_w, left = spec.int_param(1, 0), spec.int_param(2, 1), spec.int_param(3, 0)
    top = spec.int_param(13, left)
    pads = (left, spec.int_param(14, left), top, spec.int_param(15, top))
    kernel, stride = (spec.int_param(11, kernel_w), kernel_w), (spec.int_param(12, stride_w), stride_w)
    return Pooling(pooling_type == 1, kernel, stride, pads, pad_mode, bool(spec.int_param(4, 0)),
                   bool(spec.int_param(6, 0)))


class Interp(nn.Module):
    """ncnn Interp of a 3-D blob: nearest, bilinear or bicubic, by fixed scales or to a fixed size."""

    MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}

    def __init__(self, mode: str, scales: Tuple[float, float], size: Tuple[int, int], align_corners: bool) -> None:
        super().__init__()
        self.mode, self.scales, self.size, self.align_corners = mode, scales, size, align_corners

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InvalidInputError(f"Interp of a {x.dim() - 1}-D blob is not supported (3-D only)")
        if self.mode == "nearest" and not all(self.size):  # ncnn samples at 1/scale, as torch with a scale factor
            return F.interpolate(x, scale_factor=self.scales, mode="nearest", recompute_scale_factor=False)
        size = self.size if all(self.size) else (int(x.shape[-2] * self.scales[0]), int(x.shape[-1] * self.scales[1]))
        corners = None if self.mode == "nearest" else self.align_corners
        return F.interpolate(x, size=size, mode=self.mode, align_corners=corners)


def build_interp(spec: LayerSpec, weights: WeightSource) -> Interp:
    """An :class:`Interp`; raises :class:`InvalidInputError` for a dynamic target size or unknown resize type."""
    spec.require_blobs(1)
    resize_type = spec.int_param(0, 0)
    if resize_type not in Interp.MODES or spec.int_param(5, 0):
        raise spec.error(f"resize_type {resize_type} / dynamic target size is not supported (types 1-3, fixed sizes)")
    scales = (spec.float_param(1, 1.0), spec.float_param(2, 1.0))
    return Interp(Interp.MODES[resize_type], scales, (spec.int_param(3, 0), spec.int_param(4, 0)),
                  bool(spec.int_param(6, 0)))


BINARY_OPS: Dict[int, Callable[[Tensor, Tensor], Tensor]] = {
    0: torch.add, 1: torch.sub, 2: torch.mul, 3: torch.div, 4: torch.maximum, 5: torch.minimum, 6: torch.pow,
    7: lambda a, b: b - a, 8: lambda a, b: b / a,
}
"""ncnn BinaryOp ``op_type`` → operation (ADD, SUB, MUL, DIV, MAX, MIN, POW, RSUB, RDIV)."""


class BinaryOp(nn.Module):
    """ncnn BinaryOp of two blobs of the same rank (torch broadcasting), or of a blob and a scalar."""

    def __init__(self, op_type: int, scalar: Optional[float]) -> None:
        super().__init__()
        self.op_type, self.scalar = op_type, scalar

    def forward(self, a: Tensor, b: Optional[Tensor] = None) -> Tensor:
        if b is None:
            b = a.new_tensor(self.scalar)
        elif a.dim() != b.dim():
            raise InvalidInputError(f"BinaryOp of blobs of ranks {a.dim() - 1} and {b.dim() - 1} is not supported")
        return BINARY_OPS[self.op_type](a, b)


def build_binary_op(spec: LayerSpec, weights: WeightSource) -> BinaryOp:
    """A :class:`BinaryOp`; raises :class:`InvalidInputError` for an unknown ``op_type``."""
    op_type, with_scalar = spec.int_param(0, 0), spec.int_param(1, 0)
    spec.require_blobs(1 if with_scalar else 2)
    if op_type not in BINARY_OPS:
        raise spec.error(f"op_type {op_type} is not supported (known: {sorted(BINARY_OPS)})")
    return BinaryOp(op_type, spec.float_param(2, 0.0) if with_scalar else None)


AXES_BY_RANK = {1: ("w",), 2: ("h", "w"), 3: ("c", "h", "w"), 4: ("c", "d", "h", "w")}


class Reshape(nn.Module):
    """ncnn Reshape: ``shape`` maps the ncnn axes of the result (outermost first) to a size, 0 (the input's
    size on that axis) or -1 (what remains); elements keep ncnn's c-h-w order."""

    def __init__(self, shape: Mapping[str, int]) -> None:
        super().__init__()
        self.shape = dict(shape)

    def forward(self, x: Tensor) -> Tensor:
        bottom = dict(zip(AXES_BY_RANK[x.dim() - 1], x.shape[1:]))
        sizes = [bottom.get(axis, 1) if size == 0 else size for axis, size in self.shape.items()]
        return x.reshape(x.shape[0], *sizes)


def build_reshape(spec: LayerSpec, weights: WeightSource) -> Reshape:
    """A :class:`Reshape`; raises :class:`InvalidInputError` for the hwc ``permute`` variant."""
    spec.require_blobs(1)
    if spec.int_param(3, 0):
        raise spec.error("Reshape with permute=1 is not supported")
    flags = {axis: spec.int_param(key, DROP_DIM) for axis, key in (("w", 0), ("h", 1), ("d", 11), ("c", 2))}
    rank = 1 if flags["h"] == DROP_DIM else 2 if flags["c"] == DROP_DIM else 3 if flags["d"] == DROP_DIM else 4
    return Reshape({axis: flags[axis] for axis in AXES_BY_RANK[rank]})


PERMUTE_ORDERS = {2: ("WH", "HW"), 3: ("WHC", "HWC", "WCH", "CWH", "HCW", "CHW")}
"""ncnn Permute ``order_type`` per blob rank: the input axes that become the output's w, h, c."""


class Permute(nn.Module):
    """ncnn Permute of a 2-D or 3-D blob (``order_type`` 0-5; 1-D blobs pass through)."""

    def __init__(self, order_type: int) -> None:
        super().__init__()
        self.order_type = order_type

    def forward(self, x: Tensor) -> Tensor:
        rank = x.dim() - 1
        if rank == 1:
            return x
        orders = PERMUTE_ORDERS.get(rank, ())
        if self.order_type >= len(orders):
            raise InvalidInputError(f"Permute order_type {self.order_type} of a {rank}-D blob is not supported")
        dims = {"W": rank, "H": rank - 1, "C": rank - 2}
        return x.permute(0, *(dims[axis] for axis in reversed(orders[self.order_type])))


def build_permute(spec: LayerSpec, weights: WeightSource) -> Permute:
    """A :class:`Permute`; raises :class:`InvalidInputError` for 4-D orders."""
    spec.require_blobs(1)
    order_type = spec.int_param(0, 0)
    if not 0 <= order_type < len(PERMUTE_ORDERS[3]):
        raise spec.error(f"order_type {order_type} is not supported (0-5)")
    return Permute(order_type)


class Concat(nn.Module):
    """ncnn Concat along ncnn ``axis``."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=tensor_dim(xs[0], self.axis))


class Softmax(nn.Module):
    """ncnn Softmax along ncnn ``axis``."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, dim=tensor_dim(x, self.axis))


class Split(nn.Module):
    """ncnn Split: the input, once per output blob."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return (x,) * self.count


def _one_to_one(make: Callable[[LayerSpec], nn.Module]) -> Callable[[LayerSpec, WeightSource], nn.Module]:
    """A builder of a one-input, one-output layer without weights, made by ``make(spec)``."""
    def build(spec: LayerSpec, weights: WeightSource) -> nn.Module:
        spec.require_blobs(1)
        return make(spec)
    return build


def _build_concat(spec: LayerSpec, weights: WeightSource) -> Concat:
    spec.require_blobs(None)
    return Concat(spec.int_param(0, 0))


def _build_split(spec: LayerSpec, weights: WeightSource) -> Split:
    spec.require_blobs(1, None)
    return Split(len(spec.outputs))


def _build_input(spec: LayerSpec, weights: WeightSource) -> nn.Module:
    spec.require_blobs(0)
    return nn.Identity()  # never run: the network's inputs are fed to its output blob


LayerBuilder = Callable[[LayerSpec, WeightSource], nn.Module]

LAYER_BUILDERS: Dict[str, LayerBuilder] = {
    "Input": _build_input,
    "Convolution": build_convolution,
    "ConvolutionDepthWise": build_convolution,
    "Pooling": build_pooling,
    "Interp": build_interp,
    "BinaryOp": build_binary_op,
    "Concat": _build_concat,
    "Split": _build_split,
    "Reshape": build_reshape,
    "Permute": build_permute,
    "Swish": _one_to_one(lambda spec: nn.SiLU()),
    "Sigmoid": _one_to_one(lambda spec: nn.Sigmoid()),
    "ReLU": _one_to_one(lambda spec: nn.LeakyReLU(spec.float_param(0, 0.0))),
    "Softmax": _one_to_one(lambda spec: Softmax(spec.int_param(0, 0))),
}
"""ncnn layer type → builder of its module (reading its weights, in file order, from the source)."""


# -- the network ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One layer to run (index into the layers) and the blobs no later step reads (freed after it)."""

    index: int
    release: Tuple[str, ...]


class NcnnNet(nn.Module):
    """An ncnn graph as a PyTorch module: ``forward(inputs, outputs)`` returns the named blobs.

    ``specs`` are the parsed layers, ``layers`` their modules (same order). ``input_names``
    are the blobs of the Input layers, ``output_names`` the blobs no layer reads.
    """

    def __init__(self, specs: Sequence[LayerSpec], layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.specs = tuple(specs)
        self.layers = nn.ModuleList(layers)
        self.input_names = tuple(b for s in self.specs if s.type == "Input" for b in s.outputs)
        read = {b for s in self.specs for b in s.inputs}
        self.output_names = tuple(b for s in self.specs for b in s.outputs if b not in read)
        self._producer = {b: i for i, s in enumerate(self.specs) for b in s.outputs}
        self._index = {s.name: i for i, s in enumerate(self.specs)}
        self._plans: Dict[Tuple[str, ...], Tuple[Step, ...]] = {}

    def spec(self, name: str) -> LayerSpec:
        """The parsed layer called ``name``; raises :class:`InvalidInputError` if there is none."""
        if name not in self._index:
            raise InvalidInputError(f"the ncnn model has no layer called {name!r}")
        return self.specs[self._index[name]]

    def layer(self, name: str) -> nn.Module:
        """The module of the layer called ``name``; raises :class:`InvalidInputError` if there is none."""
        self.spec(name)
        return self.layers[self._index[name]]

    def forward(self, inputs: Union[Tensor, Mapping[str, Tensor]],
                outputs: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        """The blobs named ``outputs`` (default: :attr:`output_names`) for ``inputs`` (batched tensors:
        one, or a mapping from input blob name); runs only the layers they need.

        Raises :class:`InvalidInputError` for unknown blob names or missing inputs.
        """
        wanted = tuple(outputs) if outputs is not None else self.output_names
        blobs: Dict[str, Tensor] = dict(self._feeds(inputs))
        for step in self.plan(wanted):
            spec = self.specs[step.index]
            result = self.layers[step.index](*(blobs[b] for b in spec.inputs))
            blobs.update(zip(spec.outputs, result if isinstance(result, tuple) else (result,)))
            for blob in step.release:
                del blobs[blob]
        return {name: blobs[name] for name in wanted}

    def plan(self, wanted: Tuple[str, ...]) -> Tuple[Step, ...]:
        """The layers (in file order) that ``wanted`` needs, each with the blobs to free after it (cached)."""
        if wanted not in self._plans:
            unknown = [b for b in wanted if b not in self._producer]
            if unknown:
                raise InvalidInputError(f"the ncnn model has no blob {unknown[0]!r} (outputs: "
                                        f"{', '.join(self.output_names)})")
            needed = self._ancestors(wanted)
            last_read = {b: i for i in needed for b in self.specs[i].inputs}
            self._plans[wanted] = tuple(
                Step(i, tuple(b for b in dict.fromkeys(self.specs[i].inputs) if last_read[b] == i and b not in wanted))
                for i in needed)
        return self._plans[wanted]

    def _ancestors(self, wanted: Sequence[str]) -> List[int]:
        """Indexes of the non-Input layers the blobs ``wanted`` depend on, in file order."""
        needed, stack = set(), list(wanted)
        while stack:
            index = self._producer[stack.pop()]
            if index not in needed:
                needed.add(index)
                stack.extend(self.specs[index].inputs)
        return sorted(i for i in needed if self.specs[i].type != "Input")

    def _feeds(self, inputs: Union[Tensor, Mapping[str, Tensor]]) -> Mapping[str, Tensor]:
        if isinstance(inputs, Tensor):
            if len(self.input_names) != 1:
                raise InvalidInputError(f"the ncnn model has inputs {', '.join(self.input_names)}: pass a mapping")
            return {self.input_names[0]: inputs}
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise InvalidInputError(f"input blob {missing[0]!r} of the ncnn model is not given")
        return inputs


def load_ncnn(param: bytes, weights: Optional[bytes], what: str = "ncnn model") -> NcnnNet:
    """An :class:`NcnnNet` from the bytes of a ``.param`` file and its ``.bin`` (``None``: the architecture
    with zero weights, e.g. to re-initialise at random). ``what`` names the model in errors.

    Raises :class:`InvalidInputError` for a malformed param file, a layer type missing from
    :data:`LAYER_BUILDERS` (naming the layer), parameters this reader does not run, or a
    ``.bin`` whose size does not match the layers (truncated, or bytes left over).
    """
    specs = parse_param(param, f"{what} (.param)")
    source: WeightSource = NoWeights() if weights is None else WeightReader(weights, f"{what} (.bin)")
    layers = [build_layer(spec, source) for spec in specs]
    source.finish()
    return NcnnNet(specs, layers)


def build_layer(spec: LayerSpec, weights: WeightSource) -> nn.Module:
    """The module of ``spec`` from :data:`LAYER_BUILDERS`; raises :class:`InvalidInputError` for an unknown type."""
    builder = LAYER_BUILDERS.get(spec.type)
    if builder is None:
        raise spec.error(f"layer type {spec.type!r} is not supported by this reader "
                         f"(supported: {', '.join(sorted(LAYER_BUILDERS))})")
    return builder(spec, weights)
