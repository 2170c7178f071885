"""edge-client streaming to a real cloud-server on loopback: results, reconnects, errors.

The servers run in this process (:class:`support.InProcessServer`) except where one is killed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from icmh.tasks import Task

from server_process import ROOT, ServerProcess, free_port
from support import InProcessServer, server_config, smooth_image, wait_until

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]


def _edge(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "icmh.edge.cli", *argv], cwd=ROOT,
                            env=dict(os.environ, ICMH_OFFLINE="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _results(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stream_of_an_image_folder_gets_one_result_per_frame_in_order(tmp_path, kodak_dir):
    server = InProcessServer(server_config([Task.HUMAN]))
    try:
        out = tmp_path / "results.jsonl"
        edge = _edge("--images", str(kodak_dir), "--frames", "5", "--task", "human", *TINY, "--random-weights",
                     "--server", f"127.0.0.1:{server.port}", "--output", str(out))
        _, err = edge.communicate(timeout=300)
        assert edge.returncode == 0, err
        results = _results(out)
        assert [r["frame_id"] for r in results] == list(range(5))
        assert all("result" in r and r["result"]["task"] == "human" for r in results)
        assert "5 answered, 0 with errors, 0 dropped" in err
        assert "round trip p50" in err
    finally:
        assert server.stop() == 0


def test_server_killed_and_restarted_mid_stream_loses_no_frame(tmp_path):
    port = free_port()
    server = ServerProcess("--tasks", "human", port=port)
    out = tmp_path / "results.jsonl"
    edge = _edge("--demo", "--frames", "12", "--window", "2", "--task", "human", *TINY, "--random-weights",
                 "--server", f"127.0.0.1:{port}", "--output", str(out))
    try:
        wait_until(lambda: edge.poll() is not None or (out.exists() and len(out.read_text().splitlines()) >= 3), 200,
                   "3 frames answered")
        assert edge.poll() is None, "the edge client ended before the server was killed"
        server.kill()  # returns once the process is gone: its port is closed
        server = ServerProcess("--tasks", "human", port=port)
        _, err = edge.communicate(timeout=300)
        assert edge.returncode == 0, err
        ids = [r["frame_id"] for r in _results(out)]
        assert sorted(ids) == list(range(12)) and len(ids) == 12, ids  # every frame exactly once
        reconnects = re.search(r"(\d+) reconnects", err)
        assert reconnects and int(reconnects.group(1)) > 0, err
    finally:
        edge.kill()
        server.stop()


def test_unreachable_server_and_unknown_task_are_one_line_errors():
    for argv, fragment in ((["--server", f"127.0.0.1:{free_port()}", "--connect-timeout", "1", "--task", "human"],
                            "cannot reach the cloud server"),
                           (["--server", "127.0.0.1:1", "--task", "juggling"], "unknown task 'juggling'")):
        edge = _edge("--demo", "--frames", "1", *TINY, *argv)
        _, err = edge.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert edge.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


def test_live_source_drops_the_oldest_unsent_frames_when_the_window_is_full():
    import asyncio

    from icmh.codec.loader import CodecOptions, open_frame_codec
    from icmh.edge.metrics import EdgeMetrics
    from icmh.edge.streaming import FrameStreamer

    server = InProcessServer(server_config([Task.HUMAN]))
    try:
        codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True))
        encoded = codec.encode([smooth_image(360, 640, seed) for seed in range(2)], Task.HUMAN)
        frames = iter([encoded[i % 2] for i in range(40)])  # a camera far faster than the server
        answered = []
        streamer = FrameStreamer(f"127.0.0.1:{server.port}", window=1, live=True, metrics=EdgeMetrics(),
                                 task="human", on_result=lambda outcome: answered.append(outcome.frame_id))
        stats = asyncio.run(streamer.run(frames))
        assert stats.dropped > 0 and stats.answered == len(answered) == 40 - stats.dropped
        assert answered == sorted(answered) and answered[-1] == 39  # the newest frame is never dropped
    finally:
        server.stop()


def test_without_server_the_user_command_streams_to_icmh_server_and_prints_results(tmp_path, data_dir):
    """The design card's words, ``edge-client --images DIR --task detection``, with no --server: $ICMH_SERVER."""
    folder = data_dir / "coco-mini" / "val2017"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (set ICMH_DATA_DIR)")
    server = InProcessServer(server_config([Task.DETECTION]))
    try:
        out = tmp_path / "results.jsonl"
        annotated = tmp_path / "annotated"
        edge = subprocess.Popen(
            [sys.executable, "-m", "icmh.edge.cli", "--images", str(folder), "--frames", "2", "--task", "detection",
             *TINY, "--random-weights", "--output", str(out), "--annotate", str(annotated)],
            cwd=ROOT, env=dict(os.environ, ICMH_OFFLINE="1", ICMH_SERVER=f"127.0.0.1:{server.port}"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, err = edge.communicate(timeout=300)
        assert edge.returncode == 0, err
        lines = [line.strip() for line in stdout.splitlines() if line.strip().startswith("frame")]
        assert len(lines) == 2 and all(re.search(r" B +\d\.\d{4} bpp +round trip +[\d.]+ ms +\[", x) for x in lines)
        assert [r["frame_id"] for r in _results(out)] == [0, 1]
        assert sorted(p.name for p in annotated.iterdir()) == ["frame_000000.png", "frame_000001.png"]
    finally:
        assert server.stop() == 0


def test_without_a_camera_the_user_command_says_only_that(tmp_path):
    edge = _edge("--camera", "7", "--task", "detection", *TINY)
    _, err = edge.communicate(timeout=120)
    assert edge.returncode == 2
    assert err.strip().splitlines() == ["error: camera 7 could not be opened"]
