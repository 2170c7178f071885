"""Frames through the cloud: parse, decode with the task adapters, run the task model.

Every frame is its own unit of failure. :meth:`Pipeline.admit` parses and checks a frame
(cheap: the header, the CRC and the server's limits) before it may wait for a worker, so a
malformed or oversized frame never costs decoding. :meth:`Pipeline.run_batch` decodes and
infers frames of one task and size together; whatever goes wrong ends that frame alone
with a per-frame error — a user-caused error with its status code, anything else as
INTERNAL with a generic message (the traceback is logged once on the server, never sent).
When a batch fails as a whole its frames are retried one by one, so a poison frame cannot
take the others with it. A frame whose caller has gone, or whose deadline has passed, is
skipped before each costly stage. Decoded images and results must be finite: NaN or
infinity ends the frame with an error, never an OK result.

A universal frame is decoded for the consumers its request names (default: every consumer
served): its latent is entropy-decoded once, each consumer's decoder head and task model
run on it, and the response carries one :class:`ConsumerResult` per consumer.

Synchronous on purpose: the service runs it in worker threads (:mod:`.batching`), and the
event loop stays free for the network.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import grpc
import torch

from icmh.codec.bitstream import Frame, bits_per_pixel
from icmh.codec.frame_codec import DecodedFrame, FrameCodec
from icmh.errors import AdapterMismatchError, BitstreamError, IcmhError, InvalidInputError
from icmh.results import TaskResult
from icmh.service.metrics import UNIVERSAL
from icmh.service.result_proto import result_to_proto
from icmh.taskmodels import TaskModel
from icmh.tasks import Task
from icmh.v1 import icmh_pb2 as pb

from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.status import status_for

log = logging.getLogger("cloud_server")


class GoneError(Exception):
    """The caller of a frame went away (or its deadline passed) before the frame was processed."""


@dataclass
class Job:
    """One frame waiting in the server: its bytes, who is waiting, and what parsing found."""

    frame_id: int
    data: bytes
    deadline: Optional[float] = None  # time.monotonic() after which nobody waits for the answer
    cancelled: Callable[[], bool] = lambda: False
    queued_at: float = field(default_factory=time.perf_counter)
    consumers_asked: Sequence[str] = ()  # InferRequest.consumers
    frame: Optional[Frame] = None
    task: Optional[Task] = None  # a single-task frame's task (None: universal, or not parsed yet)
    consumers: Tuple[Task, ...] = ()  # universal frames: what to decode it for

    @property
    def universal(self) -> bool:
        """Whether this is a universal frame (decoded per consumer)."""
        return self.frame is not None and self.frame.header.universal

    @property
    def key(self) -> Tuple[object, ...]:
        """Frames with the same key (task or consumers, height, width) can share a batch."""
        assert self.frame is not None
        return self.task, self.consumers, self.frame.header.height, self.frame.header.width

    @property
    def label(self) -> object:
        """The task label of this frame in the metrics (``universal`` for universal frames)."""
        return UNIVERSAL if self.universal else self.task or "unknown"

    def gone(self) -> bool:
        """Whether nobody waits for this frame any more."""
        return self.cancelled() or (self.deadline is not None and time.monotonic() >= self.deadline)


def error_response(frame_id: int, code: grpc.StatusCode, message: str) -> pb.InferResponse:
    """A response carrying a per-frame error."""
    response = pb.InferResponse(frame_id=frame_id)
    response.error.code, response.error.message = code.value[0], message
    return response


class Pipeline:
    """Decode + infer for every task this server has adapters and a task model for."""

    def __init__(self, frame_codec: FrameCodec, models: Dict[Task, TaskModel], metrics: CloudMetrics) -> None:
        self.frame_codec = frame_codec
        self.models = models
        self.metrics = metrics
        self.codec_name = frame_codec.loaded.spec.name
        self.quality = frame_codec.loaded.quality

    @property
    def tasks(self) -> List[Task]:
        """Tasks served: those with decoder adapters (or none, for human) and a task model."""
        return [task for task in self.frame_codec.tasks if task in self.models]

    @property
    def consumers(self) -> List[Task]:
        """Consumers of universal frames served: those with a decoder head (or human) and a task model."""
        return [task for task in self.frame_codec.consumers if task in self.models]

    # -- before the queue ---------------------------------------------------------------------
    def admit(self, job: Job) -> Optional[pb.InferResponse]:
        """Parse and check ``job``'s frame (filling ``job.frame`` and ``job.task``); returns ``None``
        if it may be queued, else the error response (counted in the metrics)."""
        try:
            job.frame, job.task = self.frame_codec.parse(job.data)
            asked = tuple(Task.parse(name) for name in job.consumers_asked)
            if job.task is None:
                job.consumers = self._universal_consumers(asked)
            else:
                if asked and asked != (job.task,):
                    raise AdapterMismatchError(
                        f"a {job.task.value} frame decodes for {job.task.value} only, not "
                        f"{', '.join(c.value for c in asked)} (encode universal frames for several consumers)")
                if job.task not in self.models:
                    raise AdapterMismatchError(f"this server runs no model for task {job.task.value!r}")
        except Exception as exc:  # noqa: BLE001 — a frame never ends more than itself
            return self._failure(job, exc, "parsing")
        return None

    def _universal_consumers(self, asked: Tuple[Task, ...]) -> Tuple[Task, ...]:
        served = self.consumers
        if len(set(asked)) != len(asked):
            raise InvalidInputError("a consumer is named twice")
        missing = [c.value for c in asked if c not in served]
        if missing:
            raise AdapterMismatchError(f"this server has no decoder head and model for consumer "
                                       f"{', '.join(missing)} (it serves {', '.join(c.value for c in served)})")
        return asked or tuple(served)

    # -- in a worker ----------------------------------------------------------------------------
    def run_batch(self, jobs: Sequence[Job]) -> List[pb.InferResponse]:
        """Decode and infer admitted frames of one key (:attr:`Job.key`); one response per job, in order."""
        live = [job for job in jobs if not job.gone()]
        responses = {id(job): self._skipped(job) for job in jobs if job.gone()}
        if len(live) > 1:
            try:
                responses.update(zip(map(id, live), self._process(live)))
                live = []
            except Exception:  # noqa: BLE001 — isolate: retry each frame alone below
                log.info("a batch of %d frames failed; processing them one by one", len(live))
        for job in live:
            try:
                responses[id(job)] = self._process([job])[0]
            except GoneError:
                responses[id(job)] = self._skipped(job)
            except Exception as exc:  # noqa: BLE001 — a frame never ends more than itself
                responses[id(job)] = self._failure(job, exc, "processing")
        return [responses[id(job)] for job in jobs]

    def run(self, frame_id: int, data: bytes, consumers: Sequence[str] = ()) -> pb.InferResponse:
        """One frame from bytes to response (admit, then a batch of one)."""
        job = Job(frame_id, data, consumers_asked=consumers)
        return self.admit(job) or self.run_batch([job])[0]

    def _process(self, jobs: Sequence[Job]) -> List[pb.InferResponse]:
        return self._process_universal(jobs) if jobs[0].universal else self._process_single(jobs)

    def _process_universal(self, jobs: Sequence[Job]) -> List[pb.InferResponse]:
        """Universal frames: each latent decoded once, then every consumer's head and model."""
        started = time.perf_counter()
        consumers = jobs[0].consumers
        latents_seconds, decoded = [], []
        for job in jobs:
            timing: Dict[Optional[Task], float] = {}
            outputs = self.frame_codec.decode_consumers(job.frame, None, consumers, timing)
            for item in outputs.values():
                if not torch.isfinite(item.image).all():
                    raise BitstreamError("the frame decodes to non-finite values")
            latents_seconds.append(timing[None])
            decoded.append((outputs, timing))
        if any(job.gone() for job in jobs):
            raise GoneError
        responses = [pb.InferResponse(frame_id=job.frame_id) for job in jobs]
        for consumer in consumers:
            began = time.perf_counter()
            model = self.models[consumer]
            results = model.infer([outputs[consumer].image for outputs, _ in decoded], consumer)
            infer_seconds = (time.perf_counter() - began) / len(jobs)
            for response, result, (_, timing) in zip(responses, results, decoded):
                check_finite(result)
                entry = response.results.add(synthesis_seconds=timing[consumer], infer_seconds=infer_seconds)
                result_to_proto(dataclasses.replace(result, model=model.name), entry)
                self.metrics.observe_stage(consumer, "synthesis", timing[consumer])
                self.metrics.observe_stage(consumer, "infer", infer_seconds)
                self.metrics.count_request(consumer, grpc.StatusCode.OK)
        done = time.perf_counter()
        self.metrics.observe_batch(len(jobs))
        for job, response, seconds in zip(jobs, responses, latents_seconds):
            header = job.frame.header
            response.width, response.height = header.width, header.height
            response.bits_per_pixel = bits_per_pixel(job.frame.size_bytes, header.height, header.width)
            response.times.decode_seconds = seconds
            response.times.total_seconds = done - started
            self.metrics.observe_frame(UNIVERSAL, self.codec_name, self.quality, response.bits_per_pixel,
                                       job.frame.size_bytes)
            self.metrics.observe_stage(UNIVERSAL, "decode", seconds)
            self.metrics.observe_stage(UNIVERSAL, "total", done - started)
        return responses

    def _process_single(self, jobs: Sequence[Job]) -> List[pb.InferResponse]:
        started = time.perf_counter()
        task = jobs[0].task
        # one frame at a time: a batch of synthesis transforms need not give the bits of single ones
        decoded = [self.frame_codec.decode_parsed([(job.frame, job.task)])[0] for job in jobs]
        for item in decoded:
            if not torch.isfinite(item.image).all():
                raise BitstreamError("the frame decodes to non-finite values")
        decoded_at = time.perf_counter()
        if any(job.gone() for job in jobs):
            raise GoneError
        model = self.models[task]
        results = [dataclasses.replace(result, model=model.name)
                   for result in model.infer([item.image for item in decoded], task)]
        for result in results:
            check_finite(result)
        done = time.perf_counter()
        self.metrics.observe_batch(len(jobs))
        return [self._response(job, item, result, started, decoded_at, done)
                for job, item, result in zip(jobs, decoded, results)]

    def _response(self, job: Job, decoded: DecodedFrame, result: TaskResult, started: float, decoded_at: float,
                  done: float) -> pb.InferResponse:
        response = pb.InferResponse(frame_id=job.frame_id)
        result_to_proto(result, response)
        response.bits_per_pixel = decoded.bpp
        response.times.decode_seconds = decoded_at - started
        response.times.infer_seconds = done - decoded_at
        response.times.total_seconds = done - started
        task = job.task
        self.metrics.observe_frame(task, self.codec_name, self.quality, decoded.bpp, job.frame.size_bytes)
        self.metrics.observe_stage(task, "decode", decoded_at - started)
        self.metrics.observe_stage(task, "infer", done - decoded_at)
        self.metrics.observe_stage(task, "total", done - started)
        self.metrics.count_request(task, grpc.StatusCode.OK)
        return response

    def _skipped(self, job: Job) -> pb.InferResponse:
        self.metrics.count_refused("deadline")
        self.metrics.count_request(job.label, grpc.StatusCode.DEADLINE_EXCEEDED)
        return error_response(job.frame_id, grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the caller went away or its deadline passed before the frame was processed")

    def _failure(self, job: Job, exc: Exception, stage: str) -> pb.InferResponse:
        if isinstance(exc, IcmhError):
            code, message = status_for(exc), str(exc)
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.metrics.count_refused("too_large")
        else:
            log.exception("frame %d: internal error while %s it", job.frame_id, stage)
            code, message = grpc.StatusCode.INTERNAL, f"internal error while {stage} this frame (logged on the server)"
        self.metrics.count_request(job.label, code)
        return error_response(job.frame_id, code, message)


def check_finite(result: TaskResult) -> None:
    """Raise ``ValueError`` if any number of ``result`` is NaN or infinite."""
    numbers = [value for d in result.detections for value in (*d.box.to_json(), d.score)]
    numbers += [c.score for c in result.classes]
    if not all(math.isfinite(value) for value in numbers):
        raise ValueError(f"the {result.task.value} model produced non-finite outputs")
