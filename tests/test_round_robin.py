"""Client-side scale-out on loopback: round-robin over three cloud-server processes, several
streams, a server stopped mid-run, and a maximum connection age that cuts long streams."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Iterator

from icmh.edge.metrics import EdgeMetrics
from icmh.edge.streaming import FrameStreamer
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.codec.frame_codec import EncodedFrame
from icmh.tasks import Task

from conftest import smooth_image
from server_process import ROOT, ServerProcess, start_servers, stop_servers

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]
OK_HUMAN = ("icmh_requests_total", (("code", "OK"), ("task", "human")))


def _answered(server: ServerProcess) -> float:
    return server.scrape().get(OK_HUMAN, 0.0)


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_streams_spread_over_three_servers_and_one_stopping_loses_no_frame(tmp_path):
    frames = 20
    servers = start_servers(*[["--tasks", "human", "--grace", "1"]] * 3)
    out = tmp_path / "results.jsonl"
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
    edge = subprocess.Popen(
        [sys.executable, "-m", "icmh.edge.cli", "--demo", "--frames", str(frames), "--task", "human", *TINY,
         "--random-weights", "--server", target, "--streams", "3", "--window", "2", "--output", str(out)],
        cwd=ROOT, env=dict(os.environ, ICMH_OFFLINE="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while min(_answered(server) for server in servers) == 0:  # every server has answered a frame
            assert edge.poll() is None and time.monotonic() < deadline, "the streams did not reach every server"
            time.sleep(0.1)
        assert _lines(out) < frames, "the run ended before a server could be stopped"
        assert servers[0].stop() == 0  # SIGTERM mid-run: drains, its streams break, the client resends elsewhere
        _, err = edge.communicate(timeout=180)
        assert edge.returncode == 0, err
        ids = [json.loads(line)["frame_id"] for line in out.read_text().splitlines()]
        assert ids == list(range(frames)), ids  # every frame exactly once, in frame order
        assert f"{frames} answered, 0 with errors" in err
        assert sum(_answered(server) for server in servers[1:]) > 0
    finally:
        edge.kill()
        stop_servers(servers)


def _paced(frames: list, count: int, interval: float) -> Iterator[EncodedFrame]:
    """A source of ``count`` frames, one every ``interval`` seconds (a camera, without drops)."""
    for index in range(count):
        time.sleep(interval)
        yield frames[index % len(frames)]


def test_max_connection_age_cuts_long_streams_and_the_client_loses_no_frame():
    server = ServerProcess("--tasks", "human", "--max-connection-age", "1", "--max-connection-age-grace", "1")
    try:
        codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True))
        encoded = codec.encode([smooth_image(64, 96, seed) for seed in range(2)], Task.HUMAN)
        answered = []
        streamer = FrameStreamer(f"127.0.0.1:{server.port}", window=2, live=False, metrics=EdgeMetrics(),
                                 task="human", on_result=lambda outcome: answered.append(outcome.frame_id))
        started = time.monotonic()
        stats = asyncio.run(asyncio.wait_for(streamer.run(_paced(encoded, 40, 0.1)), 120))
        assert time.monotonic() - started > 3  # the stream outlived several connection ages
        assert answered == list(range(40)) and stats.answered == 40 and stats.errors == 0
        assert stats.reconnects >= 1  # the server closed the connection under the stream at least once
    finally:
        assert server.stop() == 0
