"""Images ↔ frames: the adapted codec, its weights and the bitstream container together.

:class:`FrameCodec` is what the CLI, the edge client and the cloud server use. It pads
images to multiples of 64, encodes them with the adapters of a task, and packs each
into one self-describing frame (:mod:`icmh.codec.bitstream`). Decoding parses and validates
the frame, checks that it was made with this codec, quality, base weights and adapter
set, decodes it exactly and crops back to the original size.

Universal frames (:meth:`FrameCodec.encode_universal`) are coded once by the shared
encoder; :meth:`FrameCodec.decode_consumers` decodes one for several consumers, entropy
decoding its latent once and running each consumer's decoder head on it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from icmh.codec.adapter_checkpoint import ROLE_HEAD, ROLE_SHARED_ENCODER, AdapterMetadata, load_adapters
from icmh.codec.bitstream import (DEFAULT_LIMITS, Frame, FrameHeader, Limits, bits_per_pixel, check_image_size,
                                  pack_frame, parse_frame)
from icmh.errors import AdapterMismatchError, BitstreamError, CodecMismatchError, InvalidInputError
from icmh.images import pad_to_block
from icmh.models.adapted import AdaptedCodec, AdapterConfig, hyper_analysis
from icmh.models.adapters import parameter_versions
from icmh.models.encoder_paths import EAGER, Analysis, build_analysis, check_encoder_path, synthetic_images
from icmh.models.importance import LevelCoder
from icmh.models.latent_coding import CodedLatents
from icmh.tasks import Task
from icmh.codec.weights import LoadedCodec
from icmh.seeding import seeded

N_STRINGS = 2  # y, z


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded image: the frame bytes and what the encoder knows about them."""

    data: bytes
    height: int
    width: int
    task: Optional[Task]  # None: a universal frame (for every consumer)
    y_hat: Optional[Tensor] = None  # the quantised latent the decoder will rebuild: only with keep_latents

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole frame (header and CRC included)."""
        return bits_per_pixel(len(self.data), self.height, self.width)


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded image (3×H×W float in [0, 1], on the codec's device) and its header.

    ``task``: the consumer it was decoded for (a single-task frame's own task).
    """

    image: Tensor
    header: FrameHeader
    task: Task
    size_bytes: int
    y_hat: Tensor

    @property
    def bpp(self) -> float:
        """Bits per pixel of the frame this image came from."""
        return bits_per_pixel(self.size_bytes, self.header.height, self.header.width)


ImageBatch = Union[Tensor, Sequence[Tensor]]


class FrameCodec:
    """Encode images to frames and decode frames to images for one base codec + adapters."""

    def __init__(self, loaded: LoadedCodec, device: str = "cpu", limits: Limits = DEFAULT_LIMITS,
                 encoder_path: str = EAGER, calibration: Sequence[Tensor] = ()) -> None:
        """``encoder_path``: how ``g_a`` runs when encoding (:mod:`icmh.models.encoder_paths`; the
        decoder is the same for all); ``calibration``: N×3×H×W batches for ``int8`` (default:
        :func:`~icmh.models.encoder_paths.synthetic_images`). Raises :class:`InvalidInputError`
        for an unknown path, or one other than ``eager`` off the CPU.
        """
        self.loaded = loaded
        self.device = torch.device(device)
        self.limits = limits
        self.encoder_path = check_encoder_path(encoder_path)
        if encoder_path != EAGER and self.device.type != "cpu":
            raise InvalidInputError(f"the {encoder_path} encoder path runs on the CPU; use --device cpu or --encoder eager")
        self.calibration = list(calibration)
        self.codec = AdaptedCodec(loaded.model, loaded.spec, loaded.quality).to(self.device)
        for transform in (self.codec.base.g_a, self.codec.base.g_s):
            transform.register_forward_pre_hook(_channels_last)
        self.adapter_metadata: Dict[Task, AdapterMetadata] = {}
        self.head_metadata: Dict[Task, AdapterMetadata] = {}
        self.shared_encoder_metadata: Optional[AdapterMetadata] = None
        self._analyses: Dict[Optional[Task], Tuple[Tuple, Analysis]] = {}

    # -- adapters ---------------------------------------------------------------------------
    def load_adapters(self, path: Path, task: Optional[Task] = None) -> AdapterMetadata:
        """Load an adapter checkpoint (for ``task``, or the task it names); returns its metadata."""
        meta = load_adapters(self.codec, path, self.loaded.fingerprint, task)
        if meta.role == ROLE_SHARED_ENCODER:
            self.shared_encoder_metadata = meta
        elif meta.role == ROLE_HEAD:
            self.head_metadata[Task.parse(meta.task)] = meta
        else:
            self.adapter_metadata[Task.parse(meta.task)] = meta
        return meta

    def check_heads(self) -> None:
        """Raise :class:`AdapterMismatchError` if a loaded decoder head was trained on another shared
        encoder than the one loaded (its frames would decode to nonsense)."""
        want = self.codec.universal_hash().hex()
        for consumer, meta in self.head_metadata.items():
            if meta.encoder_id != want:
                raise AdapterMismatchError(
                    f"the {consumer.value} decoder head was trained on shared encoder {meta.encoder_id}, but this "
                    f"codec encodes universal frames with {want}: load the shared-encoder file it was trained with")

    def add_random_adapters(self, task: Task, seed: int = 0, config: Optional[AdapterConfig] = None) -> None:
        """Give ``task`` seeded, randomly initialised adapters (for smoke runs, labelled random)."""
        seeded(seed + task.wire_id, lambda: self.codec.add_adapters(task, config or AdapterConfig(init="authors")))

    def add_random_head(self, consumer: Task, seed: int = 0) -> None:
        """Give ``consumer`` a seeded, randomly initialised decoder head (smoke runs, labelled random)."""
        seeded(seed + 1000 + consumer.wire_id, lambda: self.codec.add_head(consumer, AdapterConfig(init="authors")))

    @property
    def tasks(self) -> List[Task]:
        """Tasks this codec can serve: ``human`` plus every task with adapters."""
        return [Task.HUMAN] + [Task(name) for name in self.codec.adapters]

    @property
    def consumers(self) -> List[Task]:
        """Consumers of universal frames: ``human`` plus every consumer with a decoder head."""
        return self.codec.consumers

    # -- encode -----------------------------------------------------------------------------
    def encode(self, images: ImageBatch, task: Task, keep_latents: bool = False) -> List[EncodedFrame]:
        """Encode 3×H×W images (any sizes; same-size images are batched) into frames.

        ``keep_latents`` keeps each frame's quantised latent ``ŷ`` (for exactness checks); frames
        that travel do not carry it (about 6 MB per 1080p frame).
        """
        return self._encode(images, task, keep_latents)

    def encode_universal(self, images: ImageBatch, keep_latents: bool = False) -> List[EncodedFrame]:
        """Encode images into universal frames: the shared encoder (or the base encoder), decodable
        for every consumer with a head (see :meth:`decode_consumers`)."""
        return self._encode(images, None, keep_latents)

    def _encode(self, images: ImageBatch, task: Optional[Task], keep_latents: bool) -> List[EncodedFrame]:
        images = list(images)
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise InvalidInputError(f"expected a 3×H×W RGB image, got shape {tuple(image.shape)}")
            check_image_size(int(image.shape[-2]), int(image.shape[-1]), self.limits, aspect=True)
        out: List[Optional[EncodedFrame]] = [None] * len(images)
        groups: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[tuple(image.shape[-2:])].append(i)
        adapter_hash = self.codec.adapter_hash(task) if task is not None else self.codec.universal_hash()
        with self.codec.use(task) if task is not None else self.codec.use_universal(None):
            for (height, width), members in groups.items():
                batch = torch.stack([images[i] for i in members]).to(self.device, torch.float32)
                coded = self._compress(pad_to_block(batch), task)
                for k, i in enumerate(members):
                    level_string = coded.level_strings[k] if coded.level_strings is not None else None
                    header = FrameHeader(
                        codec_id=self.loaded.spec.wire_id, quality=self.loaded.quality,
                        task_id=0 if task is None else task.wire_id, height=height, width=width,
                        adapter_hash=adapter_hash, base_hash=self.loaded.fingerprint,
                        index_check=coded.index_checks[k], universal=task is None,
                        importance=level_string is not None,
                    )
                    strings = [coded.y_strings[k], coded.z_strings[k]] + ([level_string] if level_string else [])
                    data = pack_frame(header, strings, self.limits)
                    out[i] = EncodedFrame(data, height, width, task, coded.y_hat[k] if keep_latents else None)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _compress(self, x: Tensor, task: Optional[Task]) -> CodedLatents:
        """Entropy-code ``x`` (padded) with ``task``'s adapters active; ``g_a`` on this codec's encoder path."""
        y = self.analysis(task)(x)
        z = hyper_analysis(self.codec.base, self.loaded.spec.latent_coder, y)
        selector = self.codec.active_selector
        return self.codec.latent_coder.compress(y, z, self.codec.importance_levels(y),
                                                None if selector is None else selector.level_cdf)

    def analysis(self, task: Optional[Task]) -> Analysis:
        """``g_a`` with ``task``'s encoder adapters (``None``: the shared encoder's), on this codec's
        encoder path: ``analysis(x) -> y``.

        ORT paths are built (exported, quantised) at the first call for a task and again
        whenever its adapter weights change. For ``eager`` it is ``g_a`` itself, whose hooks
        apply the adapters of the task selected with ``codec.use(task)``. Raises
        :class:`AdapterMismatchError` when ``task`` has no adapters here.
        """
        g_a = self.codec.base.g_a
        if self.encoder_path == EAGER:
            return g_a  # the codec's hooks apply the active task's adapters
        if task is None:
            adapter_set = self.codec.shared_encoder
        else:
            adapter_set = self.codec.adapter_set(task) if task.uses_adapters else None
        key = parameter_versions(adapter_set) if adapter_set is not None else ()
        cached = self._analyses.get(task)
        if cached is None or cached[0] != key:
            adapters = None if adapter_set is None else [adapter_set.adapter_at("encoder", i) for i in range(len(g_a))]
            with self.codec.use(Task.HUMAN):  # the program applies the adapters itself, not the hooks
                analysis = build_analysis(self.encoder_path, g_a, adapters, self.calibration or synthetic_images())
            self._analyses[task] = (key, analysis)
        return self._analyses[task][1]

    # -- decode -----------------------------------------------------------------------------
    def parse(self, data: bytes) -> Tuple[Frame, Optional[Task]]:
        """Parse ``data`` and check it fits this codec; returns the frame and its task (``None``
        for a universal frame).

        Raises :class:`BitstreamError` (malformed), :class:`CodecMismatchError` (other
        codec, quality or base weights) or :class:`AdapterMismatchError` (task without
        adapters here, or other adapter weights).
        """
        frame = parse_frame(data, self.limits)
        header = frame.header
        check_image_size(header.height, header.width, self.limits, aspect=True)
        spec = self.loaded.spec
        want_strings = N_STRINGS + (1 if header.importance else 0)  # + the importance level map
        if len(frame.strings) != want_strings:
            raise BitstreamError(f"frame has {len(frame.strings)} strings, {spec.name} frames "
                                 f"{'with' if header.importance else 'without'} an importance map have {want_strings}")
        if header.codec_id != spec.wire_id or header.quality != self.loaded.quality:
            raise CodecMismatchError(
                f"frame was encoded with codec id {header.codec_id} quality {header.quality}; this decoder "
                f"holds {spec.name} (id {spec.wire_id}) quality {self.loaded.quality}"
            )
        if header.base_hash != self.loaded.fingerprint:
            raise CodecMismatchError(
                f"frame was encoded with other {spec.name} weights (fingerprint {header.base_hash.hex()}, "
                f"this decoder has {self.loaded.fingerprint.hex()}: {self.loaded.source})"
            )
        if header.universal:
            if header.adapter_hash != self.codec.universal_hash():
                raise AdapterMismatchError(
                    f"universal frame of shared encoder {header.adapter_hash.hex()}, this decoder's heads "
                    f"decode {self.codec.universal_hash().hex()}")
            return frame, None
        try:
            task = Task.from_wire_id(header.task_id)
        except InvalidInputError as exc:
            raise BitstreamError(str(exc)) from None
        expected = self.codec.adapter_hash(task)
        if header.adapter_hash != expected:
            raise AdapterMismatchError(
                f"frame was encoded with {task.value} adapters {header.adapter_hash.hex()}, "
                f"this decoder has {expected.hex()}"
            )
        return frame, task

    def decode(self, frames: Sequence[bytes]) -> List[DecodedFrame]:
        """Decode frames (same task and size are batched; universal frames for ``human``); results
        keep the input order."""
        return self.decode_parsed([self.parse(data) for data in frames])

    def decode_parsed(self, parsed: Sequence[Tuple[Frame, Optional[Task]]]) -> List[DecodedFrame]:
        """Decode frames already checked by :meth:`parse`; results keep the input order."""
        out: List[Optional[DecodedFrame]] = [None] * len(parsed)
        groups: Dict[Tuple[Optional[Task], int, int], List[int]] = defaultdict(list)
        for i, (frame, task) in enumerate(parsed):
            groups[(task, frame.header.height, frame.header.width)].append(i)
        for (task, height, width), members in groups.items():
            headers = [parsed[i][0].header for i in members]
            strings = [[parsed[i][0].strings[0] for i in members], [parsed[i][0].strings[1] for i in members],
                       [_level_string(parsed[i][0]) for i in members]]
            with self.codec.use(task) if task is not None else self.codec.use_universal(Task.HUMAN):
                result = self.codec.decompress(
                    strings, (headers[0].latent_height, headers[0].latent_width), [h.index_check for h in headers]
                )
            for k, i in enumerate(members):
                image = result["x_hat"][k, :, :height, :width]
                out[i] = DecodedFrame(image, headers[k], task or Task.HUMAN, parsed[i][0].size_bytes,
                                      result["y_hat"][k])
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def decode_consumers(self, frame: Frame, task: Optional[Task], consumers: Sequence[Task],
                         seconds: Optional[Dict[Optional[Task], float]] = None) -> Dict[Task, DecodedFrame]:
        """Decode one frame checked by :meth:`parse` for each of ``consumers``.

        The latent is entropy-decoded once; each consumer's synthesis (its decoder head, or the
        base decoder for ``human`` without one) runs on it. A single-task frame (``task`` set)
        decodes only for its own task. ``seconds``, if given, gets the wall time of the
        entropy decoding and shared synthesis stages (key ``None``) and of each consumer's
        synthesis. Raises :class:`AdapterMismatchError` for a consumer without a head, or
        another consumer of a single-task frame.
        """
        if task is not None:
            if list(consumers) != [task]:
                wanted = ", ".join(c.value for c in consumers)
                raise AdapterMismatchError(f"a {task.value} frame decodes for {task.value} only, not {wanted} "
                                           f"(encode universal frames for several consumers)")
            return {task: self.decode_parsed([(frame, task)])[0]}
        for consumer in consumers:
            if consumer is not Task.HUMAN and consumer.value not in self.codec.heads:
                raise AdapterMismatchError(f"no decoder head for consumer {consumer.value!r} here "
                                           f"(heads: {', '.join(c.value for c in self.consumers)})")
        header = frame.header
        began = time.perf_counter()
        y_hat = self.codec.decode_latents([[frame.strings[0]], [frame.strings[1]], [_level_string(frame)]],
                                          (header.latent_height, header.latent_width), [header.index_check])
        entropy_seconds = time.perf_counter() - began
        times: Dict[Optional[Task], float] = {}
        x_hats = self.codec.synthesize(_channels_last_4d(y_hat.to(self.device)), consumers, times)
        times[None] += entropy_seconds
        if seconds is not None:
            seconds.update(times)
        return {consumer: DecodedFrame(x_hat[0, :, :header.height, :header.width].clamp(0, 1), header, consumer,
                                       frame.size_bytes, y_hat[0])
                for consumer, x_hat in x_hats.items()}


def _level_string(frame: Frame) -> Optional[bytes]:
    """The importance level-map string of a parsed frame, or ``None`` (no map: all levels 0)."""
    return frame.strings[N_STRINGS] if frame.header.importance else None


def importance_levels(frame: Frame, level_cdf: Tensor) -> Tensor:
    """The importance level map (int64, latent_height×latent_width, levels −3..3) a parsed frame carries;
    all zero for a frame without one. Raises :class:`BitstreamError` for a malformed map string."""
    shape = (frame.header.latent_height, frame.header.latent_width)
    string = _level_string(frame)
    return torch.zeros(shape, dtype=torch.int64) if string is None else LevelCoder(level_cdf).decode(string, shape)


def _channels_last(_module: torch.nn.Module, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Forward pre-hook: the transforms run fastest in channels-last memory (oneDNN)."""
    return tuple(_channels_last_4d(t) for t in inputs)


def _channels_last_4d(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
