"""The low-level consumers end to end: ``icmh train-restoration``, ``icmh eval`` of a restoration task
on real (small) evaluation images, and LL-ICM joint adapter training (``icmh train --task denoise``).

Runs are small for a CPU (crops of 32–192 pixels, a few steps, the bundled tiny codec);
the code paths are those of full runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from icmh.cli.main import main
from icmh.errors import InvalidInputError
from icmh.codec.adapter_checkpoint import read_adapters
from icmh.evaluation.datasets import open_eval_set
from icmh.evaluation.image_quality import decode_png, psnr
from icmh.evaluation.restoration import degradation_seed
from icmh.images import load_image, save_image
from icmh.restoration import degrade, read_network, restoration_target
from icmh.taskmodels import load_task_model
from icmh.tasks import Task
from icmh.training.pairs import coding_pair, pair_distortion

CODEC = ["--codec", "mbt2018-mean-tiny"]
EVAL_SIDE = 192  # MS-SSIM needs 161 pixels a side


def _run(capsys, *argv: str) -> tuple:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _tensors(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


# -- icmh train-restoration --------------------------------------------------------------------------------------------
def test_train_restoration_writes_weights_with_recipe_and_resumes_exactly(few_training_images, tmp_path, capsys):
    args = ["train-restoration", "--task", "super-resolution", "--data", str(few_training_images), "--crop", "32",
            "--batch-size", "2", "--channels", "8", "--blocks", "1", "--schedule", "constant", "--no-progress"]
    straight = tmp_path / "straight.safetensors"
    code, out, _ = _run(capsys, *args, "--steps", "4", "--out", str(straight))
    assert code == 0 and f"{straight}: super-resolution network" in out and "dB restored" in out
    net, meta = read_network(straight, Task.SUPER_RESOLUTION)
    assert meta["steps"] == "4" and meta["training_images_count"] == "6" and net.scale == 2
    assert json.loads(meta["recipe"])["crop"] == 32 and json.loads(meta["degradation"])["factor"] == 2
    assert "--channels 8 --blocks 1" in meta["command"]

    resumed = tmp_path / "resumed.safetensors"
    assert _run(capsys, *args, "--steps", "2", "--checkpoint-every", "1", "--out", str(resumed))[0] == 0
    assert _run(capsys, *args, "--steps", "4", "--resume", "--out", str(resumed))[0] == 0
    with resumed.with_name(resumed.name + ".csv").open(newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4]
    a, b = _tensors(straight), _tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("argv, fragment", [
    (["--data", "kodak"], "kodak is an evaluation set"),
    (["--task", "super-resolution", "--crop", "33"], "multiple of 4"),
    (["--lr", "0"], "learning rate positive"),
])
def test_train_restoration_errors_are_one_line(argv, fragment, tmp_path, capsys):
    args = ["train-restoration", "--task", "denoise", "--steps", "1", "--no-progress",
            "--out", str(tmp_path / "x.safetensors"), *argv]
    code, _, err = _run(capsys, *args)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_train_restoration_refuses_an_evaluation_photo_under_another_name(data_dir, tmp_path, capsys):
    photo = data_dir / "sr-bench" / "set5" / "bird.png"
    if not photo.is_file():
        pytest.skip(f"{photo} not found (set ICMH_DATA_DIR)")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "holiday.png").write_bytes(photo.read_bytes())
    code, _, err = _run(capsys, "train-restoration", "--task", "deblur", "--data", str(folder), "--steps", "1",
                        "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "evaluation image sr-bench/bird.png" in err


# -- icmh eval --task <restoration> ------------------------------------------------------------------------------------
@pytest.fixture()
def two_small_images(data_dir: Path, tmp_path: Path) -> Path:
    """A folder with the central 192×192 crops of two Set5 photos (evaluation images, written to tmp only)."""
    folder = tmp_path / "images"
    for name in ("baby", "bird"):
        path = data_dir / "sr-bench" / "set5" / f"{name}.png"
        if not path.is_file():
            pytest.skip(f"{path} not found (set ICMH_DATA_DIR)")
        image = load_image(path)
        top, left = (image.shape[-2] - EVAL_SIDE) // 2, (image.shape[-1] - EVAL_SIDE) // 2
        save_image(image[:, top:top + EVAL_SIDE, left:left + EVAL_SIDE], folder / f"{name}.png")
    return folder


def test_eval_denoise_codes_degraded_images_and_scores_restorations_against_the_clean(
        two_small_images, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "eval", "--task", "denoise", "--data", str(two_small_images), *CODEC,
                          "--qualities", "1,2", "--jpeg-qualities", "10,40", "--webp-qualities", "10,40",
                          "--random-adapters", "--out", str(out_dir), "--no-progress")
    assert code == 0, err
    summary = json.loads((out_dir / "eval-denoise.json").read_text())
    assert [(r["method"], r["quality"]) for r in summary["points"]] == [
        ("uncompressed", 0), ("degraded", 0), ("base", 1), ("adapted", 1), ("base", 2), ("adapted", 2),
        ("jpeg", 10), ("jpeg", 40), ("webp", 10), ("webp", 40)]
    assert (out_dir / "eval-denoise.csv").is_file() and (out_dir / "eval-denoise.png").stat().st_size > 10_000
    assert summary["primary_metric"] == "psnr" and summary["reference"] == "the clean images (before degradation)"
    assert summary["task_model"] == "restore-denoise (trained by icmh, restore-denoise.safetensors)"
    assert summary["random_weights"] and "RANDOM" in out  # the adapters are random here
    assert any("σ=25/255" in note for note in summary["notes"])
    rows = {(r["method"], r["quality"]): r for r in summary["points"]}
    for row in summary["points"]:
        assert all(k in row for k in ("psnr", "ssim", "ms_ssim", "brisque")) and row["images"] == 2
    # the two rows without rate, recomputed here: the degraded input and its restoration, against the clean image
    model = load_task_model(Task.DENOISE)
    items = open_eval_set(Task.DENOISE, two_small_images).images
    clean = [load_image(item.path) for item in items]
    degraded = [degrade(Task.DENOISE, image, degradation_seed(0, item.image_id)) for item, image in zip(items, clean)]
    restored = [decode_png(r.image_png) for r in model.infer(degraded)]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert rows[("degraded", 0)]["psnr"] == pytest.approx(mean([psnr(c, d) for c, d in zip(clean, degraded)]))
    assert rows[("uncompressed", 0)]["psnr"] == pytest.approx(mean([psnr(c, r) for c, r in zip(clean, restored)]))
    assert rows[("uncompressed", 0)]["psnr"] > rows[("degraded", 0)]["psnr"] + 5
    assert rows[("jpeg", 10)]["bpp"] < rows[("jpeg", 40)]["bpp"] and rows[("base", 1)]["bpp"] < rows[("base", 2)]["bpp"]
    pairs = {(r["method"], r["anchor"], r["metric"]) for r in summary["bd"]}
    assert {("adapted", "base", "psnr"), ("base", "jpeg", "psnr"), ("base", "webp", "brisque")} <= pairs
    assert "BD-rate" in out and "degraded" in out


def test_eval_super_resolution_scores_the_x2_restoration_against_the_full_clean_image(two_small_images, tmp_path,
                                                                                       capsys):
    out_dir = tmp_path / "out"
    code, _, err = _run(capsys, "eval", "--task", "super-resolution", "--data", str(two_small_images), *CODEC,
                        "--qualities", "1", "--methods", "base,jpeg", "--jpeg-qualities", "20,60", "--images", "1",
                        "--out", str(out_dir), "--no-progress")
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads((out_dir / "eval-super-resolution.json").read_text())["points"]}
    clean = load_image(sorted(two_small_images.glob("*.png"))[0])
    low = degrade(Task.SUPER_RESOLUTION, clean, seed=degradation_seed(0, 0))
    bicubic = F.interpolate(low[None], scale_factor=2, mode="bicubic", align_corners=False)[0]
    assert rows["degraded"]["psnr"] == pytest.approx(psnr(restoration_target(Task.SUPER_RESOLUTION, clean), bicubic))
    assert rows["uncompressed"]["psnr"] > rows["degraded"]["psnr"]
    coded_pixels = (EVAL_SIDE // 2) ** 2  # the rate is per pixel of the coded, ×½ image
    assert rows["base"]["bpp"] * coded_pixels / 8 == pytest.approx(round(rows["base"]["bpp"] * coded_pixels / 8))


def test_restoration_sets_include_sub_folders(data_dir):
    folder = data_dir / "sr-bench"
    if not (folder / "set5").is_dir():
        pytest.skip(f"{folder} not found (set ICMH_DATA_DIR)")
    images = open_eval_set(Task.DENOISE, folder).images
    assert {p.path.parent.name for p in images} >= {"set5", "set14", "mcmaster", "sun-hays80"}
    assert [item.image_id for item in images] == list(range(len(images)))


# -- LL-ICM joint adapter training -------------------------------------------------------------------------------------
def test_restoration_adapters_code_the_degraded_crop_against_the_clean_crop():
    crops = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    assert coding_pair(Task.DETECTION, crops, seed=1) == (crops, None)
    assert coding_pair("", crops, seed=1) == (crops, None)  # universal heads
    low, target = coding_pair(Task.SUPER_RESOLUTION, crops, seed=1)
    assert low.shape == (2, 3, 64, 64) and torch.equal(target, crops)
    noisy, clean = coding_pair(Task.DENOISE, crops, seed=1)
    assert torch.equal(noisy, degrade(Task.DENOISE, crops, seed=1)) and torch.equal(clean, crops)
    model = load_task_model(Task.DENOISE)
    assert pair_distortion(model, noisy, clean, noisy).item() == pytest.approx(
        F.mse_loss(model.restore(noisy), clean).item())
    assert pair_distortion(model, noisy, None, noisy).item() == 0.0  # without a target: restorations compared


def test_icmh_train_denoise_trains_adapters_against_the_restoration_network(few_training_images, tmp_path, capsys):
    out = tmp_path / "denoise.safetensors"
    code, text, err = _run(capsys, "train", "--task", "denoise", *CODEC, "--quality", "1", "--lmbda", "845",
                           "--data", str(few_training_images), "--steps", "2", "--crop", "64", "--batch-size", "2",
                           "--no-progress", "--out", str(out))
    assert code == 0, err
    meta, _ = read_adapters(out)
    assert (meta.task, meta.task_model, meta.steps) == ("denoise", "restore-denoise", 2)
    assert "against restore-denoise (trained by icmh" in text
    code, _, err = _run(capsys, "train", "--task", "super-resolution", *CODEC, "--quality", "1", "--lmbda", "845",
                        "--steps", "1", "--crop", "64", "--out", str(tmp_path / "sr.safetensors"))
    assert code == 2 and "multiple of 128" in err


def test_embedding_term_adds_beta_times_the_supervisors_distance_of_restored_to_clean():
    """LL-ICM's robustness term: MSE(R(x̂), x) + β·D_E(x, R(x̂)), with the seeded random CLIP tower."""
    from icmh.taskmodels import ModelOptions
    from icmh.training.supervision import EmbeddingRegularised, load_supervisor

    model = load_task_model(Task.DENOISE)
    supervisor = load_supervisor("clip-random", options=ModelOptions(seed=0))
    regularised = EmbeddingRegularised(model, supervisor, 0.5)
    clean = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    noisy = degrade(Task.DENOISE, clean, seed=0).requires_grad_(True)
    torch.manual_seed(7)  # the supervisor's random boxes
    loss = regularised.clean_distortion(clean, noisy)
    torch.manual_seed(7)
    embedding = supervisor.distortion(clean, model.restore(noisy))
    pixel = F.mse_loss(model.restore(noisy), clean)
    assert embedding.item() > 0
    assert loss.item() == pytest.approx(pixel.item() + 0.5 * embedding.item(), rel=1e-5)
    loss.backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    with pytest.raises(InvalidInputError, match="positive"):
        EmbeddingRegularised(model, supervisor, 0.0)


def test_icmh_train_embedding_weight_is_recorded_and_refused_where_it_has_no_meaning(few_training_images, tmp_path,
                                                                                     capsys):
    out = tmp_path / "denoise-embedding.safetensors"
    code, text, err = _run(capsys, "train", "--task", "denoise", *CODEC, "--quality", "1", "--lmbda", "845",
                           "--embedding-weight", "0.1", "--supervisor", "clip-random", "--data",
                           str(few_training_images), "--steps", "2", "--crop", "64", "--batch-size", "2",
                           "--no-progress", "--out", str(out))
    assert code == 0, err
    meta, _ = read_adapters(out)
    assert meta.task_model.startswith("restore-denoise + 0.1·clip-random") and meta.steps == 2
    code, _, err = _run(capsys, "train", "--task", "detection", *CODEC, "--quality", "1", "--embedding-weight", "0.1",
                        "--steps", "1", "--out", str(tmp_path / "det.safetensors"))
    assert code == 2 and "for the restoration tasks" in err
