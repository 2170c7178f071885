"""The ``icmh.v1.InferenceService`` servicer (grpc.aio).

Each frame is admitted in the event loop (:meth:`Pipeline.admit`: parse and checks, so a
bad frame is answered at once) and then run by the :class:`~.batching.FrameBatcher`'s
workers, in batches where frames of the same task and size arrive together. At most
``max_pending`` frames wait or run: beyond that ``Infer`` answers RESOURCE_EXHAUSTED and a
stream gets a per-frame RESOURCE_EXHAUSTED, which the edge client resends later. A frame
whose caller gave up (deadline, cancelled call, closed stream) is not processed.

A stream that sends nothing for ``idle_timeout`` seconds is ended (DEADLINE_EXCEEDED).
When the server drains (SIGTERM), open streams are told at once: they answer what is
running and end with UNAVAILABLE, frames not yet started are answered UNAVAILABLE, and the
client resends them to another server. Refusals are counted in ``icmh_refused_total``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import AsyncIterator, Optional

import grpc

from icmh.codec.bitstream import FORMAT_VERSION, Limits
from icmh.service.status import status_code
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc

from icmh.cloud.batching import FrameBatcher, Overloaded
from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.pipeline import Job, Pipeline, error_response

log = logging.getLogger("cloud_server")
DRAINING = "server draining: resend the unanswered frames to another server"


class InferenceService(pb_grpc.InferenceServiceServicer):
    """Decodes frames with the task adapters and runs the task models."""

    def __init__(self, pipeline: Pipeline, metrics: CloudMetrics, limits: Limits, batcher: FrameBatcher,
                 max_message_bytes: int, log_frames: bool = False, idle_timeout: float = 300.0) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.limits = limits
        self.batcher = batcher
        self.max_message_bytes = max_message_bytes
        self.log_frames = log_frames
        self.idle_timeout = idle_timeout
        self.draining = asyncio.Event()

    def begin_drain(self) -> None:
        """Stop taking frames: open streams end after their running frame, queued frames get UNAVAILABLE."""
        self.draining.set()
        answered = self.batcher.drain()
        log.info("draining: %d queued frames answered UNAVAILABLE", answered)

    async def _process(self, request: pb.InferRequest, deadline: Optional[float],
                       gone: threading.Event) -> pb.InferResponse:
        """One frame: admit it, queue it, wait for its response (never raises for a bad frame)."""
        job = Job(request.frame_id, request.bitstream, deadline, gone.is_set, consumers_asked=tuple(request.consumers))
        refusal = self.pipeline.admit(job)
        if refusal is not None:
            return refusal
        try:
            response = await self.batcher.submit(job)
        except Overloaded as exc:
            self.metrics.count_refused("overloaded")
            self.metrics.count_request(job.label, grpc.StatusCode.RESOURCE_EXHAUSTED)
            return error_response(request.frame_id, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if self.log_frames:
            log.info("frame %d: %s", request.frame_id, response.error.message or f"{response.bits_per_pixel:.4f} bpp")
        return response

    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        """One frame; a bad frame ends the call with its status code and message."""
        if self.draining.is_set():
            self.metrics.count_refused("draining")
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        gone = threading.Event()
        context.add_done_callback(lambda _: gone.set())
        remaining = context.time_remaining()
        response = await self._process(request, None if remaining is None else time.monotonic() + remaining, gone)
        if response.HasField("error"):
            await context.abort(status_code(response.error.code), response.error.message)
        return response

    async def StreamInfer(self, request_iterator: AsyncIterator[pb.InferRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.InferResponse]:
        """A camera session: one response per request, in order; bad frames get per-frame errors."""
        frames = errors = 0
        started, peer = time.perf_counter(), context.peer()
        gone = threading.Event()
        context.add_done_callback(lambda _: gone.set())
        requests = request_iterator.__aiter__()
        ending = "client done"
        with self.metrics.active_stream():
            while True:
                request = await self._next(requests)
                if request is None:
                    break
                if isinstance(request, str):
                    ending = request
                    break
                response = await self._process(request, None, gone)
                frames += 1
                errors += response.HasField("error")
                yield response
        log.info("stream from %s: %d frames, %d errors, %.1f s (%s)", peer, frames, errors,
                 time.perf_counter() - started, ending)
        if ending == "draining":
            self.metrics.count_refused("draining")
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        if ending == "idle":
            self.metrics.count_refused("idle")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"stream idle for {self.idle_timeout:.0f} s; open a new one when frames come")

    async def _next(self, requests: AsyncIterator[pb.InferRequest]):
        """The next request, ``None`` at the end of the stream, or ``"draining"`` / ``"idle"``."""
        if self.draining.is_set():
            return "draining"
        reading = asyncio.ensure_future(requests.__anext__())
        draining = asyncio.ensure_future(self.draining.wait())
        done, _ = await asyncio.wait({reading, draining}, timeout=self.idle_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        draining.cancel()
        if reading in done:
            try:
                return reading.result()
            except StopAsyncIteration:
                return None
        reading.cancel()
        return "draining" if self.draining.is_set() else "idle"

    async def GetCapabilities(self, request: pb.GetCapabilitiesRequest,
                              context: grpc.aio.ServicerContext) -> pb.Capabilities:
        """Codec, quality, tasks and their models, adapter hashes and limits of this server."""
        frame_codec = self.pipeline.frame_codec
        codec = pb.CodecCapability(
            codec=frame_codec.loaded.spec.name, codec_id=frame_codec.loaded.spec.wire_id,
            quality=frame_codec.loaded.quality, base_fingerprint=frame_codec.loaded.fingerprint)
        for task in self.pipeline.tasks:
            codec.adapter_hashes[task.value] = frame_codec.codec.adapter_hash(task)
        codec.universal_encoder_hash = frame_codec.codec.universal_hash()
        codec.consumers.extend(task.value for task in self.pipeline.consumers)
        models = [pb.TaskModelInfo(task=task.value, name=model.name, weights=model.weights_label,
                                   pretrained=model.pretrained) for task, model in self.pipeline.models.items()]
        return pb.Capabilities(
            codecs=[codec], tasks=[t.value for t in self.pipeline.tasks], max_frame_bytes=self.limits.max_frame_bytes,
            max_width=self.limits.max_width, max_height=self.limits.max_height, max_pixels=self.limits.max_pixels,
            format_version=FORMAT_VERSION, max_message_bytes=self.max_message_bytes, task_models=models)
