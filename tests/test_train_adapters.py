"""Adapter training (``icmh.training.adapters``, ``icmh train``): fast CPU runs on training crops.

Tiny bundled codec ``mbt2018-mean-tiny`` q1, crops 64, batch 2; the default task models
(the real small models where ``../shared/models`` is present) with seeded random weights
where a test is about the mechanics, and the real ones where it is about the features.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from icmh.cli.main import main
from icmh.codec.adapter_checkpoint import read_adapters
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.errors import WeightsMissingError
from icmh.tasks import Task
from icmh.training.adapters import CHECKPOINT_FORMAT, AdapterTrainConfig, preset_lambda, train_adapters
from icmh.training.checkpoint import read_checkpoint
from icmh.errors import InvalidInputError

CODEC = "mbt2018-mean-tiny"


def _config(training_dir: Path, out: Path, **kw) -> AdapterTrainConfig:
    base = dict(task="detection", out=out, data=[training_dir], codec=CODEC, quality=1, steps=24, crop=64,
                batch_size=2, lr=1e-3, random_task_model=True, seed=0, model="fasterrcnn_resnet50_fpn")
    base.update(kw)
    return AdapterTrainConfig(**base)


def _csv_steps(path: Path) -> list:
    with path.open(newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_lambda_presets_are_the_papers_for_its_models():
    assert preset_lambda("resnet50", 3) == 6.7
    assert preset_lambda("fasterrcnn_resnet50_fpn", 4) == 5.0
    assert preset_lambda("maskrcnn_resnet50_fpn", 6) == 5.0  # beyond 4: nearest preset
    assert preset_lambda("resnet50", 1) == 1.8
    assert preset_lambda("yolox-nano", 3) == 17.2  # real small models: every quality of mbt2018-mean-small
    with pytest.raises(InvalidInputError, match="no λ preset for task model png"):
        preset_lambda("png", 1)


def test_pretrained_task_model_missing_is_clear(monkeypatch, tmp_path, training_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("ICMH_OFFLINE", "1")
    with pytest.raises(WeightsMissingError, match="resnet50-0676ba61.pth.*--random-weights"):
        train_adapters(_config(training_dir, tmp_path / "x.safetensors", task="classification", model="resnet50",
                               random_task_model=False), progress=False)


def _one_patch(training_dir: Path, folder: Path) -> Path:
    """A folder with one real 64×64 Kodak patch: every crop is it (or its mirror), so the loss curve is smooth."""
    folder.mkdir()
    with Image.open(sorted(training_dir.glob("*.jpg"))[0]) as image:
        image.convert("RGB").crop((200, 150, 264, 214)).save(folder / "patch.png")
    return folder


def test_train_lowers_loss_touches_only_adapters_and_checkpoint_loads(training_dir, tmp_path):
    out = tmp_path / "det.safetensors"
    data = _one_patch(training_dir, tmp_path / "patch")
    config = _config(data, out)
    history = train_adapters(config, progress=False)
    losses = [r["loss"] for r in history]
    assert len(losses) == config.steps
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5

    # only adapter tensors changed: the base equals a freshly loaded one
    fresh = open_frame_codec(CodecOptions(codec=CODEC, quality=1)).codec.base.state_dict()
    trained = history.codec.base.state_dict()
    assert fresh.keys() == trained.keys()
    assert all(torch.equal(fresh[k], trained[k]) for k in fresh)
    assert not any(p.requires_grad for p in history.codec.base.parameters())

    meta, state = read_adapters(out)
    assert (meta.codec, meta.quality, meta.task) == (CODEC, 1, "detection")
    assert meta.lmbda == preset_lambda("fasterrcnn_resnet50_fpn", 1) and meta.steps == config.steps
    assert meta.training_data == f"{data.resolve()}/patch.png" and meta.random_weights is True
    assert meta.task_model == "fasterrcnn_resnet50_fpn"
    assert any(v.abs().sum() > 0 for v in state.values())
    assert _csv_steps(config.csv_path) == list(range(1, config.steps + 1))

    # the checkpoint serves frames through the shared loader
    frame_codec = open_frame_codec(CodecOptions(codec=CODEC, quality=1, adapters=[out]), [Task.DETECTION])
    image = torch.rand(3, 64, 96)
    encoded = frame_codec.encode([image], Task.DETECTION, keep_latents=True)[0]
    decoded = frame_codec.decode([encoded.data])[0]
    assert decoded.task is Task.DETECTION
    assert torch.equal(decoded.y_hat.cpu(), encoded.y_hat.cpu())

    # ... and through the CLI
    png = tmp_path / "in.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(png)
    frame = tmp_path / "f.icmh"
    assert main(["encode", str(png), "-o", str(frame), "--task", "detection", "--codec", CODEC,
                 "--quality", "1", "--adapters", str(out)]) == 0
    assert main(["decode", str(frame), "-o", str(tmp_path / "out.png"), "--adapters", str(out)]) == 0
    assert (tmp_path / "out.png").is_file()


def test_resume_continues_steps_and_optimizer_state(training_dir, tmp_path, capsys):
    straight = _config(training_dir, tmp_path / "straight.safetensors", task="classification", model="resnet50",
                       steps=15)
    train_adapters(straight, progress=False)

    out = tmp_path / "resumed.safetensors"
    args = ["train", "--task", "classification", "--codec", CODEC, "--quality", "1", "--data", str(training_dir),
            "--crop", "64", "--batch-size", "2", "--lr", "1e-3", "--random-task-model", "--model", "resnet50",
            "--checkpoint-every", "5",
            "--no-progress", "--out", str(out)]
    assert main(args + ["--steps", "10"]) == 0
    checkpoint = read_checkpoint(out.with_name(out.name + ".ckpt.safetensors"), CHECKPOINT_FORMAT)
    assert checkpoint.step == 10 and checkpoint.config["steps"] == 10
    assert all(float(state["step"]) == 10 for state in checkpoint.optimizers["adam"].values())
    captured = capsys.readouterr()
    assert "RANDOM WEIGHTS" in captured.out and "RANDOM WEIGHTS" in captured.err

    assert main(args + ["--steps", "15", "--resume"]) == 0
    assert _csv_steps(out.with_name(out.name + ".csv")) == list(range(1, 16))
    meta_a, state_a = read_adapters(straight.out)
    meta_b, state_b = read_adapters(out)
    assert meta_b.steps == 15
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert meta_a.sha256 == meta_b.sha256
