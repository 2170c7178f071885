"""The fast edge encoder: fused adapters equal the method's SFMA, every encoder path decodes exactly.

* The fused adapters (one down-projection, one up-projection, channels-last, in place
  without gradients) compute the SFMA of METHOD.md written out plainly below, in eval and
  in training mode, with the same gradients; their parameters are untouched.
* Frames from every encoder path (``eager``, ``compiled``, ``int8``) decode with the
  standard decoder to exactly the latent the encoder quantised: in one process, and across
  processes and thread counts (1 and 2), with the bundled trained ``mbt2018-mean-tiny``.
"""

from __future__ import annotations

import json
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from icmh.cli.common import add_codec_options, codec_options
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.weights import load_base_codec
from icmh.errors import InvalidInputError
from icmh.images import load_image, save_image
from icmh.models.adapted import AdaptedCodec, AdapterConfig
from icmh.models.adapters import build_adapter
from icmh.models.complexity import measure
from icmh.codec.loader import calibration_images, calibration_source
from icmh.models.encoder_paths import (ENCODER_PATHS, build_analysis, calibration_crops, output_convolutions,
                                      synthetic_images)
from icmh.models.registry import get_codec
from icmh.tasks import Task

from support import smooth_image
from test_exact_decoding import require_tiny_weights, run_worker, wait_all

TINY = ("mbt2018-mean-tiny", 1)
CHANNELS_LAST = torch.channels_last


# -- the SFMA of METHOD.md, written out plainly ----------------------------------------------
def _conv(x: torch.Tensor, layer: torch.nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, layer.weight, layer.bias, padding=layer.padding, groups=layer.groups)


def reference_sma(sma, x: torch.Tensor) -> torch.Tensor:
    a = _conv(_conv(x, sma.down_a), sma.dw)
    b = _conv(x, sma.down_b)
    return _conv(F.relu(a * b), sma.up)


def reference_fma(fma, x: torch.Tensor) -> torch.Tensor:
    u = _conv(x, fma.down)
    spectrum = torch.fft.rfft2(u, dim=(-2, -1), norm="backward")
    gate = torch.sigmoid(_conv(F.relu(_conv(spectrum.abs(), fma.dw)), fma.mix))
    filtered = torch.fft.irfft2(spectrum * gate, s=u.shape[-2:], dim=(-2, -1), norm="backward")
    return _conv(F.relu(filtered), fma.up)


def reference_plain(plain, x: torch.Tensor) -> torch.Tensor:
    return _conv(F.relu(_conv(x, plain.down)), plain.up)


REFERENCE = {"sma": reference_sma, "fma": reference_fma, "plain": reference_plain}


def reference_adapter(adapter, x: torch.Tensor) -> torch.Tensor:
    """``x + SMA(x) + FMA(x)`` (or the variant's branches), each branch on the same ``x``."""
    out = x
    for name, branch in adapter.branches.items():
        out = out + REFERENCE[name](branch, x)
    return out


def random_adapter(variant: str = "sfma", channels: int = 32, mid_dim: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    adapter = build_adapter(variant, channels, mid_dim, init="authors")
    with torch.no_grad():  # non-zero biases everywhere, so that a bias summed or dropped shows
        for parameter in adapter.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return adapter


def features(channels: int = 32, height: int = 19, width: int = 26, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


# -- fused adapters ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["sfma", "sma", "fma", "plain"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CHANNELS_LAST])
def test_fused_adapter_equals_the_method_formulation_in_eval_mode(variant, memory_format):
    adapter = random_adapter(variant).eval()
    x = features().contiguous(memory_format=memory_format)
    before = x.clone()
    with torch.no_grad():
        expected = reference_adapter(adapter, x)
        actual = adapter(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, before), "the in-place residual must not touch the input"
    assert actual.is_contiguous(memory_format=memory_format), "the output keeps the input's memory layout"


@pytest.mark.parametrize("variant", ["sfma", "sma", "fma", "plain"])
def test_fused_adapter_has_the_method_gradients_in_training_mode(variant):
    adapter = random_adapter(variant).train()
    reference = random_adapter(variant).train()
    reference.load_state_dict(adapter.state_dict())
    x = features(batch=2).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    (adapter(x) * target).sum().backward()
    (reference_adapter(reference, x_ref) * target).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, parameter), (_, expected) in zip(adapter.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(parameter.grad, expected.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_fused_adapter_trains_under_bfloat16_autocast():
    adapter = random_adapter().train()
    x = features().contiguous(memory_format=CHANNELS_LAST)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adapter(x)
        expected = reference_adapter(adapter, x)
    torch.testing.assert_close(out.float(), expected.float(), rtol=0.05, atol=0.05)
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter.parameters())


def test_inference_cache_follows_weight_changes():
    adapter = random_adapter().eval()
    x = features()
    with torch.no_grad():
        adapter(x)  # fills the cache of concatenated weights
        adapter.branches["sma"].up.weight.mul_(2)  # in place: the version counter moves
        torch.testing.assert_close(adapter(x), reference_adapter(adapter, x), rtol=1e-5, atol=1e-5)
        adapter.load_state_dict(random_adapter(seed=3).state_dict())
        torch.testing.assert_close(adapter(x), reference_adapter(adapter, x), rtol=1e-5, atol=1e-5)


def test_zero_initialised_fused_adapter_is_exactly_the_identity_in_channels_last():
    x = features(channels=128).contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        assert torch.equal(build_adapter("sfma", 128, 64)(x), x)


def test_state_dict_keeps_the_separate_layers_and_the_method_parameter_count():
    adapter = random_adapter(channels=128, mid_dim=64).eval()
    with torch.no_grad():
        adapter(features(channels=128))  # a cached fusion must not show up in the state dict
    layers = {"sma": {"down_a": (64, 128), "dw": (64, 1, 5, 5), "down_b": (64, 128), "up": (128, 64)},
              "fma": {"down": (64, 128), "dw": (64, 1, 3, 3), "mix": (64, 64), "up": (128, 64)}}
    expected = {}
    for branch, convs in layers.items():
        for conv, shape in convs.items():
            expected[f"branches.{branch}.{conv}.weight"] = shape if len(shape) == 4 else (*shape, 1, 1)
            expected[f"branches.{branch}.{conv}.bias"] = (shape[0],)
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == expected
    assert sum(p.numel() for p in adapter.parameters()) == 287_232 // 6


def test_mac_counting_still_sees_every_adapter_layer():
    spec = get_codec("mbt2018-mean")
    codec = AdaptedCodec(spec.build(3), spec, 3)
    codec.add_adapters(Task.DETECTION, AdapterConfig("sfma", 64))
    added = measure(codec, Task.DETECTION).adapter_macs_per_pixel["encoder"]
    assert round(added / 1e3, 1) == 14.7  # METHOD.md: SFMA d=64 adds 14.7 KMAC/pixel to the encoder


# -- encoder paths ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_images() -> List[torch.Tensor]:
    return [smooth_image(128, 192, seed, cell=(24, 8)[seed % 2]) for seed in range(2)] + [smooth_image(192, 128, 5, 6)]


@pytest.fixture(scope="module")
def decoder() -> FrameCodec:
    require_tiny_weights()
    frame_codec = FrameCodec(load_base_codec(*TINY))
    frame_codec.add_random_adapters(Task.DETECTION)
    return frame_codec


@pytest.fixture(scope="module")
def encoders() -> Dict[str, FrameCodec]:
    require_tiny_weights()
    calibration = synthetic_images(count=2, size=128)
    out = {}
    for path in ENCODER_PATHS:
        out[path] = FrameCodec(load_base_codec(*TINY), encoder_path=path, calibration=calibration)
        out[path].add_random_adapters(Task.DETECTION)
    return out


@pytest.mark.parametrize("task", [Task.HUMAN, Task.DETECTION])
@pytest.mark.parametrize("path", ENCODER_PATHS)
def test_every_encoder_path_decodes_exactly_with_the_standard_decoder(encoders, decoder, tiny_images, path, task):
    frames = encoders[path].encode(tiny_images, task, keep_latents=True)
    decoded = decoder.decode([frame.data for frame in frames])
    for frame, result, image in zip(frames, decoded, tiny_images):
        assert torch.equal(result.y_hat, frame.y_hat)
        assert result.image.shape == image.shape


@pytest.mark.parametrize("task", [Task.HUMAN, Task.DETECTION])
def test_compiled_path_computes_the_eager_latent_and_int8_a_close_one(encoders, tiny_images, task):
    x = torch.stack(tiny_images[:2])
    latents = {}
    for path, frame_codec in encoders.items():
        with frame_codec.codec.use(task), torch.no_grad():
            latents[path] = frame_codec.analysis(task)(x)
    eager = latents["eager"]
    relative = {path: ((y - eager).norm() / eager.norm()).item() for path, y in latents.items()}
    assert relative["compiled"] < 1e-5, relative
    assert 0 < relative["int8"] < 0.1, relative  # 8-bit: close, not equal


def test_analysis_is_rebuilt_when_the_adapters_change(encoders, tiny_images):
    frame_codec = encoders["compiled"]
    first = frame_codec.encode(tiny_images[:1], Task.DETECTION, keep_latents=True)[0]
    adapter_set = frame_codec.codec.adapter_set(Task.DETECTION)
    with torch.no_grad():
        adapter_set.encoder[0].branches["sma"].up.weight.mul_(3)
    eager = encoders["eager"]
    eager.codec.adapter_set(Task.DETECTION).load_state_dict(adapter_set.state_dict())
    second = frame_codec.encode(tiny_images[:1], Task.DETECTION, keep_latents=True)[0]
    reference = eager.encode(tiny_images[:1], Task.DETECTION, keep_latents=True)[0]
    assert not torch.equal(first.y_hat, second.y_hat)
    assert (second.y_hat - reference.y_hat).abs().max() <= 1  # same adapters: the same latent up to rounding


def test_unknown_encoder_path_is_one_line_error():
    with pytest.raises(InvalidInputError, match="unknown encoder path 'fast'") as info:
        FrameCodec(load_base_codec(*TINY), encoder_path="fast")
    assert "\n" not in str(info.value)


def test_onnx_paths_refuse_a_gpu_device():
    with pytest.raises(InvalidInputError, match="runs on the CPU"):
        FrameCodec(load_base_codec(*TINY), device="cuda", encoder_path="int8")


def test_int8_path_without_calibration_images_is_refused():
    codec = load_base_codec(*TINY).model
    with pytest.raises(InvalidInputError, match="calibration"):
        build_analysis("int8", codec.g_a, None, calibration=[])


def test_int8_keeps_the_convolutions_that_leave_a_segment_in_float(encoders):
    import onnx
    analysis = encoders["int8"].analysis(Task.DETECTION)
    assert len(analysis.segments) > 1  # adapters: the FFT steps split g_a into segments
    for segment in analysis.segments:
        graph = onnx.load_from_string(segment.model).graph
        producers = {out: node for node in graph.node for out in node.output}
        kept = output_convolutions(segment.model)
        assert kept, "every segment ends in a convolution"
        for name in kept:  # its weights are plain float initialisers, not dequantised int8
            node = next(node for node in graph.node if node.name == name)
            assert node.input[1] not in producers, name
        quantised = [node for node in graph.node if node.op_type == "Conv" and node.name not in kept]
        assert all(producers[node.input[1]].op_type == "DequantizeLinear" for node in quantised)
    assert any(node.op_type == "Conv" and node.name not in output_convolutions(segment.model)
               for segment in analysis.segments for node in onnx.load_from_string(segment.model).graph.node)


def test_int8_quantisation_prints_nothing(capsys):
    codec = load_base_codec(*TINY).model
    build_analysis("int8", codec.g_a, None, calibration=synthetic_images(count=1, size=64))
    out, _ = capsys.readouterr()
    assert out == ""  # ORT's percentile calibrator prints its histograms: kept off the CLI's output


def test_calibration_crops_are_centred_multiples_of_64(tmp_path):
    image = smooth_image(200, 300, 1)
    save_image(image, tmp_path / "a.png")
    save_image(smooth_image(40, 300, 2), tmp_path / "small.png")
    crops = calibration_crops([tmp_path / "a.png"], size=256)
    assert [tuple(crop.shape) for crop in crops] == [(1, 3, 192, 256)]
    stored = load_image(tmp_path / "a.png")
    assert torch.equal(crops[0][0], stored[:, 4:196, 22:278])
    with pytest.raises(InvalidInputError, match="smaller than 64"):
        calibration_crops([tmp_path / "small.png"])


def test_int8_calibration_comes_from_training_images_only(tmp_path, monkeypatch):
    save_image(smooth_image(128, 128, 3), tmp_path / "photo.png")
    crops = calibration_images("int8", str(tmp_path))
    assert len(crops) == 1 and crops[0].shape == (1, 3, 128, 128)
    assert calibration_images("compiled", str(tmp_path)) == []  # only the int8 path calibrates
    with pytest.raises(InvalidInputError, match="evaluation set"):
        calibration_images("int8", "kodak")
    monkeypatch.setenv("ICMH_DATA_DIR", str(tmp_path / "no-data"))  # no training photos: the synthetic images
    assert calibration_source("int8", None) is None and calibration_images("int8", None) == []
    data = tmp_path / "data"
    save_image(smooth_image(64, 64, 4), data / "bsds500-train" / "a.png")
    monkeypatch.setenv("ICMH_DATA_DIR", str(data))  # training photos present: they are the default
    assert calibration_source("int8", None) == "bsds500-train"
    assert [crop.shape for crop in calibration_images("int8", None)] == [(1, 3, 64, 64)]


def test_encoder_flag_reaches_the_codec_options():
    import argparse
    parser = argparse.ArgumentParser()
    add_codec_options(parser)
    assert codec_options(parser.parse_args(["--encoder", "int8"])).encoder_path == "int8"
    assert codec_options(parser.parse_args([])).encoder_path == "eager"
    assert codec_options(parser.parse_args(["--calibration", "bsds500-train"])).calibration == "bsds500-train"
    assert codec_options(parser.parse_args([])).calibration is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--encoder", "fast"])


# -- across processes and thread counts -------------------------------------------------------
ROUND_TRIPS = [  # (encoder path, task, encoder threads, decoder threads)
    ("compiled", "detection", 1, 2),
    ("int8", "detection", 2, 1),
]


@pytest.fixture(scope="module")
def cross_process(tmp_path_factory) -> Dict[str, Dict[str, object]]:
    """Encode in one process per case, decode in another with the other thread count."""
    require_tiny_weights()
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for seed in range(3):
        path = folder / f"image{seed}.png"
        save_image(smooth_image(128, 192, seed, cell=(24, 8, 4)[seed]), path)
        paths.append(str(path))
    work = {}
    for case in ROUND_TRIPS:
        work[case] = tmp_path_factory.mktemp("-".join(map(str, case)))
        (work[case] / "manifest.json").write_text(json.dumps(paths))
    wait_all({f"encode {case}": run_worker(["encode", "--work", str(work[case]), "--task", case[1],
                                            "--threads", str(case[2]), "--encoder-path", case[0],
                                            "--manifest", str(work[case] / "manifest.json")])
              for case in ROUND_TRIPS})
    wait_all({f"decode {case}": run_worker(["decode", "--work", str(work[case]), "--task", case[1],
                                            "--threads", str(case[3]), "--batch", "3"])
              for case in ROUND_TRIPS})
    return {case: {name: load_file(str(work[case] / f"{name}_y_hat.safetensors")) for name in ("encoder", "decoder")}
            | {"report": json.loads((work[case] / "encoder.json").read_text())} for case in ROUND_TRIPS}


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=lambda case: "-".join(map(str, case)))
def test_frames_of_every_encoder_path_decode_exactly_in_another_process(cross_process, case):
    result = cross_process[case]
    assert result["report"]["encoder_path"] == case[0] and result["report"]["threads"] == case[2]
    encoder, decoder = result["encoder"], result["decoder"]
    assert sorted(encoder) == sorted(decoder) and len(encoder) == 3
    for key, y_hat in encoder.items():
        assert torch.equal(decoder[key], y_hat), key
        assert y_hat.abs().sum() > 0
