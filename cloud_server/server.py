"""Build and run the grpc.aio server: servicer, health, reflection, graceful shutdown.

On SIGTERM or SIGINT the health service goes NOT_SERVING, open streams are told at once
(their running frame is answered, then they end with UNAVAILABLE and the client resends
the rest elsewhere), queued frames are answered UNAVAILABLE, running batches get ``grace``
seconds to finish, then the process exits 0. Calls are bounded before any work: at most
``max_calls`` at once (RESOURCE_EXHAUSTED beyond) and ``max_streams_per_connection``
concurrent streams per HTTP/2 connection. TLS (:mod:`.tls`), bearer tokens (:mod:`.auth`)
and a maximum connection age are off unless configured.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from icmh.codec.bitstream import Limits
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.errors import InvalidInputError
from icmh.service.metrics import start_metrics_server, stop_metrics_server
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc
from icmh.taskmodels import ModelOptions, TaskModel, load_task_model
from icmh.tasks import DEFAULT_SERVED_TASKS, Task

from icmh.cloud.auth import BearerTokenInterceptor
from icmh.cloud.batching import FrameBatcher
from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.pipeline import Pipeline
from icmh.cloud.service import InferenceService
from icmh.cloud.tls import ServerTls

log = logging.getLogger("cloud_server")
SERVER_LIMITS = Limits(max_pixels=1920 * 1080)  # a 1080p camera; a 4K frame would cost ~4× the time and memory
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


@dataclass
class ServerConfig:
    """Everything ``cloud-server`` is started with."""

    codec: CodecOptions
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: Optional[int] = 9100
    tasks: List[Task] = field(default_factory=lambda: list(DEFAULT_SERVED_TASKS))
    max_pending: int = 32
    max_batch: int = 4
    max_batch_wait: float = 0.005  # seconds a worker waits for a batch to fill
    workers: int = 1
    max_calls: int = 32
    max_streams_per_connection: int = 16
    stream_idle_timeout: float = 300.0
    grace_seconds: float = 10.0
    models: Dict[Task, str] = field(default_factory=dict)  # task -> task model name (absent: the default)
    model_options: ModelOptions = ModelOptions(score_threshold=0.5)
    log_frames: bool = False
    tls: Optional[ServerTls] = None
    auth_tokens: Sequence[str] = ()
    max_connection_age: float = 0.0  # seconds; 0: connections live as long as their client wants
    max_connection_age_grace: float = 0.0  # seconds calls get after the GOAWAY; 0: as long as they need

    @property
    def max_message_bytes(self) -> int:
        """Largest gRPC message accepted: one maximal frame plus room for the envelope."""
        return self.codec.limits.max_frame_bytes + 64 * 1024

    def grpc_options(self) -> List[Tuple[str, int]]:
        """Channel arguments of the server: message sizes and, if set, the maximum connection age."""
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_concurrent_streams", self.max_streams_per_connection),
                   ("grpc.so_reuseport", 0)]  # a port in use is an error, not a second listener
        if self.max_connection_age > 0:
            options.append(("grpc.max_connection_age_ms", round(1e3 * self.max_connection_age)))
        if self.max_connection_age_grace > 0:
            options.append(("grpc.max_connection_age_grace_ms", round(1e3 * self.max_connection_age_grace)))
        return options

    def security_label(self) -> str:
        """How the port is protected, for the start-up line: e.g. ``mutual TLS, 2 bearer token(s)``."""
        transport = "plaintext" if self.tls is None else "mutual TLS" if self.tls.mutual else "TLS"
        auth = f"{len(self.auth_tokens)} bearer token(s)" if self.auth_tokens else "no auth"
        return f"{transport}, {auth}"


def build_pipeline(config: ServerConfig, metrics: CloudMetrics) -> Pipeline:
    """Load the codec, adapters and one task model per served task that has adapters or a decoder head here."""
    frame_codec = open_frame_codec(config.codec, config.tasks if config.codec.random_adapters else [])
    models: Dict[Task, TaskModel] = {}
    for task in dict.fromkeys(frame_codec.tasks + frame_codec.consumers):  # single-task frames and universal ones
        if task in config.tasks:
            models[task] = load_task_model(task, config.models.get(task), config.model_options)
    return Pipeline(frame_codec, models, metrics)


async def serve(config: ServerConfig, pipeline: Optional[Pipeline] = None, metrics: Optional[CloudMetrics] = None,
                ready: Optional[asyncio.Event] = None, stop: Optional[asyncio.Event] = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set); returns the exit status (0 after a graceful stop).

    ``ready`` is set once the port serves; the bound port is then ``config.port``.
    Raises :class:`InvalidInputError` when the gRPC or metrics port cannot be bound.
    """
    metrics = metrics or CloudMetrics()
    pipeline = pipeline or build_pipeline(config, metrics)
    metrics.set_task_models({task: model.name for task, model in pipeline.models.items()})
    interceptors = ([BearerTokenInterceptor(config.auth_tokens, lambda: metrics.count_refused("unauthenticated"))]
                    if config.auth_tokens else [])
    server = grpc.aio.server(options=config.grpc_options(), interceptors=interceptors,
                             maximum_concurrent_rpcs=config.max_calls)
    batcher = FrameBatcher(pipeline, max_pending=config.max_pending, max_batch=config.max_batch,
                           max_wait=config.max_batch_wait, workers=config.workers)
    service = InferenceService(pipeline, metrics, config.codec.limits, batcher, config.max_message_bytes,
                               config.log_frames, config.stream_idle_timeout)
    pb_grpc.add_InferenceServiceServicer_to_server(service, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                         reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    try:
        port = (server.add_insecure_port(address) if config.tls is None
                else server.add_secure_port(address, config.tls.credentials()))
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot serve gRPC on {address}: {exc} (another process uses the port? "
                                f"pick another --port)") from None
    config.port = port
    metrics_server = None
    if config.metrics_port is not None:
        metrics_server = start_metrics_server(config.metrics_port, metrics.registry, config.host)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = metrics_server[0].server_port if metrics_server else None
    print(f"cloud-server listening on {config.host}:{port} (metrics on port {metrics_port}); "
          f"tasks: {', '.join(f'{t.value} ({pipeline.models[t].name})' for t in pipeline.tasks)}; "
          f"universal frames for: {', '.join(t.value for t in pipeline.consumers) or 'none'}; "
          f"codec {pipeline.frame_codec.loaded.label}; "
          f"{config.security_label()}", flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    print("cloud-server: draining (health NOT_SERVING)", flush=True)
    started = time.monotonic()
    await health.enter_graceful_shutdown()
    service.begin_drain()
    await server.stop(config.grace_seconds)
    if not batcher.join(max(0.0, config.grace_seconds - (time.monotonic() - started))):
        print("cloud-server: a batch was still running when the grace period ended", flush=True)
    if metrics_server:
        stop_metrics_server(*metrics_server)
    print("cloud-server: stopped", flush=True)
    return 0
