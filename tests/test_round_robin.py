"""Client-side scale-out on loopback: round-robin over three servers, several streams, a server
stopped mid-run, and a maximum connection age that cuts long streams.

The servers run in this process (:class:`support.InProcessServer`): stopping one drains it as
SIGTERM would; the signal itself is tested in ``test_service.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Iterator

from icmh.cloud.metrics import CloudMetrics
from icmh.codec.frame_codec import EncodedFrame
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.edge.metrics import EdgeMetrics
from icmh.edge.streaming import FrameStreamer
from icmh.tasks import Task

from server_process import ROOT
from support import InProcessServer, server_config, smooth_image, wait_until

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]


def _answered(server: InProcessServer) -> float:
    """Frames the server answered OK."""
    return server.value("icmh_requests_total", code="OK", task="human")


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_streams_spread_over_three_servers_and_one_stopping_loses_no_frame(tmp_path):
    frames = 20
    servers = [InProcessServer(server_config([Task.HUMAN], grace_seconds=1)) for _ in range(3)]
    out = tmp_path / "results.jsonl"
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
    edge = subprocess.Popen(
        [sys.executable, "-m", "icmh.edge.cli", "--demo", "--frames", str(frames), "--task", "human", *TINY,
         "--random-weights", "--server", target, "--streams", "3", "--window", "2", "--output", str(out)],
        cwd=ROOT, env=dict(os.environ, ICMH_OFFLINE="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: edge.poll() is not None or min(map(_answered, servers)) > 0, 120,
                   "every server answered a frame")
        assert edge.poll() is None, "the edge client ended before every server had answered"
        assert _lines(out) < frames, "the run ended before a server could be stopped"
        assert servers[0].stop() == 0  # drained mid-run: its streams break, the client resends elsewhere
        _, err = edge.communicate(timeout=180)
        assert edge.returncode == 0, err
        ids = [json.loads(line)["frame_id"] for line in out.read_text().splitlines()]
        assert ids == list(range(frames)), ids  # every frame exactly once, in frame order
        assert f"{frames} answered, 0 with errors" in err
        assert sum(_answered(server) for server in servers[1:]) > 0
    finally:
        edge.kill()
        for server in servers:
            server.stop()


def _paced(frames: list, count: int, interval: float) -> Iterator[EncodedFrame]:
    """A source of ``count`` frames, one every ``interval`` seconds (a camera, without drops).

    The pace is the behaviour under test: the stream must outlive the connection age.
    """
    for index in range(count):
        time.sleep(interval)
        yield frames[index % len(frames)]


class StreamCountingMetrics(CloudMetrics):
    """The server's metrics, also counting every StreamInfer call the server opened."""

    streams = 0

    def active_stream(self):
        self.streams += 1
        return super().active_stream()


def test_max_connection_age_cuts_long_streams_and_the_client_loses_no_frame():
    metrics = StreamCountingMetrics()
    server = InProcessServer(server_config([Task.HUMAN], max_connection_age=1, max_connection_age_grace=1),
                             metrics=metrics)
    try:
        codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True))
        encoded = codec.encode([smooth_image(64, 96, seed) for seed in range(2)], Task.HUMAN)
        answered = []
        streamer = FrameStreamer(f"127.0.0.1:{server.port}", window=2, live=False, metrics=EdgeMetrics(),
                                 task="human", on_result=lambda outcome: answered.append(outcome.frame_id))
        stats = asyncio.run(asyncio.wait_for(streamer.run(_paced(encoded, 40, 0.1)), 120))
        assert answered == list(range(40)) and stats.answered == 40 and stats.errors == 0
        # the server cut the connection under the stream: the client opened another stream on a new one
        assert stats.reconnects >= 1 and metrics.streams >= 2, (stats.reconnects, metrics.streams)
        assert _answered(server) >= 40
    finally:
        assert server.stop() == 0
