"""The task-model registry, the paper's torchvision models and the detectron2 entries.

The torchvision models run with seeded random weights on small real COCO frames (short
side 256, few proposals) to stay fast on a CPU; the code paths are those of full-size
frames. Pretrained loading is exercised from a torch hub cache filled with locally made
checkpoints under the real file names. The real small models of ``../shared/models`` have
their own test files (``test_taskmodel_*.py``); SqueezeNet's is here.
"""

from __future__ import annotations

import io
import json
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.evaluation.datasets import open_eval_set
from icmh.images import load_image, to_uint8
from icmh.results import Box, ClassScore, Detection, TaskResult
from icmh.taskmodels import (DEFAULT_MODELS, RANDOM_WEIGHTS_LABEL, TASK_MODELS, ModelOptions, coco,
                             default_model_name, get_task_model_spec, load_task_model)
from icmh.taskmodels.detectron2_models import FASTER_RCNN_3X, MASK_RCNN_3X, import_detectron2, read_zoo_pickle
from icmh.taskmodels.files import locate
from icmh.taskmodels.squeezenet import WEIGHTS as SQUEEZENET_WEIGHTS
from icmh.taskmodels.torchvision_models import FASTER_RCNN, MASK_RCNN, RESNET50
from icmh.tasks import Task


SHORT_SIDE = 256
FAST_DETECTOR = dict(min_size=SHORT_SIDE, max_size=384, max_proposals=50, max_detections=10)
RANDOM = ModelOptions(random_weights=True)


def _detectron2_importable() -> bool:
    try:
        import_detectron2("x")
    except InvalidInputError:
        return False
    return True


@pytest.fixture(scope="module")
def images(data_dir):
    """Two real COCO frames of different shapes (short side 256)."""
    files = sorted((data_dir / "coco-mini" / "val2017").glob("*.jpg"))[:2]
    if len(files) < 2:
        pytest.skip(f"coco-mini images not found in {data_dir} (set ICMH_DATA_DIR)")
    frames = []
    for path in files:
        image = load_image(path)
        scale = SHORT_SIDE / min(image.shape[-2:])
        size = [round(image.shape[-2] * scale), round(image.shape[-1] * scale)]
        frames.append(torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                                      align_corners=False)[0].clamp(0, 1))
    assert frames[0].shape != frames[1].shape  # so that the order of results shows
    return frames


def _rcnn(task: Task, name: str, **options):
    return load_task_model(task, name, ModelOptions(random_weights=True, score_threshold=0.0, **FAST_DETECTOR,
                                                    **options))


@pytest.fixture(scope="module")
def detector():
    return _rcnn(Task.DETECTION, "fasterrcnn_resnet50_fpn")


@pytest.fixture(scope="module")
def segmenter():
    return _rcnn(Task.SEGMENTATION, "maskrcnn_resnet50_fpn")


@pytest.fixture(scope="module")
def classifier():
    return load_task_model(Task.CLASSIFICATION, "resnet50", RANDOM)


@pytest.fixture(scope="module")
def detection_results(detector, images):
    return detector.infer(images)


@pytest.fixture(scope="module")
def segmentation_results(segmenter, images):
    return segmenter.infer(images)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, downloads off, and any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("ICMH_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def _check_frame(result: TaskResult, task: str, image: torch.Tensor) -> None:
    assert result.task == task
    assert (result.height, result.width) == tuple(image.shape[-2:])


def _check_detections(result: TaskResult) -> None:
    scores = [d.score for d in result.detections]
    assert scores == sorted(scores, reverse=True)
    names = coco.category_names()
    for found in result.detections:
        assert 0.0 <= found.score <= 1.0
        box = found.box
        assert 0 <= box.x0 <= box.x1 <= result.width and 0 <= box.y0 <= box.y1 <= result.height
        assert coco.is_category(found.label) and found.label_name == names[found.label]


# -- the registry ---------------------------------------------------------------------------------
def test_every_task_has_a_default_and_every_default_is_registered():
    for task in Task:
        assert DEFAULT_MODELS[task] and all(name in TASK_MODELS for name in DEFAULT_MODELS[task])
        assert all(task in TASK_MODELS[name].tasks for name in DEFAULT_MODELS[task])
    names = {spec.name for spec in TASK_MODELS.values()}
    assert {"yolox-nano", "yolov5n-seg", "squeezenet1_1", "mobilenet-v2", "fasterrcnn_resnet50_fpn",
            "maskrcnn_resnet50_fpn", "resnet50", "faster_rcnn_R_50_FPN_3x", "mask_rcnn_R_50_FPN_3x", "png"} <= names


def test_defaults_are_the_real_small_models_where_their_files_are_and_torchvision_elsewhere(tmp_path):
    present = {task: DEFAULT_MODELS[task][0] for task in (Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION)}
    if not all(TASK_MODELS[name].files_present() for name in present.values()):
        pytest.skip("../shared/models is not here (set ICMH_MODELS_DIR)")
    for task, name in present.items():
        assert default_model_name(task) == name
    empty = tmp_path / "no-models"
    empty.mkdir()
    assert default_model_name(Task.DETECTION, empty) == "fasterrcnn_resnet50_fpn"
    assert default_model_name(Task.SEGMENTATION, empty) == "maskrcnn_resnet50_fpn"
    assert default_model_name(Task.CLASSIFICATION, empty) == "resnet50"
    assert default_model_name(Task.HUMAN, empty) == "png"


def test_unknown_names_and_models_of_another_task_are_refused():
    with pytest.raises(InvalidInputError, match="unknown task model 'yolo9000'.*yolox-nano"):
        get_task_model_spec("yolo9000")
    with pytest.raises(InvalidInputError, match="resnet50 does not do detection"):
        load_task_model(Task.DETECTION, "resnet50", RANDOM)
    with pytest.raises(InvalidInputError, match="unknown task"):
        load_task_model("depth", None, RANDOM)


# -- the torchvision entries ----------------------------------------------------------------------
def test_detection_returns_one_result_per_image_in_order(detector, detection_results, images):
    assert detector.name == "fasterrcnn_resnet50_fpn" and detector.tasks == (Task.DETECTION,)
    assert detector.weights_label.startswith(RANDOM_WEIGHTS_LABEL) and not detector.pretrained
    assert len(detection_results) == len(images)
    for result, image in zip(detection_results, images):
        _check_frame(result, "detection", image)
        _check_detections(result)
        assert result.classes == [] and result.image_png is None
        assert all(found.mask_rle is None for found in result.detections)
        assert len(result.detections) <= FAST_DETECTOR["max_detections"]
    assert any(result.detections for result in detection_results)


def test_segmentation_masks_decode_to_the_image_size_and_match_the_model(segmenter, segmentation_results, images):
    assert len(segmentation_results) == len(images)
    for result, image in zip(segmentation_results, images):
        _check_frame(result, "segmentation", image)
        _check_detections(result)
        assert result.detections, "Mask R-CNN at score threshold 0 found nothing"
        for found in result.detections:
            assert found.mask_rle["size"] == [result.height, result.width]
            mask = mask_utils.decode({"size": found.mask_rle["size"], "counts": found.mask_rle["counts"].encode()})
            assert mask.shape == (result.height, result.width) and mask.dtype == np.uint8
    # the RLE holds the model's own masks (thresholded at 0.5), pixel for pixel, in result order
    with torch.inference_mode():
        raw = segmenter.detector([images[0]])[0]
    keep = sorted((i for i, label in enumerate(raw["labels"].tolist()) if coco.is_category(label)),
                  key=lambda i: -float(raw["scores"][i]))
    expected = (raw["masks"][keep, 0] > 0.5).numpy().astype(np.uint8)
    decoded = np.stack([mask_utils.decode({"size": d.mask_rle["size"], "counts": d.mask_rle["counts"].encode()})
                        for d in segmentation_results[0].detections])
    assert decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)
    assert expected.any(), "all masks empty: the comparison would show nothing"


def test_results_are_reported_in_the_size_asked_for(detector, images):
    """Evaluation runs a model on a resized copy and asks for the original size: boxes scale with it."""
    image = images[0]
    own = detector.infer_prepared([image])[0]
    doubled = detector.infer_prepared([image], sizes=[(2 * image.shape[-2], 2 * image.shape[-1])])[0]
    assert (doubled.height, doubled.width) == (2 * own.height, 2 * own.width)
    assert own.detections and len(own.detections) == len(doubled.detections)
    for a, b in zip(own.detections, doubled.detections):
        assert b.box.to_json() == pytest.approx([2 * v for v in a.box.to_json()], rel=1e-5, abs=1e-3)


def test_classification_returns_top5_imagenet_classes_and_batches_exactly(classifier, images):
    results = classifier.infer(images)
    categories = RESNET50.weights.meta["categories"]
    assert len(results) == len(images)
    for result, image in zip(results, images):
        _check_frame(result, "classification", image)
        assert len(result.classes) == 5 and result.detections == []
        assert all(0 <= c.index < 1000 and c.name == categories[c.index] for c in result.classes)
        scores = [c.score for c in result.classes]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores) and sum(scores) <= 1 + 1e-5
    single = classifier.infer(images[1:])[0]
    assert [c.index for c in single.classes] == [c.index for c in results[1].classes]
    assert [c.score for c in single.classes] == pytest.approx([c.score for c in results[1].classes], abs=1e-5)


def test_classification_uses_the_weights_own_preprocessing(classifier, images):
    transform = RESNET50.weights.transforms()  # resize 256, centre crop 224, ImageNet normalisation
    assert classifier.model_input(images[0]).shape == (3, 224, 224)
    with torch.inference_mode():
        expected = classifier.network(torch.stack([transform(image) for image in images])).softmax(dim=1)
    for result, probabilities in zip(classifier.infer(images), expected):
        top = probabilities.topk(5)
        assert [c.index for c in result.classes] == top.indices.tolist()
        assert [c.score for c in result.classes] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_human_returns_a_png_that_decodes_to_the_image(images):
    model = load_task_model(Task.HUMAN)
    assert model.name == "png"
    results = model.infer(images)
    assert len(results) == len(images)
    for result, image in zip(results, images):
        _check_frame(result, "human", image)
        assert result.image_png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(result.image_png)) as png:
            decoded = np.asarray(png.convert("RGB"))
        assert np.array_equal(decoded, to_uint8(image).permute(1, 2, 0).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_models_run_on_cuda_and_return_the_same_structures(images):
    frames = [image.cuda() for image in images]
    segmenter = _rcnn(Task.SEGMENTATION, "maskrcnn_resnet50_fpn", device="cuda")
    for result, image in zip(segmenter.infer(frames), images):
        _check_frame(result, "segmentation", image)
        assert result.detections, "Mask R-CNN at score threshold 0 found nothing"
        _check_detections(result)
    classifier = load_task_model(Task.CLASSIFICATION, "resnet50", ModelOptions(random_weights=True, device="cuda"))
    assert all(len(result.classes) == 5 for result in classifier.infer(frames))


def test_bad_image_tensors_are_refused(classifier):
    with pytest.raises(InvalidInputError, match="image 1 of the batch"):
        classifier.infer([torch.rand(3, 8, 8), torch.rand(1, 8, 8)])
    assert classifier.infer([]) == []


def test_features_are_differentiable_and_the_model_stays_frozen(detector, classifier):
    x = torch.rand(1, 3, 64, 64)
    for model, levels in ((detector, 5), (classifier, 4)):
        assert len(model.feature_names) == levels and len(model.features(x)) == levels
        x_hat = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
        loss = model.distortion(x, x_hat)
        loss.backward()
        assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
        assert all(p.grad is None and not p.requires_grad for p in model.parameters())
        assert not model.training


def test_task_result_json_round_trip(segmentation_results, classifier, images):
    results = list(segmentation_results) + classifier.infer(images[:1]) + load_task_model(Task.HUMAN).infer(images[:1])
    for result in results:
        text = json.dumps(result.to_json())
        assert TaskResult.from_json(json.loads(text)) == result
    manual = TaskResult("detection", 4, 3, [Detection(Box(0, 0, 1.5, 2), 1, "person", 0.25)], [ClassScore(3, "x", 0.5)],
                        model="yolox-nano")
    assert TaskResult.from_json(json.loads(json.dumps(manual.to_json()))) == manual


@pytest.mark.parametrize("data", [
    {"task": "detection", "width": 4},
    {"task": "detection", "width": 4, "height": 3, "detections": [{"box": [0, 0, 1], "label": 1}]},
    {"task": "human", "width": 4, "height": 3, "image_png_base64": "not base64!"},
])
def test_malformed_task_result_json_is_refused(data):
    with pytest.raises(InvalidInputError):
        TaskResult.from_json(data)


def test_coco_labels_are_the_category_ids_of_the_annotations(data_dir):
    ids, names = coco.category_ids(), coco.category_names()
    assert len(ids) == 80 and ids[0] == 1 and ids[-1] == 90 and names[1] == "person"
    assert coco.contiguous_to_category_id()[0] == 1 and coco.contiguous_to_category_id()[79] == 90
    annotations = data_dir / "coco-mini" / "annotations" / "instances_val2017.json"
    if not annotations.is_file():
        pytest.skip(f"{annotations} not found (set ICMH_DATA_DIR)")
    categories = json.loads(annotations.read_text())["categories"]
    assert {c["id"]: c["name"] for c in categories} == {i: names[i] for i in ids}


def test_weight_file_names_are_torchvisions():
    assert FASTER_RCNN.file_name == "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    assert MASK_RCNN.file_name == "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert RESNET50.file_name == "resnet50-0676ba61.pth"


@pytest.mark.parametrize("task, spec", [(Task.DETECTION, FASTER_RCNN), (Task.SEGMENTATION, MASK_RCNN),
                                        (Task.CLASSIFICATION, RESNET50)])
def test_missing_pretrained_weights_name_the_file_and_folder(empty_torch_home, task, spec):
    with pytest.raises(WeightsMissingError) as caught:
        load_task_model(task, spec.name)
    message = str(caught.value)
    assert "\n" not in message
    assert spec.file_name in message and str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--random-weights" in message and "--model" in message


def test_failed_download_is_reported_as_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ICMH_OFFLINE", raising=False)
    urls = []

    def unreachable(url, dst, *args, **kwargs):
        urls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(WeightsMissingError, match="download failed: .*no route to host.*--random-weights"):
        load_task_model(Task.CLASSIFICATION, "resnet50")
    assert urls == [RESNET50.weights.url]


def test_prefilled_torch_hub_cache_loads_pretrained_classifier(empty_torch_home, classifier, images):
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    local = load_task_model(Task.CLASSIFICATION, "resnet50", ModelOptions(random_weights=True, seed=7))
    torch.save(local.network.state_dict(), folder / RESNET50.file_name)

    loaded = load_task_model(Task.CLASSIFICATION, "resnet50")
    assert loaded.pretrained and RESNET50.file_name in loaded.weights_label
    assert RANDOM_WEIGHTS_LABEL not in loaded.weights_label
    assert loaded.infer(images[:1]) == local.infer(images[:1])
    assert loaded.infer(images[:1]) != classifier.infer(images[:1])  # seed 7's weights, not seed 0's

    explicit = load_task_model(Task.CLASSIFICATION, "resnet50", ModelOptions(weights_path=folder / RESNET50.file_name))
    assert explicit.pretrained and str(folder) in explicit.weights_label


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(InvalidInputError, match="do not fit resnet50"):
        load_task_model(Task.CLASSIFICATION, "resnet50", ModelOptions(weights_path=path))


def test_prefilled_torch_hub_cache_loads_pretrained_detector(empty_torch_home, detector, images):
    # a torchvision COCO_V1 checkpoint is a state dict of the builder's trained architecture:
    # frozen batch norm with eps 0; a locally made one (plain batch norm) must load into it strictly
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(detector.detector.state_dict(), folder / FASTER_RCNN.file_name)
    loaded = load_task_model(Task.DETECTION, "fasterrcnn_resnet50_fpn", ModelOptions(score_threshold=0.0,
                                                                                     **FAST_DETECTOR))
    assert loaded.pretrained and FASTER_RCNN.file_name in loaded.weights_label
    frozen = [m for m in loaded.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert frozen and all(m.eps == 0.0 for m in frozen)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    result = loaded.infer(images[:1])[0]
    _check_frame(result, "detection", images[0])
    _check_detections(result)
    assert result.detections


def test_random_weights_are_seeded(classifier):
    again = load_task_model(Task.CLASSIFICATION, "resnet50", RANDOM)
    other = load_task_model(Task.CLASSIFICATION, "resnet50", ModelOptions(random_weights=True, seed=1))
    state, same, different = classifier.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not torch.equal(state["network.fc.weight"], different["network.fc.weight"])


# -- SqueezeNet 1.1 (../shared/models) --------------------------------------------------------------
@pytest.fixture(scope="module")
def squeezenet():
    if locate(SQUEEZENET_WEIGHTS) is None:
        pytest.skip("squeezenet1_1 weights not found (set ICMH_MODELS_DIR to ../shared/models)")
    return load_task_model(Task.CLASSIFICATION, "squeezenet1_1")


def test_squeezenet_reproduces_its_imagenet_accuracy(squeezenet, data_dir):
    folder = data_dir / "imagenet-100"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found (set ICMH_DATA_DIR)")
    eval_set = open_eval_set(Task.CLASSIFICATION, folder)
    inputs = [squeezenet.model_input(load_image(item.path)) for item in eval_set.images]
    results = squeezenet.infer_prepared(inputs)
    top1 = sum(r.classes[0].index == item.label for r, item in zip(results, eval_set.images))
    top5 = sum(item.label in [c.index for c in r.classes] for r, item in zip(results, eval_set.images))
    assert len(results) == 100
    assert 66 <= top1 <= 70, top1  # measured independently with the original model: 68 % ± 2
    assert top5 >= 86, top5
    assert squeezenet.pretrained and "squeezenet1_1-torchvision-fp16.pt" in squeezenet.weights_label


def test_squeezenet_features_are_differentiable(squeezenet):
    x = torch.rand(2, 3, 64, 96)
    features = squeezenet.features(x)
    assert [f.shape[-1] for f in features] == [96 // 4 - 1, 96 // 8 - 1, 96 // 16 - 1] or len(features) == 3
    x_hat = x.clone().requires_grad_(True)
    (squeezenet.distortion(x, x_hat + 0.01)).backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0


def test_a_damaged_squeezenet_file_is_refused(tmp_path):
    source = locate(SQUEEZENET_WEIGHTS)
    if source is None:
        pytest.skip("squeezenet1_1 weights not found")
    target = tmp_path / SQUEEZENET_WEIGHTS.path
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(InvalidInputError, match="SHA-256"):
        load_task_model(Task.CLASSIFICATION, "squeezenet1_1", ModelOptions(models_dir=tmp_path))
    target.unlink()
    with pytest.raises(WeightsMissingError, match="squeezenet1_1-torchvision-fp16.pt.*--models-dir"):
        load_task_model(Task.CLASSIFICATION, "squeezenet1_1", ModelOptions(models_dir=tmp_path))


# -- detectron2 ----------------------------------------------------------------------------------
@pytest.mark.skipif(_detectron2_importable(), reason="detectron2 is installed here")
def test_detectron2_models_are_refused_with_the_torchvision_model_to_use_instead():
    with pytest.raises(InvalidInputError, match="detectron2 is not usable here.*--model fasterrcnn_resnet50_fpn"):
        load_task_model(Task.DETECTION, "faster_rcnn_R_50_FPN_3x", RANDOM)
    with pytest.raises(InvalidInputError, match="--model maskrcnn_resnet50_fpn"):
        load_task_model(Task.SEGMENTATION, "mask_rcnn_R_50_FPN_3x", RANDOM)


def test_detectron2_uses_the_papers_configs():
    assert FASTER_RCNN_3X.config_path == "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
    assert MASK_RCNN_3X.config_path == "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    assert FASTER_RCNN_3X.weights_url == (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/"
        "model_final_280758.pkl")
    assert MASK_RCNN_3X.file_name == "model_final_f10217.pkl"
    assert get_task_model_spec("mask_rcnn_R_50_FPN_3x").tasks == (Task.SEGMENTATION, Task.DETECTION)


def test_detectron2_zoo_pickles_are_read_as_arrays_only(tmp_path):
    arrays = {"backbone.stem.conv1.weight": np.ones((2, 3), np.float32), "roi_heads.x": np.arange(4)}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"zoo{protocol}.pkl"
        path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, protocol=protocol))
        checkpoint = read_zoo_pickle(path)
        assert checkpoint["__author__"] == "Detectron2 Model Zoo"
        assert all(np.array_equal(checkpoint["model"][k], v) for k, v in arrays.items())
    caffe2 = tmp_path / "caffe2.pkl"
    caffe2.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones(2), "conv1_w_momentum": np.ones(2)}}))
    assert read_zoo_pickle(caffe2) == {"model": {"conv1_w": pytest.approx(np.ones(2))}, "__author__": "Caffe2",
                                       "matching_heuristics": True}

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": Evil(), "__author__": "x"}))
    with pytest.raises(InvalidInputError, match="refusing to load"):
        read_zoo_pickle(evil)
    assert not (tmp_path / "pwned").exists()
