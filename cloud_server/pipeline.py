"""One frame through the cloud: parse, decode with the task adapters, run the task model.

Synchronous and single-threaded on purpose: the service runs it in one worker thread,
so torch sees one caller at a time, and the event loop stays free for the network.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict

import grpc

from icmh.errors import AdapterMismatchError, IcmhError
from icmh.codec.frame_codec import FrameCodec
from icmh.v1 import icmh_pb2 as pb
from icmh.tasks import Task

from icmh.service.result_proto import result_to_proto
from icmh.taskmodels import TaskModel
from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.status import status_for


class Pipeline:
    """Decode + infer for every task this server has adapters and a task model for."""

    def __init__(self, frame_codec: FrameCodec, models: Dict[Task, TaskModel], metrics: CloudMetrics) -> None:
        self.frame_codec = frame_codec
        self.models = models
        self.metrics = metrics
        self.codec_name = frame_codec.loaded.spec.name
        self.quality = frame_codec.loaded.quality

    @property
    def tasks(self):
        """Tasks served: those with decoder adapters (or none, for human) and a task model."""
        return [task for task in self.frame_codec.tasks if task in self.models]

    def run(self, frame_id: int, data: bytes) -> pb.InferResponse:
        """Process one frame; a bad frame gives a response with ``error`` set (never raises)."""
        response = pb.InferResponse(frame_id=frame_id)
        start = time.perf_counter()
        task_label = "unknown"
        try:
            frame, task = self.frame_codec.parse(data)
            task_label = task.value
            if task not in self.models:
                raise AdapterMismatchError(f"this server runs no model for task {task.value!r}")
            decoded = self.frame_codec.decode_parsed([(frame, task)])[0]
            decoded_at = time.perf_counter()
            model = self.models[task]
            result = dataclasses.replace(model.infer([decoded.image], task)[0], model=model.name)
        except IcmhError as exc:
            code = status_for(exc)
            response.error.code, response.error.message = code.value[0], str(exc)
            self.metrics.count_request(task_label, code)
            return response
        done = time.perf_counter()
        result_to_proto(result, response)
        response.bits_per_pixel = decoded.bpp
        response.times.decode_seconds = decoded_at - start
        response.times.infer_seconds = done - decoded_at
        response.times.total_seconds = done - start
        self.metrics.observe_frame(task, self.codec_name, self.quality, decoded.bpp, frame.size_bytes)
        self.metrics.observe_stage(task, "decode", decoded_at - start)
        self.metrics.observe_stage(task, "infer", done - decoded_at)
        self.metrics.observe_stage(task, "total", done - start)
        self.metrics.observe_batch(1)
        self.metrics.count_request(task, grpc.StatusCode.OK)
        return response

