"""The edge client's Prometheus metrics, all defined here.

=======================================  =========  ======================  ===============================
name                                     type       labels                  recorded by
=======================================  =========  ======================  ===============================
``icmh_edge_encode_duration_seconds``    histogram  task                    :meth:`EdgeMetrics.observe_encode`
``icmh_edge_round_trip_seconds``         histogram  task                    :meth:`EdgeMetrics.observe_round_trip`
``icmh_edge_bits_per_pixel``             histogram  task, codec, quality    :meth:`EdgeMetrics.observe_encoded`
``icmh_edge_uplink_bytes_total``         counter    task                    :meth:`EdgeMetrics.count_sent`
``icmh_edge_frames_sent_total``          counter    task                    :meth:`EdgeMetrics.count_sent`
``icmh_edge_frames_dropped_total``       counter    task, reason            :meth:`EdgeMetrics.count_dropped`
                                                    (window_full, error)
``icmh_edge_frames_in_flight``           gauge      (none)                  :meth:`EdgeMetrics.set_in_flight`
=======================================  =========  ======================  ===============================

Bits per pixel is recorded once per encoded frame; frames sent and uplink bytes once per
transmission, so a frame resent after a reconnect counts twice there (they measure the
link, not the source). Label values come from fixed sets (:mod:`icmh.service.metrics`):
an unexpected value is recorded as ``unknown`` (task) or ``other``.
"""

from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from icmh.service.metrics import (
    BPP_BUCKETS,
    SECONDS_BUCKETS,
    TASK_LABEL,
    LabelValues,
    check_amount,
    codec_labels,
    start_metrics_server,
    stop_metrics_server,
)

__all__ = ["EdgeMetrics", "DROP_REASONS", "DROP_REASON_LABEL", "start_metrics_server", "stop_metrics_server"]

DROP_REASONS = ("window_full", "error")
DROP_REASON_LABEL = LabelValues("reason", DROP_REASONS + ("other",), "other")


class EdgeMetrics:
    """The edge client's metrics on one registry (its own unless ``registry`` is given).

    Each instance registers its metrics once; two instances need two registries (the
    default). Serve them with ``start_metrics_server(port, metrics.registry)``.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._codec, self._quality = codec_labels()
        reg = self.registry
        self.encode_duration = Histogram(
            "icmh_edge_encode_duration_seconds", "Time to encode one frame on the edge device, in seconds.",
            ["task"], buckets=SECONDS_BUCKETS, unit="seconds", registry=reg)
        self.round_trip = Histogram(
            "icmh_edge_round_trip_seconds",
            "Time from sending a frame to receiving its response, in seconds.",
            ["task"], buckets=SECONDS_BUCKETS, unit="seconds", registry=reg)
        self.bits_per_pixel = Histogram(
            "icmh_edge_bits_per_pixel",
            "Bits per pixel of each encoded frame: 8 x whole-frame bytes / (width x height).",
            ["task", "codec", "quality"], buckets=BPP_BUCKETS, registry=reg)
        self.uplink_bytes = Counter(
            "icmh_edge_uplink_bytes_total", "Bitstream bytes sent to the server (resends included).",
            ["task"], unit="bytes", registry=reg)
        self.frames_sent = Counter(
            "icmh_edge_frames_sent_total", "Frames sent to the server (resends included).", ["task"],
            registry=reg)
        self.frames_dropped = Counter(
            "icmh_edge_frames_dropped_total",
            "Frames never answered: window_full (live source, oldest unsent frame dropped) or error.",
            ["task", "reason"], registry=reg)
        self.frames_in_flight = Gauge(
            "icmh_edge_frames_in_flight", "Frames sent and not yet answered.", registry=reg)

    def observe_encode(self, task: object, seconds: float) -> None:
        """Record the encoding time of one frame (a frame of a batch: its share of the batch's time).

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        self.encode_duration.labels(task=TASK_LABEL(task)).observe(check_amount("seconds", seconds))

    def observe_encoded(self, task: object, codec: object, quality: object, bpp: float) -> None:
        """Record the bits per pixel of one encoded frame.

        Raises:
            ValueError: ``bpp`` is negative or not finite.
        """
        self.bits_per_pixel.labels(task=TASK_LABEL(task), codec=self._codec(codec),
                                   quality=self._quality(quality)).observe(check_amount("bpp", bpp))

    def count_sent(self, task: object, nbytes: int) -> None:
        """Count one frame of ``nbytes`` bytes sent (call again for a resend).

        Raises:
            ValueError: ``nbytes`` is negative or not finite.
        """
        task_label = TASK_LABEL(task)
        self.uplink_bytes.labels(task=task_label).inc(check_amount("nbytes", nbytes))
        self.frames_sent.labels(task=task_label).inc()

    def observe_round_trip(self, task: object, seconds: float) -> None:
        """Record that one frame's response came ``seconds`` after it was sent.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        self.round_trip.labels(task=TASK_LABEL(task)).observe(check_amount("seconds", seconds))

    def count_dropped(self, task: object, reason: object) -> None:
        """Count one dropped frame; ``reason`` is ``window_full`` or ``error``."""
        self.frames_dropped.labels(task=TASK_LABEL(task), reason=DROP_REASON_LABEL(reason)).inc()

    def set_in_flight(self, count: int) -> None:
        """Set the frames-in-flight gauge to the size of the send window now.

        Raises:
            ValueError: ``count`` is negative or not finite.
        """
        self.frames_in_flight.set(check_amount("count", count))
