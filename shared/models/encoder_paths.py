"""Ways to run the analysis transform ``g_a`` with its adapters on the edge: eager, compiled, int8.

Only ``y = g_a(x)`` changes with the path; hyper-analysis, entropy coding and the frame
are the same for all, so every frame decodes exactly with the standard decoder (the
entropy-coding indexes come from the float64 hyper-synthesis of ``ẑ``, which the frame
carries). Paths (registry :data:`ENCODER_PATHS`):

* ``eager``    — PyTorch modules, adapters applied by the codec's hooks (the reference);
* ``compiled`` — ONNX Runtime, float32: ``g_a`` and the adapters exported to ONNX and
  optimised by ORT (fused, blocked-layout convolutions, its own memory arena). ONNX has
  no complex numbers, so the middle of each frequency branch (FFT, gate, inverse FFT)
  stays in PyTorch: the transform runs as ORT segments with PyTorch steps between them
  (:func:`analysis_program`, :func:`partition`);
* ``int8``     — the same segments statically quantised by ORT (QDQ: 8-bit activations
  and per-channel 8-bit weights of the convolutions inside each segment, VNNI kernels),
  calibrated on images given by the caller (:func:`calibration_crops` of training photos,
  or the data-free :func:`synthetic_images`); the convolutions whose result leaves a
  segment and the PyTorch steps stay in float32.

:func:`build_analysis` returns ``analysis(x) -> y`` for one base codec and adapter set.
Requires ``onnxruntime`` (and ``onnx``) for the ORT paths: ``pip install "icmh[edge]"``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy
import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import Tensor, nn

from icmh.errors import InvalidInputError
from icmh.extras import optional_import
from icmh.images import BLOCK, load_image
from icmh.models.adapters import Adapter

EAGER, COMPILED, INT8 = "eager", "compiled", "int8"
ENCODER_PATHS = (EAGER, COMPILED, INT8)
ONNX_OPSET = 17
TRACE_SIZE = 128  # side of the example image the segments are traced with (any multiple of 64)
CALIBRATION_PERCENTILE = 99.99  # activation ranges: this percentile of |value| (the rare extremes clip)
PASS_THROUGH = ("Split", "Relu", "Add")  # ops through which a convolution's result still "leaves" a segment
DEAD_LEAVES, MIN_RADIUS, NOISE = 300, 4.0, 0.03  # the synthetic calibration images (synthetic_images)

Analysis = Callable[[Tensor], Tensor]


def check_encoder_path(path: str) -> str:
    """Return ``path`` if it is one of :data:`ENCODER_PATHS`; raises :class:`InvalidInputError` otherwise."""
    if path not in ENCODER_PATHS:
        raise InvalidInputError(f"unknown encoder path {path!r} (valid: {', '.join(ENCODER_PATHS)})")
    return path


# -- the analysis transform as a program of named values ------------------------------------
@dataclass(frozen=True)
class Step:
    """One operation: ``outputs = fn(*inputs)`` over named values.

    ``onnx``: ONNX can express it (False for FFTs, which run in PyTorch); ``owner``: the
    module whose parameters it uses.
    """

    fn: Callable[..., Union[Tensor, Tuple[Tensor, ...]]]
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    owner: nn.Module
    onnx: bool = True


@dataclass
class Program:
    """The steps of ``g_a`` with adapters, in order; ``x`` is the input, ``output`` the name of ``y``."""

    steps: List[Step] = field(default_factory=list)
    output: str = "x"
    _count: int = 0

    def fresh(self, kind: str) -> str:
        """A new value name."""
        self._count += 1
        return f"{kind}{self._count}"

    def add(self, fn: Callable, inputs: Sequence[str], n_out: int, owner: nn.Module, kind: str,
            onnx: bool = True) -> Tuple[str, ...]:
        """Append a step with ``n_out`` fresh outputs; returns their names."""
        outputs = tuple(self.fresh(kind) for _ in range(n_out))
        self.steps.append(Step(fn, tuple(inputs), outputs, owner, onnx))
        return outputs


def analysis_program(g_a: nn.Sequential, adapters: Optional[Sequence[Optional[Adapter]]],
                     stage_form: Callable[[nn.Module], nn.Module] = lambda stage: stage) -> Program:
    """``g_a`` as a :class:`Program`: each stage as ``stage_form(stage)``, then ``adapters[i]`` (if any) after stage ``i``."""
    program = Program()
    for index, stage in enumerate(map(stage_form, g_a)):
        (program.output,) = program.add(stage, (program.output,), 1, stage, "stage")
        adapter = adapters[index] if adapters is not None and index < len(adapters) else None
        if adapter is not None:
            program.output = _adapter_steps(program, adapter, program.output)
    return program


def _adapter_steps(program: Program, adapter: Adapter, x: str) -> str:
    branches = list(adapter.branches.values())
    widths = [len(branch.downs) for branch in branches]
    flat = program.add(lambda v: tuple(p for group in adapter.project(v) for p in group), (x,), sum(widths),
                       adapter, "proj")
    middles, start = [], 0
    for branch, width in zip(branches, widths):
        group, start = flat[start:start + width], start + width
        middles += program.add(branch.middle, group, 1, branch, "middle", onnx=not branch.spectral)
    (out,) = program.add(lambda v, *ms: adapter.finish(v, torch.cat(ms, dim=1)), (x, *middles), 1, adapter, "adapted")
    return out


def run_steps(steps: Sequence[Step], env: Dict[str, Tensor]) -> None:
    """Run ``steps`` in PyTorch on the named values in ``env`` (updated in place)."""
    for step in steps:
        result = step.fn(*(env[name] for name in step.inputs))
        env.update(zip(step.outputs, result if isinstance(result, tuple) else (result,)))


# -- ONNX Runtime segments -------------------------------------------------------------------
class ExportGDN(nn.Module):
    """A (inverse) GDN with its re-parametrised ``β``, ``γ`` computed once: ``x / sqrt(β + γ·x²)``.

    The same function as CompressAI's :class:`~compressai.layers.GDN` in a form ONNX
    Runtime fuses and quantises well (constant weights, ``x·x``, one division).
    """

    def __init__(self, gdn: GDN) -> None:
        super().__init__()
        channels = gdn.beta.numel()
        self.inverse = gdn.inverse
        with torch.no_grad():
            self.register_buffer("gamma", gdn.gamma_reparam(gdn.gamma).reshape(channels, channels, 1, 1).clone())
            self.register_buffer("beta", gdn.beta_reparam(gdn.beta).clone())

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.sqrt(F.conv2d(x * x, self.gamma, self.beta))
        return x * norm if self.inverse else x / norm


def exportable(module: nn.Module) -> nn.Module:
    """``module``, or a copy of it with every GDN replaced by :class:`ExportGDN`."""
    if isinstance(module, GDN):
        return ExportGDN(module)
    if not any(isinstance(m, GDN) for m in module.modules()):
        return module
    copy = deepcopy(module)
    for name, child in module.named_children():
        setattr(copy, name, exportable(child))
    return copy


class Segment(nn.Module):
    """Consecutive ONNX-expressible steps as one exportable module: ``forward(*inputs) -> outputs``."""

    def __init__(self, steps: Sequence[Step], inputs: Sequence[str], outputs: Sequence[str]) -> None:
        super().__init__()
        self.steps = list(steps)
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.owners = nn.ModuleList(dict.fromkeys(step.owner for step in steps))  # parameters become initialisers

    def forward(self, *values: Tensor) -> Tuple[Tensor, ...]:
        env = dict(zip(self.inputs, values))
        run_steps(self.steps, env)
        return tuple(env[name] for name in self.outputs)


def partition(program: Program) -> List[Union[Segment, Step]]:
    """Split ``program`` into :class:`Segment` s (runs of ONNX steps) and the PyTorch steps between them."""
    parts: List[Union[Segment, Step]] = []
    steps, start = program.steps, 0
    while start < len(steps):
        end = start + 1
        if steps[start].onnx:
            while end < len(steps) and steps[end].onnx:
                end += 1
            parts.append(_segment(steps[start:end], steps[end:], program.output))
        else:
            parts.append(steps[start])
        start = end
    return parts


def _segment(run: Sequence[Step], later: Sequence[Step], result: str) -> Segment:
    """``run`` as a segment: its inputs come from before it, its outputs are what ``later`` steps or the result need."""
    produced = {name for step in run for name in step.outputs}
    inputs = dict.fromkeys(name for step in run for name in step.inputs if name not in produced)
    needed = {name for step in later for name in step.inputs} | {result}
    return Segment(run, list(inputs), [name for step in run for name in step.outputs if name in needed])


def export_segment(segment: Segment, env: Dict[str, Tensor]) -> bytes:
    """The ONNX model of ``segment`` traced on the example values in ``env`` (batch, height, width dynamic)."""
    dynamic = {name: {0: f"{name}_n", 2: f"{name}_h", 3: f"{name}_w"} for name in (*segment.inputs, *segment.outputs)}
    buffer = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(segment, tuple(env[name] for name in segment.inputs), buffer, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=list(segment.inputs),
                          output_names=list(segment.outputs), dynamic_axes=dynamic)
    return buffer.getvalue()


def ort_session(model: bytes, threads: int):
    """An ONNX Runtime CPU session for ``model`` with ``threads`` intra-op threads, no spinning between runs."""
    ort = optional_import("onnxruntime", "edge", "the compiled and int8 encoder paths")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # PyTorch runs the FFTs between
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OrtSegment:
    """A :class:`Segment` running in ONNX Runtime.

    Outputs go to buffers kept for the last input shape (bound with ORT's I/O binding),
    so that frames of one size reuse the same memory instead of mapping fresh pages; a
    value a caller keeps must be copied. While ``recording`` is a list, the inputs of
    every run are appended to it (copies, for calibration).
    """

    def __init__(self, segment: Segment, model: bytes, threads: int) -> None:
        self.inputs, self.outputs = segment.inputs, segment.outputs
        self.model = model
        self.threads = threads
        self.session = ort_session(model, threads)
        self.recording: Optional[List[Dict[str, object]]] = None
        self._shapes: Tuple = ()
        self._buffers: List[Tensor] = []
        self._binding = None

    def replace_model(self, model: bytes) -> None:
        """Run ``model`` (same inputs and outputs) from now on."""
        self.model = model
        self.session = ort_session(model, self.threads)
        self._shapes, self._buffers, self._binding = (), [], None

    def run(self, env: Dict[str, Tensor]) -> None:
        """Compute this segment's outputs from ``env`` into ``env``."""
        inputs = [env[name].detach().cpu().float().contiguous() for name in self.inputs]
        if self.recording is not None:
            self.recording.append({name: t.numpy().copy() for name, t in zip(self.inputs, inputs)})
        shapes = tuple(tuple(t.shape) for t in inputs)
        if shapes != self._shapes:
            results = self.session.run(list(self.outputs), {n: t.numpy() for n, t in zip(self.inputs, inputs)})
            self._bind_outputs(shapes, [torch.from_numpy(value) for value in results])
        else:
            for name, tensor in zip(self.inputs, inputs):
                self._binding.bind_input(name, "cpu", 0, numpy.float32, list(tensor.shape), tensor.data_ptr())
            self.session.run_with_iobinding(self._binding)
        env.update(zip(self.outputs, self._buffers))

    def _bind_outputs(self, shapes: Tuple, buffers: List[Tensor]) -> None:
        self._shapes, self._buffers = shapes, buffers
        self._binding = self.session.io_binding()
        for name, tensor in zip(self.outputs, buffers):
            self._binding.bind_output(name, "cpu", 0, numpy.float32, list(tensor.shape), tensor.data_ptr())


class OrtAnalysis:
    """``g_a`` with adapters as ONNX Runtime segments and PyTorch FFT steps: ``self(x) -> y``."""

    def __init__(self, program: Program, threads: int) -> None:
        self.output = program.output
        env = {"x": torch.rand(1, 3, TRACE_SIZE, TRACE_SIZE)}
        self.parts: List[Union[OrtSegment, Step]] = []
        with torch.no_grad():
            for part in partition(program):
                if isinstance(part, Segment):
                    model = export_segment(part, env)
                    env.update(zip(part.outputs, part(*(env[name] for name in part.inputs))))
                    part = OrtSegment(part, model, threads)
                else:
                    run_steps([part], env)
                self.parts.append(part)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        env = {"x": x}
        for part in self.parts:
            if isinstance(part, OrtSegment):
                part.run(env)
            else:
                run_steps([part], env)
        return env[self.output].clone()  # the last segment's buffer is reused by the next call

    @property
    def segments(self) -> List[OrtSegment]:
        """The ORT segments, in order."""
        return [part for part in self.parts if isinstance(part, OrtSegment)]

    def quantize(self, calibration: Sequence[Tensor], threads: int) -> None:
        """Quantise every segment to int8, calibrated on ``calibration`` (N×3×H×W batches in [0, 1]).

        Raises :class:`InvalidInputError` when ``calibration`` is empty.
        """
        if not calibration:
            raise InvalidInputError("the int8 encoder path needs calibration images")
        segments = self.segments
        for segment in segments:
            segment.recording = []
        for batch in calibration:
            self(batch)
        for segment in segments:
            segment.replace_model(quantize_model(segment.model, segment.recording or []))
            segment.recording = None


def output_convolutions(model: bytes) -> List[str]:
    """Names of the convolutions of ``model`` whose result leaves it, directly or through splits, ReLUs and
    residual sums: the latent ``y``, and the projections into a frequency branch's FFT."""
    onnx = optional_import("onnx", "edge", "the int8 encoder path")
    graph = onnx.load_from_string(model).graph
    producers = {output: node for node in graph.node for output in node.output}
    found: List[str] = []
    pending, seen = [value.name for value in graph.output], set()
    while pending:
        name = pending.pop()
        node = producers.get(name)
        if name in seen or node is None:
            continue
        seen.add(name)
        if node.op_type == "Conv":
            found.append(node.name)
        elif node.op_type in PASS_THROUGH:
            pending.extend(node.input)
    return found


def quantize_model(model: bytes, feeds: Sequence[Dict[str, object]]) -> bytes:
    """``model`` statically quantised (QDQ; activations uint8, weights int8 per channel; convolutions), calibrated on ``feeds``.

    Activation ranges cover :data:`CALIBRATION_PERCENTILE` of the calibration values rather
    than their extremes (Kodak q4, 8 images: +0.3 % bpp / −0.05 dB against eager, where the
    min–max ranges gave +1.1 % / −0.06 dB).

    The convolutions whose result leaves the segment (:func:`output_convolutions`) stay in
    float32: an 8-bit step on the latent ``y`` itself, which is then rounded to integers, or
    on the input of an FFT, costs more rate–distortion than the rest of the transform
    together (Kodak q2, 8 images: −2.5 % bpp and −0.30 dB with it, +0.8 % bpp and −0.01 dB
    without), for a few per cent of the MACs (the last stage runs at 1/16 of the resolution).
    """
    quantization = optional_import("onnxruntime.quantization", "edge", "the int8 encoder path")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as folder, quiet():
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(model)
        quantization.quantize_static(
            str(source), str(target), Reader(), quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=["Conv"], per_channel=True, activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE}, nodes_to_exclude=output_convolutions(model),
        )
        return target.read_bytes()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python warnings, the root logger's warnings and prints to stdout (ORT's quantiser and
    the ONNX exporter advise at length; the percentile calibrator prints its histograms)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def synthetic_images(count: int = 8, size: int = 256, seed: int = 0) -> List[Tensor]:
    """``count`` seeded 1×3×size×size "dead leaves" images in [0, 1]: the int8 path's default calibration.

    Random occluding discs with radii following ``p(r) ∝ r⁻³`` (the scale-invariant model of
    natural-image statistics), random colours, a little noise. Data-free, the same on every
    machine; on Kodak it calibrates as well as training photos (docs/edge.md).
    """
    generator = torch.Generator().manual_seed(seed)
    grid = torch.arange(size, dtype=torch.float32)
    images = []
    for _ in range(count):
        image = torch.rand(3, 1, 1, generator=generator).expand(3, size, size).clone()
        for _ in range(DEAD_LEAVES):
            radius = min(MIN_RADIUS * (1 - torch.rand(1, generator=generator).item()) ** -0.5, size / 2)
            centre_row, centre_col = (size * torch.rand(2, generator=generator)).tolist()
            top, bottom = max(0, int(centre_row - radius)), min(size, int(centre_row + radius) + 1)
            left, right = max(0, int(centre_col - radius)), min(size, int(centre_col + radius) + 1)
            disc = ((grid[top:bottom, None] - centre_row) ** 2 + (grid[None, left:right] - centre_col) ** 2
                    <= radius ** 2)
            image[:, top:bottom, left:right][:, disc] = torch.rand(3, 1, generator=generator)
        image += NOISE * torch.randn(3, size, size, generator=generator)
        images.append(image.clamp_(0, 1)[None])
    return images


def calibration_crops(files: Sequence[Path], count: int = 8, size: int = 256) -> List[Tensor]:
    """Centre crops (1×3×size×size, or the largest multiple of :data:`~icmh.images.BLOCK` (64) that fits)
    of the first ``count`` of ``files``.

    Raises :class:`InvalidInputError` for an unreadable image or one smaller than 64×64.
    """
    crops = []
    for path in list(files)[:count]:
        image = load_image(path)
        height, width = (min(size, side) // BLOCK * BLOCK for side in image.shape[-2:])
        if not height or not width:
            raise InvalidInputError(f"calibration image {path} is smaller than {BLOCK}×{BLOCK}")
        top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
        crops.append(image[None, :, top:top + height, left:left + width].contiguous())
    return crops


# -- entry point ---------------------------------------------------------------------------
def build_analysis(path: str, g_a: nn.Sequential, adapters: Optional[Sequence[Optional[Adapter]]],
                   calibration: Sequence[Tensor] = (), threads: Optional[int] = None) -> OrtAnalysis:
    """``analysis(x) -> y`` for ``g_a`` with ``adapters[i]`` after stage ``i``, on the ORT encoder ``path``.

    (The ``eager`` path is ``g_a`` itself, its adapters applied by the codec's hooks.) Build
    it with no task selected on the codec: the hooks would apply adapters while tracing.
    ``calibration``: N×3×H×W batches in [0, 1] for ``int8``; ORT sessions use ``threads``
    (default: PyTorch's count). Raises :class:`InvalidInputError` for a path other than
    ``compiled`` or ``int8``, a missing ``onnxruntime``, or ``int8`` without calibration images.
    """
    if check_encoder_path(path) == EAGER:
        raise InvalidInputError("the eager encoder path is g_a itself; build_analysis makes the ORT paths")
    threads = threads or torch.get_num_threads()
    analysis = OrtAnalysis(analysis_program(g_a, adapters, exportable), threads)
    if path == INT8:
        analysis.quantize(calibration, threads)
    return analysis
