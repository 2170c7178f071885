"""Prometheus metrics of both sides, scraped over HTTP from a real endpoint and parsed.

Each test starts ``start_metrics_server`` on a free loopback port with its own registry,
records known observations and checks the exact counts and sums a Prometheus would read.
"""

from __future__ import annotations

import math
import socket
import threading
import urllib.request
from typing import Dict, Iterator, List, Tuple

import grpc
import pytest

from icmh.errors import InvalidInputError
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from icmh.cloud.metrics import STAGE_LABEL, CloudMetrics
from icmh.edge.metrics import DROP_REASON_LABEL, EdgeMetrics
from icmh.service.metrics import (
    BPP_BUCKETS,
    BYTES_BUCKETS,
    SECONDS_BUCKETS,
    STATUS_CODE_LABEL,
    TASK_LABEL,
    LabelValues,
    codec_labels,
    start_metrics_server,
    stop_metrics_server,
)

Sample = Tuple[str, Dict[str, str], float]
ALLOWED_LABELS = {"task", "codec", "quality", "stage", "code", "reason", "le"}


class Scraper:
    """Serves one registry on 127.0.0.1:<free port> and reads it back like Prometheus does."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.server, self.thread = start_metrics_server(0, registry)
        self.port = self.server.server_port

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            assert response.status == 200
            return response.read().decode("utf-8")

    def samples(self) -> List[Sample]:
        return [(s.name, dict(s.labels), s.value)
                for family in text_string_to_metric_families(self.text()) for s in family.samples]

    def families(self):
        return {family.name: family for family in text_string_to_metric_families(self.text())}

    def value(self, name: str, **labels: str) -> float:
        """The one sample called ``name`` with exactly ``labels``; fails if absent."""
        found = [v for n, ls, v in self.samples() if n == name and ls == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def close(self) -> None:
        # shutdown() waits for the serving loop's 0.5 s poll; nothing here needs to wait for it
        threading.Thread(target=stop_metrics_server, args=(self.server, self.thread), daemon=True).start()


@pytest.fixture
def cloud() -> Iterator[Tuple[CloudMetrics, Scraper]]:
    metrics = CloudMetrics()
    scraper = Scraper(metrics.registry)
    yield metrics, scraper
    scraper.close()


@pytest.fixture
def edge() -> Iterator[Tuple[EdgeMetrics, Scraper]]:
    metrics = EdgeMetrics()
    scraper = Scraper(metrics.registry)
    yield metrics, scraper
    scraper.close()


def label_values(samples: List[Sample]) -> set:
    """Every label value of every sample."""
    return {value for _, labels, _ in samples for value in labels.values()}


def assert_labels_bounded(samples: List[Sample]) -> None:
    """Every label is one of the known names and every value is in its fixed set."""
    codec, quality = codec_labels()
    domains = {"task": TASK_LABEL, "codec": codec, "quality": quality, "stage": STAGE_LABEL,
               "code": STATUS_CODE_LABEL, "reason": DROP_REASON_LABEL}
    for name, labels, _ in samples:
        assert set(labels) <= ALLOWED_LABELS, (name, labels)
        for key, value in labels.items():
            if key != "le":
                assert value in domains[key].values, (name, key, value)


# --- cloud ---------------------------------------------------------------------------------------

def test_cloud_counts_frames_and_bits_per_pixel_exactly(cloud):
    metrics, scraper = cloud
    frames = [(0.125, 100), (0.25, 200), (0.5, 400)]   # exact in binary: sums are exact
    for bpp, nbytes in frames:
        metrics.observe_frame("detection", "mbt2018-mean", 3, bpp, nbytes)
        metrics.count_request("detection", grpc.StatusCode.OK)
    labels = {"task": "detection", "codec": "mbt2018-mean", "quality": "3"}
    assert scraper.value("icmh_bits_per_pixel_count", **labels) == 3
    assert scraper.value("icmh_bits_per_pixel_sum", **labels) == 0.875
    assert scraper.value("icmh_bits_per_pixel_bucket", le="0.2", **labels) == 1
    assert scraper.value("icmh_bits_per_pixel_bucket", le="0.3", **labels) == 2
    assert scraper.value("icmh_bits_per_pixel_bucket", le="+Inf", **labels) == 3
    assert scraper.value("icmh_bitstream_bytes_count", task="detection") == 3
    assert scraper.value("icmh_bitstream_bytes_sum", task="detection") == 700
    assert scraper.value("icmh_bitstream_bytes_bucket", task="detection", le="128.0") == 1
    assert scraper.value("icmh_requests_total", task="detection", code="OK") == 3


def test_cloud_request_codes_accept_enum_name_and_number(cloud):
    metrics, scraper = cloud
    metrics.count_request("human", grpc.StatusCode.INVALID_ARGUMENT)
    metrics.count_request("human", "INVALID_ARGUMENT")
    metrics.count_request("human", grpc.StatusCode.INVALID_ARGUMENT.value[0])   # FrameError.code
    metrics.count_request("human", "resource_exhausted")
    assert scraper.value("icmh_requests_total", task="human", code="INVALID_ARGUMENT") == 3
    assert scraper.value("icmh_requests_total", task="human", code="RESOURCE_EXHAUSTED") == 1


def test_cloud_stage_queue_and_batch_histograms(cloud):
    metrics, scraper = cloud
    metrics.observe_stage("segmentation", "decode", 0.25)
    metrics.observe_stage("segmentation", "infer", 0.5)
    metrics.observe_stage("segmentation", "total", 0.75)
    metrics.observe_stage("segmentation", "total", 0.25)
    metrics.observe_stage("classification", "infer", 0.125)
    metrics.observe_queue(0.003)
    metrics.observe_batch(4)
    metrics.observe_batch(1)
    for stage, count, total in (("decode", 1, 0.25), ("infer", 1, 0.5), ("total", 2, 1.0)):
        assert scraper.value("icmh_stage_duration_seconds_count", task="segmentation", stage=stage) == count
        assert scraper.value("icmh_stage_duration_seconds_sum", task="segmentation", stage=stage) == total
    assert scraper.value("icmh_stage_duration_seconds_count", task="classification", stage="infer") == 1
    assert scraper.value("icmh_stage_duration_seconds_sum", task="classification", stage="infer") == 0.125
    assert scraper.value("icmh_queue_duration_seconds_count") == 1
    assert scraper.value("icmh_queue_duration_seconds_bucket", le="0.005") == 1
    assert scraper.value("icmh_queue_duration_seconds_bucket", le="0.002") == 0
    assert scraper.value("icmh_batch_size_count") == 2 and scraper.value("icmh_batch_size_sum") == 5


def test_cloud_gauges_follow_pending_requests_and_open_streams(cloud):
    metrics, scraper = cloud
    assert scraper.value("icmh_pending_requests") == 0 and scraper.value("icmh_active_streams") == 0
    with metrics.active_stream(), metrics.active_stream():
        assert scraper.value("icmh_active_streams") == 2
    assert scraper.value("icmh_active_streams") == 0
    metrics.set_pending(5)
    assert scraper.value("icmh_pending_requests") == 5


def test_cloud_unexpected_label_values_map_to_the_fallback_never_to_ids(cloud):
    metrics, scraper = cloud
    metrics.observe_frame("frame-000123", "camera-7", 99, 0.5, 256)
    metrics.observe_stage("cam-42/frame-9", "resize", 0.125)
    metrics.count_request("frame-000123", 999)
    metrics.count_request(Exception("camera-7"), object())
    assert scraper.value("icmh_bits_per_pixel_count", task="unknown", codec="other", quality="other") == 1
    assert scraper.value("icmh_bitstream_bytes_sum", task="unknown") == 256
    assert scraper.value("icmh_stage_duration_seconds_sum", task="unknown", stage="other") == 0.125
    assert scraper.value("icmh_requests_total", task="unknown", code="UNKNOWN") == 2
    text, values = scraper.text(), label_values(scraper.samples())
    for leaked in ("frame-000123", "camera-7", "cam-42", "resize"):
        assert leaked not in text
    assert "99" not in values
    assert_labels_bounded(scraper.samples())


def test_cloud_rejects_impossible_amounts(cloud):
    metrics, _ = cloud
    for bpp, nbytes in ((-0.1, 10), (math.nan, 10), (0.1, -1), (math.inf, 1)):
        with pytest.raises(ValueError):
            metrics.observe_frame("human", "mbt2018-mean", 1, bpp, nbytes)
    with pytest.raises(ValueError):
        metrics.observe_stage("human", "decode", -0.001)


def test_cloud_metric_names_help_and_units_are_as_documented(cloud):
    _, scraper = cloud
    families = scraper.families()
    expected = {
        "icmh_bits_per_pixel": "histogram", "icmh_bitstream_bytes": "histogram",
        "icmh_stage_duration_seconds": "histogram", "icmh_queue_duration_seconds": "histogram",
        "icmh_requests": "counter", "icmh_pending_requests": "gauge", "icmh_batch_size": "histogram",
        "icmh_active_streams": "gauge",
    }
    assert {name: families[name].type for name in expected} == expected
    assert all(families[name].documentation for name in expected)


# --- edge ----------------------------------------------------------------------------------------

def test_edge_counts_frames_bytes_and_bits_per_pixel_exactly(edge):
    metrics, scraper = edge
    for bpp, nbytes in ((0.125, 300), (0.25, 600), (0.0625, 150)):
        metrics.observe_encode("detection", 0.01)
        metrics.observe_encoded("detection", "mbt2018-mean-tiny", 1, bpp)
        metrics.count_sent("detection", nbytes)
        metrics.observe_round_trip("detection", 0.5)
    metrics.count_sent("detection", 300)   # a resend after a reconnect: sent again, not re-encoded
    labels = {"task": "detection", "codec": "mbt2018-mean-tiny", "quality": "1"}
    assert scraper.value("icmh_edge_bits_per_pixel_count", **labels) == 3
    assert scraper.value("icmh_edge_bits_per_pixel_sum", **labels) == 0.4375
    assert scraper.value("icmh_edge_frames_sent_total", task="detection") == 4
    assert scraper.value("icmh_edge_uplink_bytes_total", task="detection") == 1350
    assert scraper.value("icmh_edge_encode_duration_seconds_count", task="detection") == 3
    assert scraper.value("icmh_edge_encode_duration_seconds_bucket", task="detection", le="0.02") == 3
    assert scraper.value("icmh_edge_round_trip_seconds_count", task="detection") == 3
    assert scraper.value("icmh_edge_round_trip_seconds_sum", task="detection") == 1.5


def test_edge_dropped_frames_by_reason_and_in_flight_gauge(edge):
    metrics, scraper = edge
    metrics.count_dropped("human", "window_full")
    metrics.count_dropped("human", "window_full")
    metrics.count_dropped("human", "error")
    metrics.count_dropped("human", "frame 17 timed out")
    metrics.set_in_flight(3)
    assert scraper.value("icmh_edge_frames_dropped_total", task="human", reason="window_full") == 2
    assert scraper.value("icmh_edge_frames_dropped_total", task="human", reason="error") == 1
    assert scraper.value("icmh_edge_frames_dropped_total", task="human", reason="other") == 1
    assert scraper.value("icmh_edge_frames_in_flight") == 3
    metrics.observe_encode("human", 0.25)
    assert scraper.value("icmh_edge_encode_duration_seconds_count", task="human") == 1
    assert scraper.value("icmh_edge_encode_duration_seconds_sum", task="human") == 0.25
    with pytest.raises(ValueError):
        metrics.observe_encode("human", -1.0)


def test_edge_unexpected_label_values_map_to_the_fallback_never_to_ids(edge):
    metrics, scraper = edge
    metrics.observe_encoded("camera-3", "frame-55", "q3", 0.25)
    metrics.count_sent("camera-3", 64)
    metrics.observe_round_trip(True, 0.25)
    assert scraper.value("icmh_edge_bits_per_pixel_count", task="unknown", codec="other", quality="other") == 1
    assert scraper.value("icmh_edge_frames_sent_total", task="unknown") == 1
    assert scraper.value("icmh_edge_round_trip_seconds_sum", task="unknown") == 0.25
    text, values = scraper.text(), label_values(scraper.samples())
    for leaked in ("camera-3", "frame-55", "q3"):
        assert leaked not in text
    assert "True" not in values
    assert_labels_bounded(scraper.samples())


def test_edge_metric_names_and_types_are_as_documented(edge):
    _, scraper = edge
    families = scraper.families()
    expected = {
        "icmh_edge_encode_duration_seconds": "histogram", "icmh_edge_round_trip_seconds": "histogram",
        "icmh_edge_bits_per_pixel": "histogram", "icmh_edge_uplink_bytes": "counter",
        "icmh_edge_frames_sent": "counter", "icmh_edge_frames_dropped": "counter",
        "icmh_edge_frames_in_flight": "gauge",
    }
    assert {name: families[name].type for name in expected} == expected
    assert all(families[name].documentation for name in expected)


# --- both, and the shared helpers ----------------------------------------------------------------

def test_edge_and_cloud_share_one_registry_without_clashing():
    registry = CollectorRegistry()
    cloud, edge = CloudMetrics(registry), EdgeMetrics(registry)
    assert cloud.registry is registry and edge.registry is registry
    cloud.count_request("detection", "OK")
    edge.count_sent("detection", 10)
    scraper = Scraper(registry)
    try:
        assert scraper.value("icmh_requests_total", task="detection", code="OK") == 1
        assert scraper.value("icmh_edge_frames_sent_total", task="detection") == 1
        assert_labels_bounded(scraper.samples())
    finally:
        scraper.close()


def test_each_instance_gets_its_own_registry_by_default():
    first, second = CloudMetrics(), CloudMetrics()
    first.count_request("human", "OK")
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("icmh_requests_total", {"task": "human", "code": "OK"}) == 1
    assert second.registry.get_sample_value("icmh_requests_total", {"task": "human", "code": "OK"}) is None
    with pytest.raises(ValueError):   # one registry holds each metric once
        CloudMetrics(first.registry)


def test_metrics_server_reports_its_port_and_refuses_bad_ports():
    registry = CollectorRegistry()
    server, thread = start_metrics_server(0, registry)
    try:
        port = server.server_port
        assert 0 < port < 65536 and thread.is_alive()
        with pytest.raises(InvalidInputError, match=f"cannot serve metrics on 127.0.0.1:{port}: .*--metrics-port"):
            start_metrics_server(port, registry)
    finally:
        stop_metrics_server(server, thread)
    assert not thread.is_alive()
    with socket.socket() as probe:   # the port is free again once stopped
        probe.bind(("127.0.0.1", port))
    for bad in (-1, 65536, True, "9100", 1.5):
        with pytest.raises(ValueError):
            start_metrics_server(bad, registry)


def test_label_values_accept_enums_and_ints_and_reject_everything_else():
    from icmh.tasks import Task

    assert TASK_LABEL(Task.SEGMENTATION) == "segmentation"
    assert TASK_LABEL("classification") == "classification"
    assert TASK_LABEL(None) == "unknown" and TASK_LABEL(b"human") == "unknown"
    assert STATUS_CODE_LABEL(grpc.StatusCode.DEADLINE_EXCEEDED) == "DEADLINE_EXCEEDED"
    assert STATUS_CODE_LABEL(0) == "OK" and STATUS_CODE_LABEL(True) == "UNKNOWN"
    codec, quality = codec_labels()
    assert quality(3) == "3" and quality("8") == "8" and quality(0) == "other" and quality(True) == "other"
    assert codec("cheng2020-anchor") == "cheng2020-anchor" and codec("jpeg") == "other"
    with pytest.raises(ValueError):
        LabelValues("x", ("a",), "b")


def test_buckets_cover_the_documented_ranges():
    assert BPP_BUCKETS[0] == 0.005 and BPP_BUCKETS[-1] == 2.0
    assert BYTES_BUCKETS[0] == 64 and BYTES_BUCKETS[-1] == 1 << 20
    assert SECONDS_BUCKETS[0] == 0.001 and SECONDS_BUCKETS[-1] == 10.0
    for buckets in (BPP_BUCKETS, BYTES_BUCKETS, SECONDS_BUCKETS):
        assert list(buckets) == sorted(set(buckets))
        ratios = [b / a for a, b in zip(buckets, buckets[1:])]
        assert max(ratios) <= 2.5   # roughly log-spaced: no gap wider than 2.5x
