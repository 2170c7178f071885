"""The benchmarks run end to end and report figures that hang together (no timing asserted)."""

from __future__ import annotations

import json

import torch

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


def test_bench_codec_reports_every_path_ratios_and_the_camera_batch(capsys):
    report = _report(capsys, ["bench", "codec", *TINY, "--random-adapters", "--images", "1", "--repeats", "1",
                              "--paths", "eager"])
    times = report["codec_ms"]
    assert set(times) == {"stock", "eager/human", "eager/detection"}
    assert all(t["encode_ms"] > 0 and t["decode_ms"] > 0 and t["bpp"] > 0 for t in times.values())
    ratios = report["ratios"]
    assert abs(ratios["adapters_vs_base_encode"]
               - times["eager/detection"]["encode_ms"] / times["eager/human"]["encode_ms"]) < 1e-9
    assert report["adapters"] == "random init (timing only)"
    assert set(report["fps"]) == {"640x480", "1280x720"}
    cameras = report["camera_batching"]
    assert cameras["cameras"] == 2 and cameras["batched_ms"] > 0
    assert abs(cameras["speedup"] - cameras["one_by_one_ms"] / cameras["batched_ms"]) < 1e-9
    macs = report["encoder_macs_per_pixel"]
    assert macs["base"] > 0 and macs["adapters"] > 0
    # the floor: the encoder adapters' MACs at the fastest measured matmul rate plus their FFT pairs, on the base path
    width, height = map(int, report["size"].split("x"))
    floor = report["adapter_floor_ms"]
    macs_ms = macs["adapters"] * width * height / max(report["matmul_gmac_per_s"].values()) / 1e6
    assert abs(floor["encoder"]["macs_ms"] - macs_ms) < 1e-9
    # SFMA: one frequency branch per adapter, at least one adapter on each side
    assert floor["encoder"]["fft_ms"] > 0 and floor["decoder"]["fft_ms"] > 0
    assert abs(ratios["adapters_floor_encode"]
               - (1 + (macs_ms + floor["encoder"]["fft_ms"]) / times["eager/human"]["encode_ms"])) < 1e-9
    assert 1 < ratios["adapters_floor_decode"]


def test_the_floor_times_one_fft_pair_per_frequency_branch_at_its_real_shape():
    from icmh.cli.commands.bench_floor import spectral_inputs
    from icmh.codec.loader import CodecOptions, open_frame_codec
    from icmh.tasks import Task

    frame_codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True))
    frame_codec.add_random_adapters(Task.DETECTION, 0)
    inputs = spectral_inputs(frame_codec, Task.DETECTION, torch.rand(3, 64, 96))
    adapter_set = frame_codec.codec.adapter_set(Task.DETECTION)
    assert [len(inputs[side]) for side in ("encoder", "decoder")] == [len(adapter_set.encoder), len(adapter_set.decoder)]
    mid_dim = adapter_set.config.mid_dim
    assert all(u.shape[:2] == (1, mid_dim) for side in inputs.values() for u in side)
    # the encoder's adapters sit after its down-sampling stages: their spectra shrink, never grow
    sizes = [u.shape[-1] * u.shape[-2] for u in inputs["encoder"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < 64 * 96
