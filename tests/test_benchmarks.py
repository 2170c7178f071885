"""The benchmarks run end to end and report figures that hang together (no timing asserted)."""

from __future__ import annotations

import json

from icmh.cli.main import main

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]


def _report(capsys, argv) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_serve_sweeps_configs_and_streams_against_the_in_process_pipeline(capsys):
    report = _report(capsys, ["bench", "serve", "--task", "human", *TINY, "--streams", "1,2", "--seconds", "1.5",
                              "--warmup", "0.5", "--frames", "2", "--configs", "batch=2,workers=1,wait_ms=5"])
    assert report["in_process_fps"] > 0
    points = report["points"]
    assert [(p["config"], p["streams"]) for p in points] == [("batch=2,workers=1,wait_ms=5", 1),
                                                             ("batch=2,workers=1,wait_ms=5", 2)]
    for point in points:
        assert point["frames"] > 0 and point["fps"] > 0
        assert point["p50_ms"] <= point["p90_ms"] <= point["p99_ms"]
        assert abs(point["vs_in_process"] - point["fps"] / report["in_process_fps"]) < 1e-9
        assert point["server_rss_mb"] > 50


def test_bench_serve_refuses_unknown_config_keys(capsys):
    assert main(["bench", "serve", *TINY, "--configs", "batch=2,gpus=3"]) == 2
    assert "bad --configs entry 'batch=2,gpus=3'" in capsys.readouterr().err
