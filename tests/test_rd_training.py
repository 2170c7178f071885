"""Rate–distortion training of a base codec (``icmh train-codec``): how the bundled codecs are made."""

import json

import pytest
import torch
from safetensors import safe_open

from icmh.cli.main import main
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.weights import BUNDLED_DIR, load_base_codec
from icmh.errors import InvalidInputError
from icmh.images import load_image
from icmh.taskmodels import default_model_name
from icmh.tasks import Task
from icmh.training.data import RandomCrops
from icmh.training.rd import RDTrainConfig, train_base_codec

from support import smooth_image

TINY = dict(codec="mbt2018-mean-tiny", quality=1, batch_size=2, crop=64, lr=1e-3, lmbda=0.01, checkpoint_every=0)


def test_short_rd_training_lowers_the_loss_and_saves_a_loadable_codec(few_training_images, tmp_path):
    out = tmp_path / "tiny.safetensors"
    result = train_base_codec(RDTrainConfig(out=out, sources=[few_training_images], steps=30, **TINY), progress=False)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 30 and [r["step"] for r in result.history] == list(range(1, 31))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1, weights=out))
    frame = codec.encode([smooth_image(64, 64)], Task.HUMAN)[0]
    assert codec.decode([frame.data])[0].image.shape == (3, 64, 64)
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    # the recipe names the real files (links resolved), relative to the data folder
    assert meta["training_images"].split("\n") == sorted(f"bsds500-train/{p.name}" for p in few_training_images.iterdir())
    assert meta["lmbda"] == "0.01" and meta["steps"] == "30" and int(meta["train_seconds"]) >= 0


def test_a_resumed_run_ends_with_the_tensors_of_an_uninterrupted_one(few_training_images, tmp_path, monkeypatch):
    whole = train_base_codec(RDTrainConfig(out=tmp_path / "a.safetensors", sources=[few_training_images],
                                           steps=6, **(TINY | {"checkpoint_every": 3})), progress=False)
    split = RDTrainConfig(out=tmp_path / "b.safetensors", sources=[few_training_images], steps=6,
                          **(TINY | {"checkpoint_every": 3}))
    original = RandomCrops.batch

    def interrupted_at_step_5(self, step, batch_size):  # after the step-3 checkpoint and a logged step 4
        if step == 5:
            raise KeyboardInterrupt
        return original(self, step, batch_size)

    monkeypatch.setattr(RandomCrops, "batch", interrupted_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_base_codec(split, progress=False)
    monkeypatch.setattr(RandomCrops, "batch", original)
    split.resume = True
    resumed = train_base_codec(split, progress=False)
    assert [r["step"] for r in resumed.history] == list(range(1, 7))
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert (tmp_path / "a.safetensors.csv").read_text().count("\n") == 7


def test_resuming_with_other_settings_is_refused(few_training_images, tmp_path):
    config = RDTrainConfig(out=tmp_path / "c.safetensors", sources=[few_training_images], steps=1, **TINY)
    train_base_codec(config, progress=False)
    config.lmbda, config.resume = 0.02, True
    with pytest.raises(InvalidInputError, match="lmbda"):
        train_base_codec(config, progress=False)


def test_training_on_evaluation_images_is_refused(kodak_dir, few_training_images, tmp_path):
    with pytest.raises(InvalidInputError, match="evaluation set"):
        train_base_codec(RDTrainConfig(out=tmp_path / "x.safetensors", sources=["kodak"], steps=1, **TINY))
    disguised = few_training_images / "holiday.png"  # an evaluation image under another name
    disguised.symlink_to(kodak_dir / "kodim05.png")
    with pytest.raises(InvalidInputError, match="kodak/kodim05.png"):
        train_base_codec(RDTrainConfig(out=tmp_path / "y.safetensors", sources=[few_training_images], steps=1,
                                       **TINY), progress=False)


def test_random_crops_are_repeatable_and_sized(few_training_images):
    files = sorted(few_training_images.iterdir())
    a, b = RandomCrops(files, crop=48, seed=3), RandomCrops(files, crop=48, seed=3)
    assert a[5].shape == (3, 48, 48)
    assert (a[5] == b[5]).all() and not (a[5] == a[6]).all()
    assert torch.equal(a.batch(2, 3)[0], a[3])


def test_fine_tuning_starts_from_the_given_weights(few_training_images, tmp_path):
    """``init_weights`` (``icmh train-codec --init-weights``): how the other qualities are made."""
    bundled = BUNDLED_DIR / "mbt2018-mean-tiny-1.safetensors"
    start = load_base_codec("mbt2018-mean-tiny", 1)
    common = TINY | {"lr": 1e-9, "batch_size": 1}
    tuned = train_base_codec(RDTrainConfig(out=tmp_path / "t.safetensors", sources=[few_training_images], steps=1,
                                           init_weights=bundled, **(common | {"lmbda": 0.0483})), progress=False)
    scratch = train_base_codec(RDTrainConfig(out=tmp_path / "s.safetensors", sources=[few_training_images],
                                             steps=1, **common), progress=False)
    weight = "g_a.0.weight"
    reference = start.model.state_dict()[weight]
    assert torch.allclose(tuned.model.state_dict()[weight], reference, atol=1e-3)
    assert not torch.allclose(scratch.model.state_dict()[weight], reference, atol=1e-3)
    with pytest.raises(InvalidInputError, match="do not fit"):
        train_base_codec(RDTrainConfig(out=tmp_path / "u.safetensors", sources=[few_training_images], steps=1,
                                       codec="mbt2018-mean", quality=1, init_weights=bundled), progress=False)


def test_tiny_codec_qualities_rise_in_rate_and_quality(kodak_dir):
    image = load_image(kodak_dir / "kodim23.png")[:, :256, :256]
    rates, errors = [], []
    for quality in (1, 2, 3, 4):
        codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", quality))
        frame = codec.encode([image], Task.HUMAN)[0]
        rates.append(frame.bpp)
        errors.append(float(((codec.decode([frame.data])[0].image - image) ** 2).mean()))
    assert rates == sorted(rates) and errors == sorted(errors, reverse=True)


def test_bench_train_throughput_is_the_batch_over_the_median_step_after_warm_up():
    from icmh.cli.commands.bench_train import throughput

    # warm-up 9 s (left out); timed 0.5, 0.25 and 1.0 s: median 0.5 s
    assert throughput([9.0, 0.5, 0.25, 1.0], batch_size=2) == {"step_s": 0.5, "images_per_s": 4.0}
    assert throughput([0.1, 2.0], batch_size=8) == {"step_s": 2.0, "images_per_s": 4.0}


def test_bench_train_prints_images_per_second(few_training_images, capsys):
    code = main(["bench", "train", "--tasks", "classification", "--codec", "mbt2018-mean-tiny", "--quality", "1",
                 "--crop", "64", "--batch-size", "2", "--steps", "1", "--data", str(few_training_images), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out[out.index("{"):])
    task = report["tasks"]["classification"]
    assert task["step_s"] > 0 and task["images_per_s"] > 0  # the figures themselves: test below
    # the default classifier of this machine, named with where its weights came from
    assert report["task_models"]["classification"].startswith(default_model_name(Task.CLASSIFICATION) + " (")
