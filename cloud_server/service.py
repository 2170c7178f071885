"""The ``icmh.v1.InferenceService`` servicer (grpc.aio).

Frames are processed by :class:`~icmh.cloud.pipeline.Pipeline` in a single worker
thread. At most ``max_pending`` frames wait or run at once: beyond that, ``Infer``
answers RESOURCE_EXHAUSTED and a stream gets a per-frame RESOURCE_EXHAUSTED error, so
overload never grows memory. Responses of a stream come back in request order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Optional

import grpc

from icmh.codec.bitstream import FORMAT_VERSION, Limits
from icmh.service.status import status_code
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc

from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.pipeline import Pipeline

log = logging.getLogger("cloud_server")


class InferenceService(pb_grpc.InferenceServiceServicer):
    """Decodes frames with the task adapters and runs the task models."""

    def __init__(self, pipeline: Pipeline, metrics: CloudMetrics, limits: Limits, max_pending: int,
                 max_message_bytes: int, log_frames: bool = False) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.limits = limits
        self.max_pending = max_pending
        self.max_message_bytes = max_message_bytes
        self.log_frames = log_frames
        self.pending = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icmh-pipeline")

    async def _process(self, request: pb.InferRequest, deadline: Optional[float] = None) -> pb.InferResponse:
        """Run one frame unless the queue is full; ``deadline`` (monotonic) skips a frame nobody awaits."""
        if self.pending >= self.max_pending:
            self.metrics.count_request("unknown", grpc.StatusCode.RESOURCE_EXHAUSTED)
            response = pb.InferResponse(frame_id=request.frame_id)
            response.error.code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            response.error.message = f"server busy: {self.pending} frames pending (limit {self.max_pending})"
            return response
        self.pending += 1
        self.metrics.set_pending(self.pending)
        queued = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, self._run, request, queued, deadline)
        finally:
            self.pending -= 1
            self.metrics.set_pending(self.pending)

    def _run(self, request: pb.InferRequest, queued: float, deadline: Optional[float]) -> pb.InferResponse:
        self.metrics.observe_queue(time.perf_counter() - queued)
        if deadline is not None and time.monotonic() >= deadline:  # the caller gave up while it queued
            self.metrics.count_request("unknown", grpc.StatusCode.DEADLINE_EXCEEDED)
            response = pb.InferResponse(frame_id=request.frame_id)
            response.error.code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            response.error.message = "deadline passed before the frame was processed"
            return response
        response = self.pipeline.run(request.frame_id, request.bitstream)
        if self.log_frames:
            log.info("frame %d: %s", request.frame_id, response.error.message or f"{response.bits_per_pixel:.4f} bpp")
        return response

    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        """One frame; a bad frame ends the call with its status code and message."""
        remaining = context.time_remaining()
        response = await self._process(request, None if remaining is None else time.monotonic() + remaining)
        if response.HasField("error"):
            await context.abort(status_code(response.error.code), response.error.message)
        return response

    async def StreamInfer(self, request_iterator: AsyncIterator[pb.InferRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.InferResponse]:
        """A camera session: one response per request, in order; bad frames get per-frame errors."""
        frames = errors = 0
        started = time.perf_counter()
        peer = context.peer()
        with self.metrics.active_stream():
            async for request in request_iterator:
                response = await self._process(request)
                frames += 1
                errors += response.HasField("error")
                yield response
        log.info("stream from %s: %d frames, %d errors, %.1f s", peer, frames, errors, time.perf_counter() - started)

    async def GetCapabilities(self, request: pb.GetCapabilitiesRequest,
                              context: grpc.aio.ServicerContext) -> pb.Capabilities:
        """Codec, quality, tasks, adapter hashes and limits of this server."""
        frame_codec = self.pipeline.frame_codec
        codec = pb.CodecCapability(
            codec=frame_codec.loaded.spec.name, codec_id=frame_codec.loaded.spec.wire_id,
            quality=frame_codec.loaded.quality, base_fingerprint=frame_codec.loaded.fingerprint)
        models = []
        for task in self.pipeline.tasks:
            codec.adapter_hashes[task.value] = frame_codec.codec.adapter_hash(task)
            model = self.pipeline.models[task]
            models.append(pb.TaskModelInfo(task=task.value, name=model.name, weights=model.weights_label,
                                           pretrained=model.pretrained))
        return pb.Capabilities(
            codecs=[codec], tasks=[t.value for t in self.pipeline.tasks], max_frame_bytes=self.limits.max_frame_bytes,
            max_width=self.limits.max_width, max_height=self.limits.max_height, max_pixels=self.limits.max_pixels,
            format_version=FORMAT_VERSION, max_message_bytes=self.max_message_bytes, task_models=models)

