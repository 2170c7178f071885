"""Importance-map bit allocation and task prompts (``icmh.models.importance``), on the real tiny codec.

The bundled ``mbt2018-mean-tiny`` q1 weights with seeded random SFMA adapters; the selector's
level map is forced through its ``override`` hook where a test needs a known map.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from icmh.cli.main import main
from icmh.codec.adapter_checkpoint import read_adapters, save_adapters
from icmh.codec.bitstream import IMPORTANCE_FLAG, pack_frame, parse_frame
from icmh.codec.frame_codec import FrameCodec, importance_levels
from icmh.codec.weights import load_base_codec
from icmh.errors import BitstreamError
from icmh.models.adapted import AdapterConfig
from icmh.models.importance import level_gains
from icmh.tasks import Task

from support import smooth_image

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "importance_worker.py"
CODEC, QUALITY = "mbt2018-mean-tiny", 1
TASK = Task.DETECTION
SEED = 3


def _codec(**options) -> FrameCodec:
    frame_codec = FrameCodec(load_base_codec(CODEC, QUALITY))
    frame_codec.add_random_adapters(TASK, seed=SEED, config=AdapterConfig(init="authors", **options))
    return frame_codec


def _image(height: int = 128, width: int = 128, seed: int = 1) -> torch.Tensor:
    return smooth_image(height, width, seed=seed, cell=8)


def _save_png(image: torch.Tensor, path: Path) -> Path:
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    return path


def _bits_per_position(frame_codec: FrameCodec, image: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``−log2 p`` of every coded latent element summed over channels (h×w on the y grid), from the
    likelihoods of the Gaussian conditional under the importance quantiser of ``levels``."""
    base = frame_codec.codec.base
    with torch.no_grad(), frame_codec.codec.use(TASK):
        y = base.g_a(image[None])
        z_hat, _ = base.entropy_bottleneck(base.h_a(y), training=False)
        scales, means = base.h_s(z_hat).chunk(2, 1)
        gains = level_gains(levels).float()
        _, likelihoods = base.gaussian_conditional(y * gains, scales * gains, means=means * gains, training=False)
    return -torch.log2(likelihoods)[0].sum(0)


def test_all_zero_map_leaves_frames_byte_identical():
    image = _image(128, 192)
    plain = _codec().encode([image], TASK, keep_latents=True)[0]
    with_option = _codec(importance=True)
    assert with_option.codec.adapter_hash(TASK) == _codec().codec.adapter_hash(TASK)
    new = with_option.encode([image], TASK, keep_latents=True)[0]  # a new selector: level 0 everywhere
    with_option.codec.adapter_set(TASK).importance.override = torch.zeros(2, 3, dtype=torch.int64)
    forced = with_option.encode([image], TASK, keep_latents=True)[0]
    assert new.data == plain.data and forced.data == plain.data
    assert torch.equal(forced.y_hat, plain.y_hat)
    assert plain.data[4:6] == bytes([1, 0])  # format 1, no flags: as written before the option existed


def test_concentrated_map_spends_more_bits_in_its_region():
    frame_codec = _codec(importance=True)
    image = _image(128, 128, seed=4)
    zero = torch.zeros(1, 2, 2, dtype=torch.int64)
    hot = zero.clone()
    hot[0, 0, 0] = 3  # the top-left 64×64 block: a quantiser 2^1.5 finer there
    before = _bits_per_position(frame_codec, image, zero[0])
    after = _bits_per_position(frame_codec, image, hot[0])
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:4, :4] = True
    assert after[region].sum() > 1.5 * before[region].sum()  # ≈ 1.5 bits more per element (log2 2^1.5)
    assert torch.equal(after[~region], before[~region])  # same scales and quantiser outside the block

    selector = frame_codec.codec.adapter_set(TASK).importance
    plain = frame_codec.encode([image], TASK)[0]
    selector.override = hot
    frame = frame_codec.encode([image], TASK, keep_latents=True)[0]
    parsed = parse_frame(frame.data)
    assert parsed.header.importance and frame.data[4:6] == bytes([3, IMPORTANCE_FLAG])
    assert len(parsed.strings) == 3 and len(parsed.strings[0]) > len(parse_frame(plain.data).strings[0])
    assert torch.equal(importance_levels(parsed, selector.level_cdf), hot[0])
    decoded = frame_codec.decode([frame.data])[0]
    assert torch.equal(decoded.y_hat, frame.y_hat)


def test_frame_with_a_map_is_refused_without_its_string():
    frame_codec = _codec(importance=True)
    frame_codec.codec.adapter_set(TASK).importance.override = torch.full((1, 1), 2)
    frame = parse_frame(frame_codec.encode([_image(64, 64)], TASK)[0].data)
    with pytest.raises(BitstreamError, match="with an importance map have 3"):
        frame_codec.parse(pack_frame(frame.header, list(frame.strings[:2])))


def test_importance_frames_decode_exactly_in_another_process(tmp_path):
    images = [_save_png(_image(128, 192, seed=7), tmp_path / "a.png"),
              _save_png(_image(96, 160, seed=8), tmp_path / "b.png"),
              _save_png(_image(128, 192, seed=9), tmp_path / "c.png")]
    (tmp_path / "manifest.json").write_text(json.dumps([str(p) for p in images]))
    for mode, extra in (("encode", ["--manifest", str(tmp_path / "manifest.json")]), ("decode", [])):
        done = subprocess.run([sys.executable, str(WORKER), mode, "--work", str(tmp_path), "--threads", "1", *extra],
                              cwd=str(ROOT), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{mode} worker failed:\n{done.stdout}\n{done.stderr}"
    encoder, decoder = load_file(str(tmp_path / "encoder.safetensors")), load_file(str(tmp_path / "decoder.safetensors"))
    assert encoder.keys() == decoder.keys() and len(encoder) == 6
    for key in encoder:
        assert torch.equal(encoder[key], decoder[key]), key
    frames = [parse_frame(p.read_bytes()) for p in sorted((tmp_path / "frames").glob("*.icmh"))]
    assert all(f.header.importance for f in frames)  # the maps were really on


def test_checkpoint_cli_encode_map_and_info(tmp_path, capsys):
    source = _codec(importance=True, prompts=True)
    adapter_set = source.codec.adapter_set(TASK)
    with torch.no_grad():
        adapter_set.importance.net[-1].bias.fill_(0.4)  # level 1 where the rest is 0: a map on every frame
        adapter_set.prompts.scale.fill_(0.1)
    path = tmp_path / "det.safetensors"
    meta = save_adapters(path, source.codec, TASK, source.loaded.fingerprint)
    assert meta.importance and meta.prompts
    stored_meta, state = read_adapters(path)
    assert stored_meta == meta and {k.split(".")[0] for k in state} == {"encoder", "decoder", "importance", "prompts"}

    target = FrameCodec(load_base_codec(CODEC, QUALITY))
    target.load_adapters(path)
    image = _image(128, 192, seed=2)
    frame = source.encode([image], TASK, keep_latents=True)[0]
    assert target.encode([image], TASK)[0].data == frame.data and parse_frame(frame.data).header.importance
    decoded = target.decode([frame.data])[0]
    assert torch.equal(decoded.y_hat, frame.y_hat)
    assert torch.equal(decoded.image, source.decode([frame.data])[0].image)

    png, heat = _save_png(image, tmp_path / "in.png"), tmp_path / "map.png"
    assert main(["encode", str(png), "-o", str(tmp_path / "f.icmh"), "--task", TASK.value, "--codec", CODEC,
                 "--quality", str(QUALITY), "--adapters", str(path), "--save-importance", str(heat)]) == 0
    with Image.open(heat) as shown:
        assert shown.format == "PNG" and shown.width > 100
    capsys.readouterr()
    assert main(["info", "--adapters", str(path), "--image", str(png), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["selector_params"] == adapter_set.importance.selector_parameters()
    assert report["prompt_params"] == 2 * 96 and report["selector_macs_per_pixel"] > 0
    assert 0 < report["side_info_bytes"] < report["frame_bytes"]
    assert main(["info", "--adapters", str(path)]) == 0
    text = capsys.readouterr().out
    assert "selector params" in text and "prompt params" in text


def test_train_with_importance_learns_the_selector(tmp_path):
    data = tmp_path / "train"
    data.mkdir()
    for i in range(2):
        _save_png(_image(96, 128, seed=10 + i), data / f"{i}.png")
    out = tmp_path / "cls.safetensors"
    assert main(["train", "--task", "classification", "--codec", CODEC, "--quality", str(QUALITY), "--data", str(data),
                 "--crop", "64", "--batch-size", "2", "--lr", "1e-2", "--steps", "3", "--random-task-model",
                 "--model", "resnet50", "--importance", "--prompts", "--no-progress", "--out", str(out)]) == 0
    meta, state = read_adapters(out)
    assert meta.importance and meta.prompts and meta.steps == 3
    # the selector's last layer and the prompts start at zero: non-zero now means they received gradients
    assert state["importance.net.4.weight"].abs().sum() > 0
    assert state["prompts.scale"].abs().sum() > 0 and state["prompts.shift"].abs().sum() > 0

    codec = _codec(importance=True).codec
    codec.train()
    with codec.use(TASK):
        out = codec(_image(64, 64)[None])
    assert set(out["likelihoods"]) == {"y", "z", "levels"}
    rate = sum(-torch.log2(l).sum() for l in out["likelihoods"].values())
    rate.backward()
    assert codec.adapter_set(TASK).importance.net[-1].weight.grad.abs().sum() > 0
