"""Server and edge processes under load: killed clients, slow consumers, overload, a long soak.

Real processes on loopback (these tests are about processes and their memory): a
``cloud-server`` child (:class:`server_process.ServerProcess`) and, where the edge's own
memory matters, an ``edge-client`` child. Memory is the kernel's resident set size
(``VmRSS``). Bounds, stated here and in docs/service.md:

* a slow consumer (reads no response) can make the server hold at most what HTTP/2 flow
  control lets through: ``SLOW_CONSUMER_CEILING_MB`` above the idle server;
* overload at 10× ``--max-pending`` adds at most ``OVERLOAD_CEILING_MB``;
* a soak of ``SOAK_FRAMES`` frames through one stream grows neither process by more than
  ``SOAK_SLOPE_MB`` between its first ``SOAK_WARMUP`` frames and its end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest

from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.tasks import Task
from icmh.v1 import icmh_pb2 as pb

from support import call_outcomes, smooth_image
from server_process import ROOT, ServerProcess

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]
SLOW_CONSUMER_CEILING_MB = 200
OVERLOAD_CEILING_MB = 200
SOAK_FRAMES, SOAK_WARMUP, SOAK_SLOPE_MB = 1500, 300, 24


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def wait_until(condition, timeout: float = 120, what: str = "condition") -> None:
    """Poll ``condition()`` every 50 ms until it is true; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def gauge(server: ServerProcess, name: str) -> float:
    return server.scrape().get((name, ()), 0.0)


@pytest.fixture(scope="module")
def small_frames():
    codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1))
    return [frame.data for frame in codec.encode([smooth_image(64, 64, seed) for seed in range(8)], Task.HUMAN)]


def _edge(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "icmh.edge.cli", *argv], cwd=ROOT,
                            env=dict(os.environ, ICMH_OFFLINE="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def test_a_killed_edge_client_leaves_no_stream_or_pending_frame_behind():
    server = ServerProcess("--tasks", "human", codec=TINY)
    try:
        edge = _edge("--demo", "--frames", "100000", "--window", "4", "--task", "human", *TINY,
                     "--server", f"127.0.0.1:{server.port}")
        wait_until(lambda: gauge(server, "icmh_active_streams") == 1 and gauge(server, "icmh_pending_requests") >= 1,
                   what="a stream with frames in flight")
        edge.kill()
        edge.wait(timeout=30)
        wait_until(lambda: gauge(server, "icmh_active_streams") == 0 and gauge(server, "icmh_pending_requests") == 0,
                   timeout=30, what="the gauges back at 0")
    finally:
        assert server.stop() == 0


def test_a_slow_consumer_cannot_grow_the_server_beyond_the_ceiling():
    """A client that never reads its responses (decoded 512×512 PNGs, ~0.4 MB each) holds the server back
    through HTTP/2 flow control: it stops processing instead of piling up responses."""
    codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1))
    frames = [frame.data for frame in codec.encode([smooth_image(512, 512, seed, cell=4) for seed in range(4)],
                                                   Task.HUMAN)]
    offered = 300
    server = ServerProcess("--tasks", "human", codec=TINY)
    try:
        server.stub.Infer(pb.InferRequest(frame_id=0, bitstream=frames[0]), timeout=60)  # warm
        idle = rss_mb(server.proc.pid)
        requests = (pb.InferRequest(frame_id=i, bitstream=frames[i % len(frames)]) for i in range(offered))
        call = server.stub.StreamInfer(requests, timeout=600)  # never read: a client that does not consume
        processed = lambda: server.scrape().get(("icmh_requests_total", (("code", "OK"), ("task", "human"))), 0)
        wait_until(lambda: processed() > 5, timeout=120, what="the first frames")
        before, stalled_since = processed(), time.monotonic()
        while time.monotonic() - stalled_since < 3:  # until three seconds pass without a frame processed
            time.sleep(0.5)
            if processed() != before:
                before, stalled_since = processed(), time.monotonic()
        held = rss_mb(server.proc.pid)
        call.cancel()
        assert before < offered - 1, "the server processed everything a client that reads nothing sent"
        assert held - idle < SLOW_CONSUMER_CEILING_MB, (idle, held)
        wait_until(lambda: gauge(server, "icmh_active_streams") == 0, timeout=60, what="the stream to end")
    finally:
        assert server.stop() == 0


def test_overload_at_ten_times_max_pending_stays_bounded_and_recovers(small_frames):
    # 20 calls at once on one connection: allow them as HTTP/2 streams, so that the frame queue is what refuses
    server = ServerProcess("--tasks", "human", "--max-pending", "2", "--max-streams-per-connection", "64", codec=TINY)
    try:
        stub = server.stub
        stub.Infer(pb.InferRequest(frame_id=0, bitstream=small_frames[0]), timeout=60)  # warm
        idle = rss_mb(server.proc.pid)
        futures = [stub.Infer.future(pb.InferRequest(frame_id=i, bitstream=small_frames[i % 8]), timeout=120)
                   for i in range(20)]
        outcomes = call_outcomes(futures)
        codes = [code for code, _ in outcomes]
        details = [detail for code, detail in outcomes if code != grpc.StatusCode.OK]
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        # never more than --max-pending frames held, also while a batch waits to fill
        assert set(details) == {"server busy: 2 frames pending (limit 2)"}, details
        assert rss_mb(server.proc.pid) - idle < OVERLOAD_CEILING_MB
        assert stub.Infer(pb.InferRequest(frame_id=99, bitstream=small_frames[0]), timeout=60).frame_id == 99
        refused = server.scrape()[("icmh_refused_total", (("reason", "overloaded"),))]
        assert refused == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    finally:
        assert server.stop() == 0


def test_a_soak_of_thousands_of_frames_keeps_both_processes_flat():
    server = ServerProcess("--tasks", "human", codec=TINY)
    try:
        edge = _edge("--demo", "--demo-size", "64x48", "--frames", str(SOAK_FRAMES), "--window", "8", "--task",
                     "human", *TINY, "--server", f"127.0.0.1:{server.port}", "--output", os.devnull)
        answered = lambda: server.scrape().get(("icmh_requests_total", (("code", "OK"), ("task", "human"))), 0)
        wait_until(lambda: answered() >= SOAK_WARMUP, timeout=600, what=f"{SOAK_WARMUP} frames")
        early = (rss_mb(server.proc.pid), rss_mb(edge.pid))
        wait_until(lambda: answered() >= SOAK_FRAMES - 50, timeout=1200, what=f"{SOAK_FRAMES} frames")
        late = (rss_mb(server.proc.pid), rss_mb(edge.pid))
        _, err = edge.communicate(timeout=300)
        assert edge.returncode == 0, err
        assert f"{SOAK_FRAMES} answered, 0 with errors" in err
        for who, before, after in zip(("server", "edge"), early, late):
            assert after - before < SOAK_SLOPE_MB, f"{who} grew {after - before:.1f} MB over " \
                                                   f"{SOAK_FRAMES - SOAK_WARMUP} frames"
    finally:
        assert server.stop() == 0
