"""A TFLite flatbuffer as a float, differentiable PyTorch module (dequantised weights).

TFLite files are read with the PyPI ``tflite`` package (generated flatbuffer accessors of
the TFLite schema); nothing is executed or unpickled. :func:`parse_model` turns the bytes
into a :class:`TfliteGraph` (tensors with their quantisation and constant data, operators
with their builtin options), and :func:`build_network` builds a :class:`TfliteNetwork`
from it, one module per operator, found in the registry :data:`OPERATOR_BUILDERS`:

* ``CONV_2D`` / ``DEPTHWISE_CONV_2D``: :class:`TfConv2d`, weights ``OHWI`` / ``1HW(C·M)``
  dequantised ``scale · (q − zero_point)`` (per tensor or per output channel), int32
  biases dequantised with ``input_scale · weight_scale``; TF ``SAME`` padding done
  exactly (the extra pixel of an odd total at the bottom/right), dilations, fused
  activations;
* ``ADD``, ``AVERAGE_POOL_2D`` (``SAME`` windows average only the real pixels, as TF does),
  ``RESHAPE`` (in TFLite's NHWC element order), ``SOFTMAX`` (with its ``beta``).

Every 4-D tensor is kept NCHW inside the module (TFLite's are NHWC). Activations run in
float, or emulate the uint8 activation quantisation (``emulate_quantization``): every
quantised tensor is rounded to its own scale and zero point and clamped to its
representable range, with a straight-through gradient. Emulated, each operator matches the
runtime's uint8 kernel up to rare rounding ties (which then propagate).
Unknown operators and malformed files raise one :class:`~icmh.errors.InvalidInputError`
naming the file (``what``) and the operator.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Type

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..extras import optional_import

TFLITE_IDENTIFIER = b"TFL3"

# TensorType enum of the schema → numpy dtype of the stored bytes
TENSOR_DTYPES: Dict[int, np.dtype] = {
    0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("<i4"), 3: np.dtype("u1"), 4: np.dtype("<i8"),
    6: np.dtype("?"), 7: np.dtype("<i2"), 9: np.dtype("i1"), 10: np.dtype("<f8"),
}
PADDING_SAME, PADDING_VALID = 0, 1

Activation = Callable[[Tensor], Tensor]

FUSED_ACTIVATIONS: Dict[int, Activation] = {
    0: lambda x: x,                       # NONE
    1: F.relu,                            # RELU
    2: lambda x: x.clamp(-1.0, 1.0),      # RELU_N1_TO_1
    3: F.relu6,                           # RELU6 (uint8: the clamp to [0, 6] ∩ the output's range)
    4: torch.tanh,                        # TANH
}
"""Fused activation codes of the schema (``ActivationFunctionType``) → their float function."""


# -- the parsed graph -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantization:
    """Affine quantisation of a tensor: ``real = scale · (q − zero_point)``, per tensor or along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        """Whether there is one scale per slice along :attr:`axis`."""
        return self.scale.size > 1

    def broadcast(self, values: np.ndarray, rank: int) -> np.ndarray:
        """``values`` (scales or zero points) shaped to broadcast over a tensor of ``rank`` dimensions."""
        if not self.per_channel:
            return values.reshape(())
        shape = [1] * rank
        shape[self.axis] = values.size
        return values.reshape(shape)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """The real values of the stored integers ``q`` (float64)."""
        scale, zero = self.broadcast(self.scale, q.ndim), self.broadcast(self.zero_point, q.ndim)
        return scale * (q.astype(np.float64) - zero)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the graph: shape (TFLite order), stored type, quantisation and, for a
    constant, its stored values (``data``, shaped; ``None`` for a tensor computed at run time)."""

    index: int
    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    quantization: Optional[Quantization]
    data: Optional[np.ndarray]

    @property
    def is_constant(self) -> bool:
        """Whether the file holds the tensor's values (weights, biases, shapes)."""
        return self.data is not None

    @property
    def is_quantized(self) -> bool:
        """Whether the tensor is stored as integers with a scale."""
        return self.quantization is not None and self.dtype.kind in "iu"

    def real_values(self) -> np.ndarray:
        """The constant's real values (float64), dequantised if it is quantised; raises
        :class:`InvalidInputError` for a tensor without data."""
        if self.data is None:
            raise InvalidInputError(f"TFLite tensor {self.index} ({self.name}) has no constant data")
        return self.quantization.dequantize(self.data) if self.is_quantized else self.data.astype(np.float64)


@dataclass(frozen=True)
class OperatorInfo:
    """One operator: its builtin name, input and output tensor indexes (−1: omitted optional
    input) and its builtin options table (``None`` when it has none)."""

    index: int
    name: str
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    options_table: Any

    def options(self, options_class: Type[Any]) -> Any:
        """The builtin options read as ``options_class`` (e.g. ``tflite.Conv2DOptions``); raises
        :class:`InvalidInputError` when the operator has none."""
        if self.options_table is None:
            raise InvalidInputError(f"TFLite operator {self.index} ({self.name}) has no options")
        options = options_class()
        options.Init(self.options_table.Bytes, self.options_table.Pos)
        return options


@dataclass(frozen=True)
class TfliteGraph:
    """The first subgraph of a TFLite model."""

    tensors: Tuple[TensorInfo, ...]
    operators: Tuple[OperatorInfo, ...]
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]

    def tensor(self, index: int) -> TensorInfo:
        """Tensor ``index``; raises :class:`InvalidInputError` if there is none."""
        if not 0 <= index < len(self.tensors):
            raise InvalidInputError(f"TFLite graph refers to tensor {index}, which does not exist")
        return self.tensors[index]


def schema() -> Any:
    """The ``tflite`` package (the TFLite flatbuffer schema); raises :class:`InvalidInputError`
    saying how to install it when it is absent."""
    return optional_import("tflite", "server", "reading TFLite models (or choose another model with --model)")


@contextlib.contextmanager
def errors_naming(what: str) -> Iterator[None]:
    """Turn any error raised inside into one :class:`InvalidInputError` that starts with ``what``
    (the file); errors of the flatbuffer accessors mean a malformed file."""
    try:
        yield
    except InvalidInputError as exc:
        raise InvalidInputError(f"{what}: {exc}") from None
    except Exception as exc:  # struct.error, IndexError, UnicodeDecodeError, ... from a damaged table
        raise InvalidInputError(f"{what}: malformed TFLite model ({type(exc).__name__}: {exc})") from None


def parse_model(data: bytes, what: str = "TFLite model") -> TfliteGraph:
    """The first subgraph of the TFLite flatbuffer ``data``; ``what`` names it in errors.

    Raises :class:`InvalidInputError` (one line) when ``data`` is not a TFLite model or
    its tables are malformed (out-of-range offsets, unknown tensor types, bad sizes).
    """
    tflite = schema()
    with errors_naming(what):
        if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
            raise InvalidInputError("not a TFLite model (no 'TFL3' file identifier)")
        model = tflite.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() < 1:
            raise InvalidInputError("TFLite model has no subgraph")
        subgraph = model.Subgraphs(0)
        tensors = tuple(_read_tensor(model, subgraph.Tensors(i), i, data) for i in range(subgraph.TensorsLength()))
        codes = [_operator_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
        operators = tuple(_read_operator(subgraph.Operators(i), i, codes) for i in range(subgraph.OperatorsLength()))
        return TfliteGraph(tensors, operators, _indexes(subgraph.InputsAsNumpy(), subgraph.InputsLength()),
                           _indexes(subgraph.OutputsAsNumpy(), subgraph.OutputsLength()))


def _indexes(values: Any, length: int) -> Tuple[int, ...]:
    """A flatbuffer int vector (``AsNumpy`` gives ``0`` for an empty one) as a tuple."""
    return tuple(int(i) for i in values) if length else ()


def _operator_name(code: Any) -> str:
    """The builtin name of an ``OperatorCode`` (``CUSTOM:<name>`` for custom operators)."""
    BUILTIN_OPCODE2NAME = optional_import("tflite.utils", "server", "reading TFLite models").BUILTIN_OPCODE2NAME

    number = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
    if number == 32:  # CUSTOM
        return f"CUSTOM:{(code.CustomCode() or b'?').decode(errors='replace')}"
    return BUILTIN_OPCODE2NAME.get(number, f"builtin operator {number}")


def _read_operator(op: Any, index: int, codes: Sequence[str]) -> OperatorInfo:
    """One ``Operator`` table as :class:`OperatorInfo`."""
    opcode = int(op.OpcodeIndex())
    if not 0 <= opcode < len(codes):
        raise InvalidInputError(f"TFLite operator {index} has operator code {opcode}, which does not exist")
    return OperatorInfo(index, codes[opcode], _indexes(op.InputsAsNumpy(), op.InputsLength()),
                        _indexes(op.OutputsAsNumpy(), op.OutputsLength()), op.BuiltinOptions())


def _read_tensor(model: Any, tensor: Any, index: int, data: bytes) -> TensorInfo:
    """One ``Tensor`` table as :class:`TensorInfo`, with its constant values if it has any."""
    name = (tensor.Name() or b"").decode(errors="replace")
    dtype = TENSOR_DTYPES.get(int(tensor.Type()))
    shape = _indexes(tensor.ShapeAsNumpy(), tensor.ShapeLength())
    raw = _buffer_bytes(model, int(tensor.Buffer()), data)
    if raw is not None and dtype is None:
        raise InvalidInputError(f"TFLite tensor {index} ({name}) has unsupported type {tensor.Type()}")
    values = None
    if raw is not None:
        count = int(np.prod(shape)) if shape else 1
        if len(raw) != count * dtype.itemsize:
            raise InvalidInputError(f"TFLite tensor {index} ({name}) holds {len(raw)} bytes for shape {list(shape)}")
        values = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return TensorInfo(index, name, shape, dtype or np.dtype("V1"), _read_quantization(tensor.Quantization()), values)


def _buffer_bytes(model: Any, index: int, data: bytes) -> Optional[bytes]:
    """The bytes of buffer ``index`` (inline, or at an offset of the file), ``None`` when empty."""
    if index == 0 or index >= model.BuffersLength():
        return None
    buffer = model.Buffers(index)
    if buffer.Offset() > 1:  # large models keep their buffers after the flatbuffer
        start, size = int(buffer.Offset()), int(buffer.Size())
        if start + size > len(data):
            raise InvalidInputError(f"TFLite buffer {index} lies outside the file")
        return data[start:start + size]
    return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else None


def _read_quantization(params: Any) -> Optional[Quantization]:
    """A ``QuantizationParameters`` table as :class:`Quantization`, ``None`` when it has no scale."""
    if params is None or params.ScaleLength() == 0:
        return None
    scale = params.ScaleAsNumpy().astype(np.float64)
    zero = params.ZeroPointAsNumpy().astype(np.int64) if params.ZeroPointLength() else np.zeros(scale.size, np.int64)
    if zero.size != scale.size:
        raise InvalidInputError(f"TFLite quantisation has {scale.size} scales but {zero.size} zero points")
    return Quantization(scale, zero, int(params.QuantizedDimension()))


# -- modules ----------------------------------------------------------------------------------------
def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """TF ``SAME`` padding ``(before, after)`` of one dimension: the output has ``ceil(size / stride)``
    samples and an odd total puts the extra pixel after (bottom/right)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def same_pads(x: Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
              dilation: Tuple[int, int] = (1, 1)) -> Tuple[int, int, int, int]:
    """TF ``SAME`` padding of ``x`` (N×C×H×W) for a window, in ``F.pad``'s order (left, right, top, bottom)."""
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    return left, right, top, bottom


def pad_same(x: Tensor, kernel: Tuple[int, int], stride: Tuple[int, int], dilation: Tuple[int, int] = (1, 1),
             value: float = 0.0) -> Tensor:
    """``x`` (N×C×H×W) padded as TF ``SAME`` for a ``kernel``/``stride``/``dilation`` window."""
    pads = same_pads(x, kernel, stride, dilation)
    return F.pad(x, pads, value=value) if any(pads) else x


def fused_activation(code: int, operator: OperatorInfo) -> Activation:
    """The float function of fused activation ``code``; raises :class:`InvalidInputError` for others."""
    if code not in FUSED_ACTIVATIONS:
        raise InvalidInputError(f"TFLite operator {operator.index} ({operator.name}) has unsupported fused "
                                f"activation {code}")
    return FUSED_ACTIVATIONS[code]


class TfConv2d(nn.Conv2d):
    """A TFLite (depth-wise) convolution: TF ``SAME`` or ``VALID`` padding, then its fused activation."""

    def __init__(self, weight: Tensor, bias: Tensor, *, stride: Tuple[int, int], dilation: Tuple[int, int],
                 groups: int, same: bool, activation: Activation) -> None:
        out_channels, in_per_group, kernel_h, kernel_w = weight.shape
        super().__init__(in_per_group * groups, out_channels, (kernel_h, kernel_w), stride=stride,
                         dilation=dilation, groups=groups, bias=True)
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)
        self.same = same
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        padding = (0, 0)
        if self.same:
            left, right, top, bottom = same_pads(x, self.kernel_size, self.stride, self.dilation)
            if (left, top) == (right, bottom):  # symmetric: the convolution pads (no copy)
                padding = (top, left)
            else:
                x = F.pad(x, (left, right, top, bottom))
        return self.activation(F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups))


class Add(nn.Module):
    """Element-wise sum of two tensors, then the fused activation."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.activation(a + b)


class AveragePool(nn.Module):
    """TF average pooling: ``SAME`` windows average only the pixels inside the image."""

    def __init__(self, kernel: Tuple[int, int], stride: Tuple[int, int], same: bool, activation: Activation) -> None:
        super().__init__()
        self.kernel, self.stride, self.same, self.activation = kernel, stride, same, activation

    def forward(self, x: Tensor) -> Tensor:
        if not self.same:
            return self.activation(F.avg_pool2d(x, self.kernel, self.stride))
        padded = pad_same(x, self.kernel, self.stride)
        count = pad_same(torch.ones_like(x[:1, :1]), self.kernel, self.stride)
        return self.activation(F.avg_pool2d(padded, self.kernel, self.stride) /
                               F.avg_pool2d(count, self.kernel, self.stride))


class Reshape(nn.Module):
    """A reshape in TFLite's element order (NHWC for 4-D tensors); the batch size is kept."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.shape[1:])
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


class Softmax(nn.Module):
    """``softmax(beta · x)`` over TFLite's last axis (channels)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.beta).softmax(dim=1 if x.dim() == 4 else -1)


class FakeQuantize(nn.Module):
    """Rounds to a uint8/int8 grid (``scale``, ``zero_point``) and clamps to its range; the gradient
    passes straight through inside the range (``fake_quantize_per_tensor_affine``). Without
    gradients the same values come from in-place arithmetic (several times faster on CPU)."""

    def __init__(self, scale: float, zero_point: int, low: int, high: int) -> None:
        super().__init__()
        self.scale, self.zero_point, self.low, self.high = scale, zero_point, low, high

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.low, self.high)
        steps = x.mul(1.0 / self.scale).round_().clamp_(self.low - self.zero_point, self.high - self.zero_point)
        return steps.mul_(self.scale)


def fake_quantize_for(tensor: TensorInfo) -> Optional[FakeQuantize]:
    """The :class:`FakeQuantize` of a per-tensor quantised tensor, ``None`` for a float one."""
    if not tensor.is_quantized or tensor.quantization.per_channel:
        return None
    info = np.iinfo(tensor.dtype)
    return FakeQuantize(float(tensor.quantization.scale[0]), int(tensor.quantization.zero_point[0]),
                        int(info.min), int(info.max))


# -- operator builders ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildContext:
    """What an operator builder sees: the operator and the graph it belongs to."""

    operator: OperatorInfo
    graph: TfliteGraph

    def input(self, position: int) -> TensorInfo:
        """The operator's input tensor at ``position``; raises :class:`InvalidInputError` if absent."""
        if position >= len(self.operator.inputs) or self.operator.inputs[position] < 0:
            raise self.error(f"has no input {position}")
        return self.graph.tensor(self.operator.inputs[position])

    def output(self) -> TensorInfo:
        """The operator's (single) output tensor."""
        if len(self.operator.outputs) != 1:
            raise self.error(f"has {len(self.operator.outputs)} outputs, expected 1")
        return self.graph.tensor(self.operator.outputs[0])

    def error(self, message: str) -> InvalidInputError:
        """An :class:`InvalidInputError` naming this operator."""
        return InvalidInputError(f"TFLite operator {self.operator.index} ({self.operator.name}) {message}")

    def constant(self, position: int, rank: int) -> TensorInfo:
        """Input ``position``, which must be a constant of ``rank`` dimensions."""
        tensor = self.input(position)
        if not tensor.is_constant or len(tensor.shape) != rank:
            raise self.error(f"input {position} ({tensor.name}) is not a constant of rank {rank}")
        return tensor


OperatorBuilder = Callable[[BuildContext], nn.Module]


def conv_bias(context: BuildContext, weight: TensorInfo, channels: int) -> Tensor:
    """The convolution's bias (input 2; zeros when omitted), int32 dequantised with
    ``input_scale · weight_scale`` (per channel when the weights are)."""
    if len(context.operator.inputs) < 3 or context.operator.inputs[2] < 0:
        return torch.zeros(channels)
    bias = context.constant(2, 1)
    if bias.shape[0] != channels:
        raise context.error(f"bias has {bias.shape[0]} values for {channels} output channels")
    source = context.input(0)
    if bias.is_quantized and source.is_quantized and weight.is_quantized and bias.dtype.kind == "i":
        scale = float(source.quantization.scale[0]) * weight.quantization.scale
        values = bias.data.astype(np.float64) * np.broadcast_to(scale, (channels,))
    else:
        values = bias.real_values()
    return torch.from_numpy(values.astype(np.float32))


def conv_weight(context: BuildContext, layout: Tuple[int, int, int, int]) -> Tuple[TensorInfo, Tensor]:
    """Input 1 (4-D weights) dequantised and permuted by ``layout`` into PyTorch's ``O×I×H×W``."""
    weight = context.constant(1, 4)
    values = torch.from_numpy(weight.real_values().astype(np.float32)).permute(*layout).contiguous()
    return weight, values


def build_conv2d(context: BuildContext) -> nn.Module:
    """``CONV_2D``: weights ``O×H×W×I``."""
    options = context.operator.options(schema().Conv2DOptions)
    weight, values = conv_weight(context, (0, 3, 1, 2))
    in_channels = context.input(0).shape[-1] if context.input(0).shape else values.shape[1]
    if in_channels % values.shape[1]:
        raise context.error(f"weights take {values.shape[1]} channels, input has {in_channels}")
    return TfConv2d(values, conv_bias(context, weight, values.shape[0]),
                    stride=(options.StrideH(), options.StrideW()),
                    dilation=(max(1, options.DilationHFactor()), max(1, options.DilationWFactor())),
                    groups=in_channels // values.shape[1], same=options.Padding() == PADDING_SAME,
                    activation=fused_activation(options.FusedActivationFunction(), context.operator))


def build_depthwise_conv2d(context: BuildContext) -> nn.Module:
    """``DEPTHWISE_CONV_2D``: weights ``1×H×W×(C·M)``, one group per input channel."""
    options = context.operator.options(schema().DepthwiseConv2DOptions)
    weight, values = conv_weight(context, (3, 0, 1, 2))
    in_channels = context.input(0).shape[-1]
    if in_channels < 1 or values.shape[0] % in_channels:
        raise context.error(f"{values.shape[0]} depth-wise filters do not fit {in_channels} input channels")
    return TfConv2d(values, conv_bias(context, weight, values.shape[0]),
                    stride=(options.StrideH(), options.StrideW()),
                    dilation=(max(1, options.DilationHFactor()), max(1, options.DilationWFactor())),
                    groups=in_channels, same=options.Padding() == PADDING_SAME,
                    activation=fused_activation(options.FusedActivationFunction(), context.operator))


def build_add(context: BuildContext) -> nn.Module:
    """``ADD`` of two computed tensors of the same shape."""
    a, b = context.input(0), context.input(1)
    if a.is_constant or b.is_constant or a.shape != b.shape:
        raise context.error("adds a constant or tensors of different shapes (not supported)")
    options = context.operator.options(schema().AddOptions)
    return Add(fused_activation(options.FusedActivationFunction(), context.operator))


def build_average_pool(context: BuildContext) -> nn.Module:
    """``AVERAGE_POOL_2D``."""
    options = context.operator.options(schema().Pool2DOptions)
    return AveragePool((options.FilterHeight(), options.FilterWidth()), (options.StrideH(), options.StrideW()),
                       options.Padding() == PADDING_SAME,
                       fused_activation(options.FusedActivationFunction(), context.operator))


def build_reshape(context: BuildContext) -> nn.Module:
    """``RESHAPE`` to the output tensor's shape."""
    shape = context.output().shape
    if not shape:
        raise context.error("has an output of unknown shape")
    return Reshape(shape)


def build_softmax(context: BuildContext) -> nn.Module:
    """``SOFTMAX`` with its ``beta``."""
    return Softmax(float(context.operator.options(schema().SoftmaxOptions).Beta()))


OPERATOR_BUILDERS: Dict[str, OperatorBuilder] = {
    "CONV_2D": build_conv2d,
    "DEPTHWISE_CONV_2D": build_depthwise_conv2d,
    "ADD": build_add,
    "AVERAGE_POOL_2D": build_average_pool,
    "RESHAPE": build_reshape,
    "SOFTMAX": build_softmax,
}
"""TFLite builtin operator name → the builder of its module."""


# -- the network ------------------------------------------------------------------------------------
class Node(nn.Module):
    """One operator at run time: its module, the computed tensors it reads and the tensor it writes,
    and the fake quantisation of that tensor (``None``: a float tensor)."""

    def __init__(self, module: nn.Module, inputs: Sequence[int], output: int, quantize: Optional[FakeQuantize]) -> None:
        super().__init__()
        self.op = module
        self.inputs = tuple(inputs)
        self.output = output
        self.quantize = quantize


class TfliteNetwork(nn.Module):
    """A TFLite graph as a PyTorch module: input and output NCHW (4-D) floats in the graph's real units.

    ``emulate_quantization`` (the default of :meth:`run`): round every quantised tensor (the
    input too) to its own grid and clamp it to its range, as the integer runtime does, with
    straight-through gradients; otherwise run in float.
    """

    def __init__(self, graph: TfliteGraph, nodes: Sequence[Node], emulate_quantization: bool = False) -> None:
        super().__init__()
        self.nodes = nn.ModuleList(nodes)
        self.input_index = graph.inputs[0]
        self.output_index = graph.outputs[0]
        self.output_shape = graph.tensor(self.output_index).shape  # TFLite order (NHWC for 4-D)
        self.tensor_names = {t.index: t.name for t in graph.tensors}
        self.input_quantize = fake_quantize_for(graph.tensor(self.input_index))
        self.emulate_quantization = emulate_quantization
        last_reader = {i: position for position, node in enumerate(nodes) for i in node.inputs}
        self.released = [tuple(i for i in node.inputs if last_reader[i] == position)
                         for position, node in enumerate(nodes)]  # tensors no later operator reads

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, (self.output_index,))[0]

    def run(self, x: Tensor, wanted: Sequence[int], emulate_quantization: Optional[bool] = None) -> List[Tensor]:
        """The values of the tensors ``wanted`` (indexes) for input ``x``, running only the operators
        up to the last of them, with or without quantisation emulation (default: the network's);
        raises :class:`InvalidInputError` for a tensor never computed."""
        emulate = self.emulate_quantization if emulate_quantization is None else emulate_quantization

        def settle(quantize: Optional[FakeQuantize], value: Tensor) -> Tensor:
            return quantize(value) if emulate and quantize is not None else value

        values: Dict[int, Tensor] = {self.input_index: settle(self.input_quantize, x)}
        kept = {self.input_index: values[self.input_index]} if self.input_index in wanted else {}
        missing = set(wanted) - kept.keys()
        for node, released in zip(self.nodes, self.released):
            if not missing:
                break
            values[node.output] = settle(node.quantize, node.op(*(values[i] for i in node.inputs)))
            if node.output in missing:
                kept[node.output] = values[node.output]
                missing.discard(node.output)
            for i in released:  # free what no later operator reads (peak memory of a batch)
                del values[i]
        if missing:
            raise InvalidInputError(f"TFLite tensors {sorted(missing)} are not computed by the graph")
        return [kept[i] for i in wanted]

    def find_tensor(self, name: str) -> int:
        """The index of the computed tensor whose name (or its first ``;``-separated part, as the
        converter joins fused names) is ``name``; raises :class:`InvalidInputError` if none or several."""
        computed = {node.output for node in self.nodes}
        found = [i for i in computed if name in (self.tensor_names[i], self.tensor_names[i].split(";")[0])]
        if len(found) != 1:
            raise InvalidInputError(f"TFLite graph has {len(found)} computed tensors named {name!r}, expected 1")
        return found[0]

    def softmax_input(self) -> Optional[Tuple[int, float]]:
        """``(tensor index, beta)`` of the softmax that makes the graph output, ``None`` if it ends otherwise."""
        last = next((n for n in self.nodes if n.output == self.output_index), None)
        if last is None or not isinstance(last.op, Softmax):
            return None
        return last.inputs[0], last.op.beta


def build_network(graph: TfliteGraph, *, emulate_quantization: bool = False,
                  builders: Mapping[str, OperatorBuilder] = OPERATOR_BUILDERS,
                  what: str = "TFLite model") -> TfliteNetwork:
    """A :class:`TfliteNetwork` of ``graph`` with one module per operator from ``builders``.

    Raises :class:`InvalidInputError` (starting with ``what``) naming the first unsupported
    operator, or options, shapes and constants that do not fit, or a graph without exactly
    one 4-D input and one output, or whose operators are out of order.
    """
    with errors_naming(what):
        if len(graph.inputs) != 1 or len(graph.outputs) != 1 or len(graph.tensor(graph.inputs[0]).shape) != 4:
            raise InvalidInputError("the graph must have one 4-D (NHWC) input and one output")
        unsupported = sorted({op.name for op in graph.operators if op.name not in builders})
        if unsupported:
            raise InvalidInputError(f"TFLite operator {unsupported[0]} is not supported (supported: "
                                    f"{', '.join(sorted(builders))})")
        computed = {graph.inputs[0]}
        nodes = []
        for operator in graph.operators:
            nodes.append(_node(BuildContext(operator, graph), builders[operator.name], computed))
            computed.add(nodes[-1].output)
        if graph.outputs[0] not in computed:
            raise InvalidInputError("the graph output is not computed by any operator")
        return TfliteNetwork(graph, nodes, emulate_quantization)


def _node(context: BuildContext, builder: OperatorBuilder, computed: Set[int]) -> Node:
    """The :class:`Node` of one operator, whose computed inputs must be in ``computed``."""
    inputs = [i for i in context.operator.inputs if i >= 0 and not context.graph.tensor(i).is_constant]
    if not computed.issuperset(inputs):
        raise context.error("reads a tensor no earlier operator computes")
    output = context.output()
    return Node(builder(context), inputs, output.index, fake_quantize_for(output))


def load_network(data: bytes, *, emulate_quantization: bool = False, what: str = "TFLite model") -> TfliteNetwork:
    """:func:`build_network` of :func:`parse_model` ``(data)``, frozen in eval mode, its weights in the
    channels-last memory format (TFLite's own, and faster on CPU); raises :class:`InvalidInputError`
    (starting with ``what``) for a malformed file or unsupported operator."""
    network = build_network(parse_model(data, what), emulate_quantization=emulate_quantization, what=what)
    return network.to(memory_format=torch.channels_last).eval().requires_grad_(False)
