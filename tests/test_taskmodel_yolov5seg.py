"""YOLOv5n-seg from its ncnn files: COCO accuracy, agreement with the ncnn package, training
gradients, mask and detection outputs, and the refusal of damaged or missing files.

Needs ``../shared/models/coco-segmentation-yolov5n-seg`` (or ``$ICMH_MODELS_DIR``) and the
coco-mini set of ``../shared/data`` (or ``$ICMH_DATA_DIR``); skips with a message otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.evaluation.datasets import EvalSet, open_eval_set
from icmh.evaluation.scoring import DetectionScorer
from icmh.images import load_image
from icmh.paths import default_data_dir
from icmh.results import TaskResult
from icmh.taskmodels import EVAL_SCORE_THRESHOLD, RANDOM_WEIGHTS_LABEL, ModelOptions, load_task_model
from icmh.taskmodels.files import ModelFile, locate, read_verified
from icmh.taskmodels.geometry import letterbox
from icmh.taskmodels.ncnn import load_ncnn
from icmh.taskmodels.yolov5seg import BIN, HEAD_BLOBS, INPUT_SIZE, PARAM, PROTO_BLOB, YoloV5Seg, channels_last
from icmh.tasks import Task

NAME = "yolov5n-seg"
ZEBRA_IMAGE_ID = 244592  # 500×374: three zebras, nothing else annotated
BUS_IMAGE_ID = 423617  # 640×480: buses, cars, people
NCNN_TOLERANCE = 1e-4  # max |torch − ncnn| over the four output blobs (about 2e-5 is reached)
SQUEEZENET_PARAM = ModelFile("imagenet-squeezenet1_1/squeezenet_v1.1.param",
                             "6a38784ab51f056e5ecdf208120f8a9174b74831255e66b74c4dd6bf755a4324")
SQUEEZENET_BIN = ModelFile("imagenet-squeezenet1_1/squeezenet_v1.1.bin",
                           "928c82c485a16064df88794d83c333025055e60c08f73217222244ab0ed2dbc6")


@pytest.fixture(scope="module")
def model_files() -> Tuple[Path, Path]:
    """The param and bin paths; skips when they are absent."""
    paths = (locate(PARAM), locate(BIN))
    if None in paths:
        pytest.skip(f"YOLOv5n-seg ncnn files ({PARAM.path}) not found in ../shared/models (set ICMH_MODELS_DIR)")
    return paths  # type: ignore[return-value]


@pytest.fixture(scope="module")
def model(model_files: Tuple[Path, Path]) -> YoloV5Seg:
    """The pretrained model with the evaluation settings (low threshold, 100 detections)."""
    options = ModelOptions(score_threshold=EVAL_SCORE_THRESHOLD, max_detections=100)
    return load_task_model(Task.SEGMENTATION, NAME, options)


@pytest.fixture(scope="module")
def eval_set() -> EvalSet:
    """The annotated coco-mini val images; skips when the data is absent."""
    folder = default_data_dir() / "coco-mini"
    if not folder.is_dir():
        pytest.skip(f"coco-mini not found in {folder} (set ICMH_DATA_DIR)")
    return open_eval_set(Task.SEGMENTATION, folder)


@pytest.fixture(scope="module")
def segmentations(model: YoloV5Seg, eval_set: EvalSet) -> Dict[int, TaskResult]:
    """Every eval image's result by the evaluation protocol: the model input, reported at the original size."""
    results = {}
    for item in eval_set.images:
        image = load_image(item.path)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        results[item.image_id] = model.infer_prepared([model.model_input(image)], Task.SEGMENTATION, sizes=[size])[0]
    return results


def zebra_image(eval_set: EvalSet) -> torch.Tensor:
    """The zebra photo (RGB in [0, 1], original size)."""
    return load_image(next(item.path for item in eval_set.images if item.image_id == ZEBRA_IMAGE_ID))


def test_segments_coco_mini_at_the_measured_accuracy(eval_set: EvalSet, segmentations: Dict[int, TaskResult]) -> None:
    scorer = DetectionScorer(eval_set.coco, masks=True)
    for image_id, result in segmentations.items():
        scorer.add(image_id, result)
    metrics = scorer.compute()
    print(f"yolov5n-seg on coco-mini val ({len(segmentations)} images): box AP {metrics['AP']:.1f} / AP50 "
          f"{metrics['AP50']:.1f}, mask AP {metrics['mask_AP']:.1f} / AP50 {metrics['mask_AP50']:.1f}")
    assert len(segmentations) == 79
    assert metrics["mask_AP"] >= 27.0
    assert metrics["AP"] >= 29.0


def test_masks_are_reported_at_the_requested_size(eval_set: EvalSet, segmentations: Dict[int, TaskResult]) -> None:
    for image_id, result in segmentations.items():
        info = eval_set.coco.imgs[image_id]
        assert (result.width, result.height) == (info["width"], info["height"])
        assert all(d.mask_rle["size"] == [info["height"], info["width"]] for d in result.detections)


def test_a_zebra_photo_gives_zebras_with_masks_on_them(eval_set: EvalSet,
                                                       segmentations: Dict[int, TaskResult]) -> None:
    coco = eval_set.coco
    truth = coco.loadAnns(coco.getAnnIds(imgIds=[ZEBRA_IMAGE_ID], iscrowd=False))
    confident = [d for d in segmentations[ZEBRA_IMAGE_ID].detections if d.score >= 0.25]
    assert {d.label_name for d in confident} == {coco.cats[a["category_id"]]["name"] for a in truth} == {"zebra"}
    best = confident[0]
    truth_rles = [coco.annToRLE(a) for a in truth]
    assert mask_utils.iou([best.mask_rle], truth_rles, [0] * len(truth)).max() > 0.5
    area = mask_utils.area(best.mask_rle)
    assert 0 < area <= (best.box.width + 1) * (best.box.height + 1)


def test_detection_gives_the_same_boxes_without_masks(model: YoloV5Seg, eval_set: EvalSet,
                                                      segmentations: Dict[int, TaskResult]) -> None:
    image = zebra_image(eval_set)
    size = (int(image.shape[-2]), int(image.shape[-1]))
    detected = model.infer_prepared([model.model_input(image)], Task.DETECTION, sizes=[size])[0]
    segmented = segmentations[ZEBRA_IMAGE_ID]
    assert detected.task == "detection" and len(detected.detections) == len(segmented.detections) > 0
    for d, s in zip(detected.detections, segmented.detections):
        assert d.mask_rle is None
        assert (d.label, d.label_name) == (s.label, s.label_name)
        assert d.score == pytest.approx(s.score, abs=1e-5)
        assert d.box.to_json() == pytest.approx(s.box.to_json(), abs=1e-3)


def test_a_batch_gives_the_results_of_single_images(model: YoloV5Seg, eval_set: EvalSet,
                                                    segmentations: Dict[int, TaskResult]) -> None:
    items = [item for item in eval_set.images if item.image_id in (ZEBRA_IMAGE_ID, BUS_IMAGE_ID)]
    images = [load_image(item.path) for item in items]
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    batched = model.infer_prepared([model.model_input(image) for image in images], Task.DETECTION, sizes=sizes)
    for item, result in zip(items, batched):
        confident = [d for d in result.detections if d.score >= 0.25]
        single = [d for d in segmentations[item.image_id].detections if d.score >= 0.25]
        assert [d.label for d in confident] == [d.label for d in single] and confident
        for d, s in zip(confident, single):
            assert d.score == pytest.approx(s.score, abs=1e-4)
            assert d.box.to_json() == pytest.approx(s.box.to_json(), abs=1e-2)


def test_masks_follow_any_requested_size(model: YoloV5Seg, eval_set: EvalSet) -> None:
    result = model.infer([zebra_image(eval_set)], Task.SEGMENTATION, sizes=[(100, 150)])[0]
    assert (result.width, result.height) == (150, 100)
    assert result.detections and all(d.mask_rle["size"] == [100, 150] for d in result.detections)
    assert all(0 <= d.box.x0 <= d.box.x1 <= 150 and 0 <= d.box.y0 <= d.box.y1 <= 100 for d in result.detections)


def test_torch_graph_matches_the_ncnn_package(model: YoloV5Seg, model_files: Tuple[Path, Path],
                                              eval_set: EvalSet) -> None:
    ncnn = pytest.importorskip("ncnn", reason="the PyPI ncnn package runs the reference")
    canvas, _ = letterbox(model.model_input(zebra_image(eval_set)), (INPUT_SIZE, INPUT_SIZE), center=True)
    with torch.inference_mode():
        ours = model.network(channels_last(canvas[None]), outputs=(*HEAD_BLOBS, PROTO_BLOB))
    net = ncnn.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(model_files[0])) == 0 and net.load_model(str(model_files[1])) == 0
    extractor = net.create_extractor()
    image = ncnn.Mat(np.ascontiguousarray(canvas.numpy()))  # kept alive while the extractor runs
    extractor.input("images", image)
    for blob, value in ours.items():
        status, reference = extractor.extract(blob)
        reference = torch.from_numpy(np.array(reference).copy())
        assert status == 0 and reference.shape == value.shape[1:]
        difference = (reference - value[0]).abs().max().item()
        print(f"blob {blob} {tuple(reference.shape)}: max |torch - ncnn| = {difference:.2e}")
        assert difference <= NCNN_TOLERANCE


def test_gradients_reach_the_input_and_not_the_weights(model: YoloV5Seg) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 128, 160, generator=generator)
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=generator)).clamp(0, 1).requires_grad_(True)
    features = model.features(x_hat)
    assert [tuple(f.shape) for f in features] == [(2, 64, 16, 20), (2, 128, 8, 10), (2, 256, 4, 5)]
    assert len(model.feature_names) == 3
    distortion = model.distortion(x, x_hat)
    distortion.backward()
    assert torch.isfinite(distortion) and distortion.item() > 0
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    with pytest.raises(InvalidInputError, match="multiples of 32"):
        model.features(torch.rand(1, 3, 100, 128))


def _models_dir(tmp_path: Path, param: bytes, weights: bytes) -> Path:
    folder = tmp_path / "models"
    target = folder / PARAM.path
    target.parent.mkdir(parents=True)
    target.write_bytes(param)
    (folder / BIN.path).write_bytes(weights)
    return folder


def _unknown_layer(param: bytes) -> bytes:
    return param.replace(b"Swish                    Mul_2 ", b"HardSwish2               Mul_2 ", 1)


def _tampered(weights: bytes) -> bytes:
    return weights[:1000] + bytes([weights[1000] ^ 0xFF]) + weights[1001:]


@pytest.mark.parametrize("damage", ["tampered bin", "truncated bin", "param with an unknown layer"])
def test_damaged_files_are_refused_with_one_clear_error(tmp_path: Path, model_files: Tuple[Path, Path],
                                                        damage: str) -> None:
    param, weights = model_files[0].read_bytes(), model_files[1].read_bytes()
    files = {"tampered bin": (param, _tampered(weights)), "truncated bin": (param, weights[:-4096]),
             "param with an unknown layer": (_unknown_layer(param), weights)}[damage]
    options = ModelOptions(models_dir=_models_dir(tmp_path, *files))
    with pytest.raises(InvalidInputError, match="SHA-256") as error:
        load_task_model(Task.SEGMENTATION, NAME, options)
    assert "\n" not in str(error.value) and "refusing" in str(error.value)


def test_the_reader_names_what_does_not_fit(model_files: Tuple[Path, Path]) -> None:
    param, weights = read_verified(PARAM), read_verified(BIN)
    cases = [
        ((_unknown_layer(param), weights), r"layer Mul_2 \(HardSwish2\): layer type 'HardSwish2' is not supported"),
        ((param, weights[:-4096]), r"ends \(\d+ bytes\) inside the weights of layer Conv_241"),
        ((param, weights + bytes(8)), "8 bytes are left after the last layer's weights"),
        ((b"7767518\n" + param.split(b"\n", 1)[1], weights), "bad magic '7767518'"),
        ((param.replace(b"181 206", b"181 207", 1), weights), "announces 207 blobs"),
        ((param.replace(b"6=22464", b"6=22465", 1), weights), r"Conv_209 \(Convolution\): weight_data_size 22465"),
    ]
    for (bad_param, bad_weights), message in cases:
        with pytest.raises(InvalidInputError, match=message) as error:
            load_ncnn(bad_param, bad_weights, NAME)
        assert "\n" not in str(error.value)


def test_a_missing_folder_names_the_file_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError) as error:
        load_task_model(Task.SEGMENTATION, NAME, ModelOptions(models_dir=tmp_path / "absent"))
    assert PARAM.path in str(error.value) and "--models-dir" in str(error.value)


def test_random_weights_build_are_labelled_and_differ(model: YoloV5Seg) -> None:
    random = [load_task_model(Task.SEGMENTATION, NAME, ModelOptions(random_weights=True, seed=seed)) for seed in (0, 1)]
    for candidate in random:
        assert RANDOM_WEIGHTS_LABEL in candidate.weights_label and not candidate.pretrained
        assert candidate.describe()["weights"] == candidate.weights_label
    first = [m.network.layer("Conv_0").weight for m in (model, *random)]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    again = load_task_model(Task.SEGMENTATION, NAME, ModelOptions(random_weights=True, seed=0))
    assert torch.equal(again.network.layer("Conv_0").weight, first[1])
    assert all(torch.isfinite(f).all() for f in random[0].features(torch.rand(1, 3, 64, 64)))


def test_the_reader_runs_squeezenet_as_the_ncnn_package() -> None:
    ncnn = pytest.importorskip("ncnn", reason="the PyPI ncnn package runs the reference")
    if locate(SQUEEZENET_PARAM) is None or locate(SQUEEZENET_BIN) is None:
        pytest.skip("SqueezeNet ncnn files not found in ../shared/models")
    network = load_ncnn(read_verified(SQUEEZENET_PARAM), read_verified(SQUEEZENET_BIN), "squeezenet")
    x = torch.rand(1, 3, 227, 227, generator=torch.Generator().manual_seed(0)) * 255 - 117
    with torch.inference_mode():
        ours = network(x, outputs=("pool1", "prob"))  # ceil-mode pooling, ReLU convolutions, global pooling, softmax
    net = ncnn.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(locate(SQUEEZENET_PARAM))) == 0 and net.load_model(str(locate(SQUEEZENET_BIN))) == 0
    image = ncnn.Mat(np.ascontiguousarray(x[0].numpy()))
    for blob, value in ours.items():
        extractor = net.create_extractor()  # one per blob: light mode frees the intermediate ones
        extractor.input("data", image)
        reference = torch.from_numpy(np.array(extractor.extract(blob)[1]).copy())
        assert reference.shape == value.shape[1:]
        assert torch.allclose(reference, value[0], rtol=1e-5, atol=1e-4)
