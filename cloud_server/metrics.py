"""The cloud server's Prometheus metrics, all defined here (names and labels as SYSTEM.md lists).

=================================  =========  ===========================  ==========================
name                               type       labels                       recorded by
=================================  =========  ===========================  ==========================
``icmh_bits_per_pixel``            histogram  task, codec, quality         :meth:`CloudMetrics.observe_frame`
``icmh_bitstream_bytes``           histogram  task                         :meth:`CloudMetrics.observe_frame`
``icmh_stage_duration_seconds``    histogram  task, stage (decode,         :meth:`CloudMetrics.observe_stage`
                                              synthesis, infer, total)
``icmh_queue_duration_seconds``    histogram  (none)                       :meth:`CloudMetrics.observe_queue`
``icmh_requests_total``            counter    task, code (gRPC status)     :meth:`CloudMetrics.count_request`
``icmh_pending_requests``          gauge      (none)                       :meth:`CloudMetrics.set_pending`
``icmh_batch_size``                histogram  (none)                       :meth:`CloudMetrics.observe_batch`
``icmh_active_streams``            gauge      (none)                       :meth:`CloudMetrics.active_stream`
``icmh_task_model_info``           gauge (1)  task, model                  :meth:`CloudMetrics.set_task_models`
``icmh_refused_total``             counter    reason (unauthenticated,     :meth:`CloudMetrics.count_refused`
                                              overloaded, too_large,
                                              draining, deadline, idle)
=================================  =========  ===========================  ==========================

Label values come from fixed sets (:mod:`icmh.service.metrics`); an unexpected value is
recorded as ``unknown`` (task), ``other`` (codec, quality, stage) or ``UNKNOWN`` (code).
A universal frame is recorded once with task ``universal`` (bpp, bytes, its entropy
decoding as stage ``decode``, ``total``) and once per consumer (``icmh_requests_total``,
stages ``synthesis`` and ``infer``).
``model`` takes the registry's names (one per served task, fixed at start-up).
"""

from __future__ import annotations

from typing import ContextManager, Dict, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from icmh.taskmodels import TASK_MODELS
from icmh.service.metrics import (
    BATCH_SIZE_BUCKETS,
    BPP_BUCKETS,
    BYTES_BUCKETS,
    SECONDS_BUCKETS,
    STATUS_CODE_LABEL,
    TASK_LABEL,
    LabelValues,
    check_amount,
    codec_labels,
    start_metrics_server,
    stop_metrics_server,
)

__all__ = ["CloudMetrics", "STAGES", "STAGE_LABEL", "start_metrics_server", "stop_metrics_server"]

STAGES = ("decode", "synthesis", "infer", "total")
STAGE_LABEL = LabelValues("stage", STAGES + ("other",), "other")
REFUSAL_REASONS = ("unauthenticated", "overloaded", "too_large", "draining", "deadline", "idle", "other")
REFUSAL_LABEL = LabelValues("reason", REFUSAL_REASONS, "other")
MODEL_LABEL = LabelValues("model", tuple(sorted({spec.name for spec in TASK_MODELS.values()})) + ("other",), "other")


class CloudMetrics:
    """The cloud server's metrics on one registry (its own unless ``registry`` is given).

    Each instance registers its metrics once; two instances need two registries (the
    default), so tests can make as many as they like. Serve them with
    ``start_metrics_server(port, metrics.registry)``.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._codec, self._quality = codec_labels()
        reg = self.registry
        self.bits_per_pixel = Histogram(
            "icmh_bits_per_pixel",
            "Bits per pixel of each received frame: 8 x whole-frame bytes / (width x height).",
            ["task", "codec", "quality"], buckets=BPP_BUCKETS, registry=reg)
        self.bitstream_bytes = Histogram(
            "icmh_bitstream_bytes", "Size of each received frame (whole bitstream container), in bytes.",
            ["task"], buckets=BYTES_BUCKETS, unit="bytes", registry=reg)
        self.stage_duration = Histogram(
            "icmh_stage_duration_seconds",
            "Server time per frame and stage (decode, infer, total), in seconds.",
            ["task", "stage"], buckets=SECONDS_BUCKETS, unit="seconds", registry=reg)
        self.queue_duration = Histogram(
            "icmh_queue_duration_seconds", "Time a frame waits in the queue before decoding starts, in seconds.",
            buckets=SECONDS_BUCKETS, unit="seconds", registry=reg)
        self.requests = Counter(
            "icmh_requests_total", "Frames answered, by task and gRPC status code (per frame, streams included).",
            ["task", "code"], registry=reg)
        self.pending_requests = Gauge(
            "icmh_pending_requests", "Frames accepted and not yet answered (queued or running).", registry=reg)
        self.batch_size = Histogram(
            "icmh_batch_size", "Frames per batch run through a task model.", buckets=BATCH_SIZE_BUCKETS,
            registry=reg)
        self.active_streams = Gauge(
            "icmh_active_streams", "Open StreamInfer calls (one per camera session).", registry=reg)
        self.refused = Counter(
            "icmh_refused_total", "Calls and frames refused before any decoding, by reason.", ["reason"], registry=reg)
        self.task_model_info = Gauge(
            "icmh_task_model_info", "The task model serving each task (value 1).", ["task", "model"], registry=reg)

    def set_task_models(self, models: Dict[object, str]) -> None:
        """Publish which task model serves each task (``task -> registry name``)."""
        for task, name in models.items():
            self.task_model_info.labels(task=TASK_LABEL(task), model=MODEL_LABEL(name)).set(1)

    def observe_frame(self, task: object, codec: object, quality: object, bpp: float, nbytes: int) -> None:
        """Record one received frame: its bits per pixel and its size in bytes.

        Raises:
            ValueError: ``bpp`` or ``nbytes`` is negative or not finite.
        """
        task_label = TASK_LABEL(task)
        self.bits_per_pixel.labels(task=task_label, codec=self._codec(codec),
                                   quality=self._quality(quality)).observe(check_amount("bpp", bpp))
        self.bitstream_bytes.labels(task=task_label).observe(check_amount("nbytes", nbytes))

    def observe_stage(self, task: object, stage: object, seconds: float) -> None:
        """Record that ``stage`` (decode, infer or total) of one frame took ``seconds``.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        self.stage_duration.labels(task=TASK_LABEL(task), stage=STAGE_LABEL(stage)).observe(
            check_amount("seconds", seconds))

    def observe_queue(self, seconds: float) -> None:
        """Record that one frame waited ``seconds`` in the queue.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        self.queue_duration.observe(check_amount("seconds", seconds))

    def observe_batch(self, size: int) -> None:
        """Record one batch of ``size`` frames.

        Raises:
            ValueError: ``size`` is negative or not finite.
        """
        self.batch_size.observe(check_amount("size", size))

    def count_refused(self, reason: str) -> None:
        """Count one refused call or frame (reasons: :data:`REFUSAL_REASONS`)."""
        self.refused.labels(reason=REFUSAL_LABEL(reason)).inc()

    def count_request(self, task: object, code: object) -> None:
        """Count one answered frame; ``code`` is a ``grpc.StatusCode``, its name or its number."""
        self.requests.labels(task=TASK_LABEL(task), code=STATUS_CODE_LABEL(code)).inc()

    def set_pending(self, count: int) -> None:
        """Set the pending-requests gauge, e.g. from the queue's own size."""
        self.pending_requests.set(check_amount("count", count))

    def active_stream(self) -> ContextManager:
        """Return a context manager that counts its body as one open stream."""
        return self.active_streams.track_inprogress()
