"""Rate–distortion training of a base codec (how the bundled tiny codec is made)."""

import json

import pytest
import torch

from icmh.cli import main
from shared.errors import InvalidInputError
from shared.frame_codec import FrameCodec
from shared.images import load_image
from shared.tasks import Task
from shared.weights import BUNDLED_DIR, load_base_codec
from training.data import RandomCrops
from training.rd import RDTrainConfig, train_and_save, train_base_codec

from conftest import smooth_image


def test_short_rd_training_lowers_the_loss_and_saves_a_loadable_codec(kodak_dir, tmp_path):
    config = RDTrainConfig(data=[kodak_dir], steps=30, batch_size=4, crop=64, lr=1e-3, lmbda=0.01)
    out = tmp_path / "tiny.safetensors"
    train_and_save(config, out, progress=False)
    losses = [r["loss"] for r in config.history]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    loaded = load_base_codec("mbt2018-mean-tiny", 1, weights=out)
    codec = FrameCodec(loaded)
    frame = codec.encode([smooth_image(64, 64)], Task.HUMAN)[0]
    assert codec.decode([frame.data])[0].image.shape == (3, 64, 64)


def test_random_crops_are_repeatable_and_sized(kodak_dir):
    a, b = RandomCrops([kodak_dir], crop=48, seed=3), RandomCrops([kodak_dir], crop=48, seed=3)
    assert a[5].shape == (3, 48, 48)
    assert (a[5] == b[5]).all() and not (a[5] == a[6]).all()


def test_fine_tuning_starts_from_the_given_weights(kodak_dir, tmp_path):
    """``init_weights`` (``icmh train-codec --init-weights``): how qualities 2–4 of the tiny codec are made."""
    bundled = BUNDLED_DIR / "mbt2018-mean-tiny-1.safetensors"
    start = load_base_codec("mbt2018-mean-tiny", 1)
    config = RDTrainConfig(data=[kodak_dir], steps=1, batch_size=1, crop=64, lr=1e-9, lmbda=0.0483,
                           init_weights=bundled)
    tuned = train_base_codec(config, progress=False)
    scratch = train_base_codec(RDTrainConfig(data=[kodak_dir], steps=1, batch_size=1, crop=64, lr=1e-9),
                               progress=False)
    weight = "g_a.0.weight"
    reference = start.model.state_dict()[weight]
    assert torch.allclose(tuned.state_dict()[weight], reference, atol=1e-3)
    assert not torch.allclose(scratch.state_dict()[weight], reference, atol=1e-3)
    with pytest.raises(InvalidInputError, match="do not fit"):
        train_base_codec(RDTrainConfig(data=[kodak_dir], steps=1, codec="mbt2018-mean", quality=1,
                                       init_weights=bundled), progress=False)


def test_tiny_codec_qualities_rise_in_rate_and_quality(kodak_dir):
    image = load_image(kodak_dir / "kodim23.png")[:, :256, :256]
    rates, errors = [], []
    for quality in (1, 2, 3, 4):
        codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", quality))
        frame = codec.encode([image], Task.HUMAN)[0]
        rates.append(frame.bpp)
        errors.append(float(((codec.decode([frame.data])[0].image - image) ** 2).mean()))
    assert rates == sorted(rates) and errors == sorted(errors, reverse=True)


def test_bench_train_prints_images_per_second(kodak_dir, capsys):
    code = main(["bench", "train", "--tasks", "classification", "--codec", "mbt2018-mean-tiny", "--quality", "1",
                 "--crop", "64", "--batch-size", "2", "--steps", "1", "--data", str(kodak_dir), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out[out.index("{"):])
    task = report["tasks"]["classification"]
    assert task["images_per_s"] == pytest.approx(2 / task["step_s"]) and task["images_per_s"] > 0
    assert "RANDOM WEIGHTS" in report["task_models"]
