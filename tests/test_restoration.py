"""Low-level consumers (LL-ICM): the degradations, the restoration networks and their weight files,
the registry entries, and the image-quality metrics.

Degradations are checked against their documented parameters by measurement (noise σ,
blur kernel, sizes, exposure), on synthetic images whose statistics are known. The
registry tests use the shipped, trained weights (``icmh/restoration/weights/``); whether
those restore held-out images is ``test_restoration_models.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from icmh.data_splits import evaluation_images, image_list_digest
from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.evaluation.image_quality import brisque_score, decode_png, ms_ssim_index, psnr, ssim_index
from icmh.images import load_image
from icmh.restoration import (DEGRADATIONS, MODEL_NAMES, NetworkConfig, build_network, bundled_weights_path,
                              degrade, parameter_count, read_network, restoration_target, save_network)
from icmh.restoration.degradations import GaussianBlur, gaussian_kernel
from icmh.taskmodels import DEFAULT_MODELS, RANDOM_WEIGHTS_LABEL, ModelOptions, default_model_name, load_task_model
from icmh.tasks import RESTORATION_TASKS, Task

NOISY_TASKS = (Task.DENOISE, Task.DEBLUR, Task.LOW_LIGHT)


def grey(value: float, size: int = 256) -> torch.Tensor:
    """A uniform 3×size×size image."""
    return torch.full((3, size, size), value)


def textured(seed: int = 0, size: int = 128) -> torch.Tensor:
    """A smooth random image with some detail (bicubic upsampling of 16×16 noise)."""
    low = torch.rand(1, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)


# -- degradations ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", RESTORATION_TASKS, ids=lambda t: t.value)
def test_degradation_is_reproducible_from_its_seed(task):
    clean = textured()
    first, again = degrade(task, clean, seed=7), degrade(task, clean, seed=7)
    assert torch.equal(first, again)
    assert torch.equal(first, first.mul(255).round().div(255)) and first.min() >= 0 and first.max() <= 1  # 8-bit
    other = degrade(task, clean, seed=8)
    if task in NOISY_TASKS:
        assert not torch.equal(first, other)
    else:  # bicubic downscaling has no random part: every seed gives the same image
        assert torch.equal(first, other)


def test_a_batch_is_degraded_like_its_images_in_one_call():
    batch = torch.stack([textured(0), textured(1)])
    assert degrade(Task.DENOISE, batch, seed=3).shape == batch.shape
    assert torch.equal(degrade(Task.DENOISE, batch, seed=3), degrade(Task.DENOISE, batch, seed=3))


def test_denoise_adds_gaussian_noise_of_sigma_25():
    clean = grey(0.5)
    residual = degrade(Task.DENOISE, clean, seed=0) - clean
    assert residual.std().item() == pytest.approx(25 / 255, rel=0.02)
    assert abs(residual.mean().item()) < 0.002


def test_deblur_is_the_documented_gaussian_blur_plus_small_noise():
    blur = DEGRADATIONS[Task.DEBLUR]
    assert isinstance(blur, GaussianBlur) and blur.blur_sigma == 2.0 and blur.kernel_size == 13
    kernel = gaussian_kernel(2.0)
    positions = torch.arange(13) - 6.0
    assert kernel.sum().item() == pytest.approx(1.0) and kernel.numel() == 13
    assert (kernel * positions ** 2).sum().item() == pytest.approx(4.0, rel=0.02)  # variance σ² = 4
    clean = textured(size=192)
    degraded = degrade(Task.DEBLUR, clean, seed=0)
    residual = degraded - blur.blur(clean[None])[0]
    assert residual.std().item() == pytest.approx(0.01, rel=0.1)  # noise σ 2.55/255 (+ 8-bit rounding)
    impulse = torch.zeros(1, 3, 31, 31)
    impulse[..., 15, 15] = 1.0
    response = blur.blur(impulse)[0, 0, 9:22, 9:22]  # the point-spread function is the 13×13 Gaussian
    assert torch.allclose(response, torch.outer(kernel, kernel), atol=1e-7)


def test_super_resolution_input_has_half_the_sides_and_the_target_even_sides():
    clean = textured(size=128)[:, :125, :98]
    degraded = degrade(Task.SUPER_RESOLUTION, clean, seed=0)
    assert tuple(degraded.shape) == (3, 62, 49)
    assert tuple(restoration_target(Task.SUPER_RESOLUTION, clean).shape) == (3, 124, 98)
    smooth = F.avg_pool2d(clean[None, :, :124, :98], 2)[0]  # a smooth image downscales to about its 2×2 means
    assert (degraded - smooth).abs().mean().item() < 0.01


def test_low_light_darkens_by_the_documented_exposure_and_adds_noise():
    clean = grey(0.5)
    degraded = degrade(Task.LOW_LIGHT, clean, seed=0)
    expected = (0.1 * 0.5 ** 2.2) ** (1 / 2.2)  # 0.175: exposure ×0.1 in linear light, γ 2.2
    assert degraded.mean().item() == pytest.approx(expected, abs=0.01)
    assert 0.01 < degraded.std().item() < 0.05  # shot + read noise, amplified by the gamma curve
    photo = textured()
    assert degrade(Task.LOW_LIGHT, photo, seed=0).mean() < 0.5 * photo.mean()


@pytest.mark.parametrize("bad, fragment", [
    (torch.rand(1, 8, 8), "3×H×W"), (torch.zeros(3, 8, 8, dtype=torch.uint8), "float"), ("image", "str"),
])
def test_degrade_refuses_what_is_not_an_image(bad, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        degrade(Task.DENOISE, bad, seed=0)


def test_degrade_refuses_a_task_without_degradation():
    with pytest.raises(InvalidInputError, match="restoration tasks: denoise, deblur"):
        degrade(Task.DETECTION, textured(), seed=0)


# -- networks and weight files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", RESTORATION_TASKS, ids=lambda t: t.value)
def test_networks_are_small_and_restore_to_the_task_scale(task):
    net = build_network(NetworkConfig.for_task(task), seed=0)
    assert 100_000 <= parameter_count(net) <= 300_000
    x = torch.rand(2, 3, 33, 46)
    scale = 2 if task is Task.SUPER_RESOLUTION else 1
    assert tuple(net(x).shape) == (2, 3, 33 * scale, 46 * scale)
    assert torch.allclose(net(x), net.skip(x))  # the tail starts at zero: untrained = the skip path


def test_weight_file_round_trip_and_clear_errors(tmp_path):
    net = build_network(NetworkConfig.for_task(Task.DEBLUR), seed=3)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0, 0.05)
    path = tmp_path / "deblur.safetensors"
    save_network(net, path, Task.DEBLUR, {"steps": "5", "recipe": {"lr": 0.001}})
    loaded, meta = read_network(path, Task.DEBLUR)
    assert meta["task"] == "deblur" and meta["steps"] == "5" and meta["recipe"] == '{"lr": 0.001}'
    for (name, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.half().float(), b), name  # stored as float16
    with pytest.raises(InvalidInputError, match="holds the network of task 'deblur', not denoise"):
        read_network(path, Task.DENOISE)
    with pytest.raises(WeightsMissingError, match="icmh train-restoration --task denoise"):
        read_network(tmp_path / "absent.safetensors", Task.DENOISE)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidInputError, match="not a readable safetensors"):
        read_network(path, Task.DEBLUR)


@pytest.mark.parametrize("task", RESTORATION_TASKS, ids=lambda t: t.value)
def test_shipped_weights_record_their_recipe_and_only_training_images(task, data_dir):
    _, meta = read_network(bundled_weights_path(task), task)
    names = meta["training_images"].split("\n")
    assert all(name.startswith("bsds500-train/") for name in names) and len(names) == int(meta["training_images_count"])
    assert meta["training_images_sha256"] == image_list_digest(names)
    held_out = {path.name for files in evaluation_images(data_dir).values() for path in files}
    assert not held_out & {Path(name).name for name in names}
    assert int(meta["steps"]) >= 1000 and meta["command"].startswith(f"icmh train-restoration --task {task.value}")
    assert float(meta["final_psnr"]) > float(meta["final_psnr_input"])


# -- the registry ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", RESTORATION_TASKS, ids=lambda t: t.value)
def test_registry_builds_the_trained_network_of_each_task(task):
    assert DEFAULT_MODELS[task] == (MODEL_NAMES[task],) and default_model_name(task) == MODEL_NAMES[task]
    model = load_task_model(task)
    assert model.name == MODEL_NAMES[task] and model.pretrained
    assert model.weights_label == f"trained by icmh, {MODEL_NAMES[task]}.safetensors"
    random = load_task_model(task, options=ModelOptions(random_weights=True, seed=4))
    assert not random.pretrained and random.weights_label.startswith(RANDOM_WEIGHTS_LABEL)


@pytest.mark.parametrize("task", RESTORATION_TASKS, ids=lambda t: t.value)
def test_infer_returns_the_restored_png_at_the_frame_size_times_the_scale(task):
    model = load_task_model(task)
    frames = [textured(1, 96)[:, :70, :53], textured(2, 64)]
    results = model.infer(frames)
    scale = 2 if task is Task.SUPER_RESOLUTION else 1
    for frame, result in zip(frames, results):
        image = decode_png(result.image_png)
        height, width = frame.shape[-2:]
        assert (result.task, result.model) == (task, MODEL_NAMES[task])
        assert (result.height, result.width) == (height * scale, width * scale) == tuple(image.shape[-2:])


def test_a_weights_file_of_another_task_is_refused_by_the_registry():
    with pytest.raises(InvalidInputError, match="not denoise"):
        load_task_model(Task.DENOISE, options=ModelOptions(weights_path=bundled_weights_path(Task.DEBLUR)))


def test_the_registry_says_which_command_makes_missing_weights(tmp_path):
    with pytest.raises(WeightsMissingError, match="icmh train-restoration --task low-light"):
        load_task_model(Task.LOW_LIGHT, options=ModelOptions(weights_path=tmp_path / "restore-low-light.safetensors"))


def test_clean_distortion_is_the_error_of_the_restoration_to_the_clean_image():
    model = load_task_model(Task.SUPER_RESOLUTION)
    clean = textured(3, 64)[None]
    low = degrade(Task.SUPER_RESOLUTION, clean, seed=0).requires_grad_(True)
    loss = model.clean_distortion(clean, low)
    assert loss.item() == pytest.approx(F.mse_loss(model.restore(low), clean).item())
    loss.backward()
    assert low.grad is not None and low.grad.abs().sum() > 0
    with pytest.raises(InvalidInputError, match="clean target"):
        model.clean_distortion(clean[..., :32, :32], low)


# -- metrics -----------------------------------------------------------------------------------------------------------
def test_full_reference_metrics_of_known_pairs():
    clean = textured(5, 192).mul(254).round().div(255)  # room for +1/255 everywhere
    assert psnr(clean, clean + 1 / 255) == pytest.approx(20 * math.log10(255), abs=1e-6)
    assert ssim_index(clean, clean) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim_index(clean, clean) == pytest.approx(1.0, abs=1e-6)
    noisy = degrade(Task.DENOISE, clean, seed=0)
    assert ssim_index(clean, noisy) < 0.9 and ms_ssim_index(clean, noisy) < ms_ssim_index(clean, clean)
    assert math.isnan(ms_ssim_index(clean[:, :100, :100], clean[:, :100, :100]))  # MS-SSIM needs 161 px a side
    with pytest.raises(InvalidInputError, match="cannot compare"):
        psnr(clean, clean[:, :10])


def test_brisque_scores_a_clean_photo_better_than_a_noisy_one(data_dir):
    path = data_dir / "sr-bench" / "set5" / "baby.png"
    if not path.is_file():
        pytest.skip(f"{path} not found (set ICMH_DATA_DIR)")
    photo = load_image(path)
    clean, noisy = brisque_score(photo), brisque_score(degrade(Task.DENOISE, photo, seed=0))
    assert 0 <= clean < noisy - 10  # BRISQUE: lower is better
    assert math.isnan(brisque_score(photo[:, :20, :20]))
