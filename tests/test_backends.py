"""Task backends: real torchvision models (seeded random weights) on real COCO images.

Detectors run on small frames (short side 256, few proposals) to stay fast on a CPU;
the code paths are those of full-size frames. Pretrained loading is exercised from a
torch hub cache filled with locally made checkpoints under the real file names.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from cloud_server.backends import BACKENDS, RANDOM_WEIGHTS_LABEL, build_backend, families
from cloud_server.backends import coco
from cloud_server.backends.detectron2_backend import CONFIGS, import_detectron2, read_zoo_pickle
from cloud_server.backends.torchvision_backends import FASTER_RCNN, MASK_RCNN, RESNET50
from shared.errors import InvalidInputError, WeightsMissingError
from shared.images import load_image, to_uint8
from shared.results import Box, ClassScore, Detection, TaskResult
from shared.tasks import Task
from conftest import smooth_image

SHORT_SIDE = 256
FAST_DETECTOR = dict(min_size=SHORT_SIDE, max_size=384, max_proposals=50, max_detections=10)


def _detectron2_importable() -> bool:
    try:
        import_detectron2()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def images(data_dir):
    """Two real COCO frames of different shapes (short side 256), synthetic ones where COCO is absent."""
    files = sorted((data_dir / "coco-mini" / "val2017").glob("*.jpg"))[:2]
    if len(files) < 2:
        return [smooth_image(256, 352, seed=1, cell=8), smooth_image(320, 256, seed=2, cell=8)]
    frames = []
    for path in files:
        image = load_image(path)
        scale = SHORT_SIDE / min(image.shape[-2:])
        size = [round(image.shape[-2] * scale), round(image.shape[-1] * scale)]
        frames.append(torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                                      align_corners=False)[0].clamp(0, 1))
    assert frames[0].shape != frames[1].shape  # so that the order of results shows
    return frames


@pytest.fixture(scope="module")
def detector():
    return build_backend("detection", random_weights=True, device="cpu", score_threshold=0.0, **FAST_DETECTOR)


@pytest.fixture(scope="module")
def segmenter():
    return build_backend("segmentation", random_weights=True, device="cpu", score_threshold=0.0, **FAST_DETECTOR)


@pytest.fixture(scope="module")
def classifier():
    return build_backend("classification", random_weights=True, device="cpu")


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


def test_registry_has_one_entry_per_family_and_task():
    assert {f"torchvision/{task.value}" for task in Task} <= set(BACKENDS)
    assert {"detectron2/detection", "detectron2/segmentation"} <= set(BACKENDS)
    assert families()[0] == "torchvision"


def test_detection_returns_one_result_per_image_in_order(detector, detection_results, images):
    assert detector.task == "detection" and detector.name == "torchvision fasterrcnn_resnet50_fpn"
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
            assert isinstance(found.mask_rle["counts"], str)
            mask = mask_utils.decode({"size": found.mask_rle["size"], "counts": found.mask_rle["counts"].encode()})
            assert mask.shape == (result.height, result.width) and mask.dtype == np.uint8
    # the RLE holds the model's own masks (thresholded at 0.5), pixel for pixel, in result order
    with torch.inference_mode():
        raw = segmenter.model(list(images))[0]  # the same batch: padding makes batches differ slightly
    keep = sorted((i for i, label in enumerate(raw["labels"].tolist()) if coco.is_category(label)),
                  key=lambda i: -float(raw["scores"][i]))
    expected = (raw["masks"][keep, 0] > 0.5).numpy().astype(np.uint8)
    decoded = np.stack([mask_utils.decode({"size": d.mask_rle["size"], "counts": d.mask_rle["counts"].encode()})
                        for d in segmentation_results[0].detections])
    assert decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)
    assert expected.any(), "all masks empty: the comparison would show nothing"


def test_classification_returns_top5_imagenet_classes(classifier, images):
    results = classifier.infer(images)
    categories = RESNET50.weights.meta["categories"]
    assert len(results) == len(images)
    for result, image in zip(results, images):
        _check_frame(result, "classification", image)
        assert len(result.classes) == 5 and result.detections == []
        assert all(0 <= c.index < 1000 and c.name == categories[c.index] for c in result.classes)
        scores = [c.score for c in result.classes]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores) and sum(scores) <= 1 + 1e-5
    # a batch gives what single images give
    single = classifier.infer(images[1:])[0]
    assert [c.index for c in single.classes] == [c.index for c in results[1].classes]
    assert [c.score for c in single.classes] == pytest.approx([c.score for c in results[1].classes], abs=1e-5)


def test_classification_uses_the_weights_own_preprocessing(classifier, images):
    transform = RESNET50.weights.transforms()  # resize 256, centre crop 224, ImageNet normalisation
    assert classifier.model_input(images[0]).shape == (3, 224, 224)
    with torch.inference_mode():
        expected = classifier.model(torch.stack([transform(image) for image in images])).softmax(dim=1)
    for result, probabilities in zip(classifier.infer(images), expected):
        top = probabilities.topk(5)
        assert [c.index for c in result.classes] == top.indices.tolist()
        assert [c.score for c in result.classes] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_human_returns_a_png_that_decodes_to_the_image(images):
    backend = build_backend("human", random_weights=False, device="cpu")
    results = backend.infer(images)
    assert len(results) == len(images)
    for result, image in zip(results, images):
        _check_frame(result, "human", image)
        assert result.image_png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(result.image_png)) as png:
            decoded = np.asarray(png.convert("RGB"))
        assert np.array_equal(decoded, to_uint8(image).permute(1, 2, 0).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_backends_run_on_cuda_and_return_the_same_structures(images):
    frames = [image.cuda() for image in images]
    segmenter = build_backend("segmentation", random_weights=True, device="cuda", score_threshold=0.0,
                              **FAST_DETECTOR)
    for result, image in zip(segmenter.infer(frames), images):
        _check_frame(result, "segmentation", image)
        _check_detections(result)
        assert all(d.mask_rle["size"] == [result.height, result.width] for d in result.detections)
    classifier = build_backend("classification", random_weights=True, device="cpu").to("cuda")
    assert all(len(result.classes) == 5 for result in classifier.infer(frames))
    human = build_backend("human", random_weights=False, device="cuda")
    assert all(result.image_png for result in human.infer(frames))


def test_bad_image_tensors_are_refused():
    backend = build_backend("human", random_weights=False, device="cpu")
    with pytest.raises(InvalidInputError, match="image 1 of the batch"):
        backend.infer([torch.rand(3, 8, 8), torch.rand(1, 8, 8)])
    assert backend.infer([]) == []
    assert backend.to("cpu") is backend and backend.device == torch.device("cpu")


def test_task_result_json_round_trip(segmentation_results, classifier, images):
    results = list(segmentation_results) + classifier.infer(images[:1])
    results += build_backend("human", random_weights=False, device="cpu").infer(images[:1])
    for result in results:
        text = json.dumps(result.to_json())
        assert TaskResult.from_json(json.loads(text)) == result
    manual = TaskResult("detection", 4, 3, [Detection(Box(0, 0, 1.5, 2), 1, "person", 0.25)], [ClassScore(3, "x", 0.5)])
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
    if annotations.is_file():
        categories = json.loads(annotations.read_text())["categories"]
        assert {c["id"]: c["name"] for c in categories} == {i: names[i] for i in ids}


def test_weight_file_names_are_torchvisions():
    assert FASTER_RCNN.file_name == "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    assert MASK_RCNN.file_name == "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert RESNET50.file_name == "resnet50-0676ba61.pth"


@pytest.mark.parametrize("task, spec", [("detection", FASTER_RCNN), ("segmentation", MASK_RCNN),
                                        ("classification", RESNET50)])
def test_missing_pretrained_weights_name_the_file_and_folder(empty_torch_home, task, spec):
    with pytest.raises(WeightsMissingError) as caught:
        build_backend(task, random_weights=False, device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert spec.file_name in message and str(empty_torch_home / "hub" / "checkpoints") in message
    assert "--random-weights" in message


def test_failed_download_is_reported_as_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ICMH_OFFLINE", raising=False)
    urls = []

    def unreachable(url, dst, *args, **kwargs):
        urls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(WeightsMissingError, match="download failed: .*no route to host.*--random-weights"):
        build_backend("classification", random_weights=False, device="cpu")
    assert urls == [RESNET50.weights.url]


def test_prefilled_torch_hub_cache_loads_pretrained_classifier(empty_torch_home, classifier, images):
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    local = build_backend("classification", random_weights=True, device="cpu", seed=7)
    torch.save(local.model.state_dict(), folder / RESNET50.file_name)

    loaded = build_backend("classification", random_weights=False, device="cpu")
    assert loaded.pretrained and RESNET50.file_name in loaded.weights_label
    assert RANDOM_WEIGHTS_LABEL not in loaded.weights_label
    assert loaded.infer(images[:1]) == local.infer(images[:1])
    assert loaded.infer(images[:1]) != classifier.infer(images[:1])  # seed 7's weights, not seed 0's

    explicit = build_backend("classification", random_weights=False, device="cpu",
                             weights_path=folder / RESNET50.file_name)
    assert explicit.pretrained and str(folder) in explicit.weights_label


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(InvalidInputError, match="do not fit resnet50"):
        build_backend("classification", random_weights=False, device="cpu", weights_path=path)


def test_prefilled_torch_hub_cache_loads_pretrained_detector(empty_torch_home, detector, images):
    # a torchvision COCO_V1 checkpoint is a state dict of the builder's trained architecture:
    # frozen batch norm with eps 0; a locally made one (plain batch norm) must load into it strictly
    folder = empty_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(detector.model.state_dict(), folder / FASTER_RCNN.file_name)
    loaded = build_backend("detection", random_weights=False, device="cpu", score_threshold=0.0, **FAST_DETECTOR)
    assert loaded.pretrained and FASTER_RCNN.file_name in loaded.weights_label
    frozen = [m for m in loaded.model.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert frozen and all(m.eps == 0.0 for m in frozen)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.model.modules())
    result = loaded.infer(images[:1])[0]
    _check_frame(result, "detection", images[0])
    _check_detections(result)
    assert result.detections


def test_random_weights_are_seeded(classifier):
    again = build_backend("classification", random_weights=True, device="cpu")
    other = build_backend("classification", random_weights=True, device="cpu", seed=1)
    state, same, different = classifier.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not torch.equal(state["fc.weight"], different["fc.weight"])


def test_unknown_task_family_or_option_is_refused():
    with pytest.raises(InvalidInputError, match="unknown task"):
        build_backend("depth", random_weights=True, device="cpu")
    with pytest.raises(InvalidInputError, match="unknown backend family"):
        build_backend("detection", random_weights=True, device="cpu", prefer="mmdet")
    with pytest.raises(InvalidInputError, match="bad backend option"):
        build_backend("detection", random_weights=True, device="cpu", anchors=3)


@pytest.mark.skipif(_detectron2_importable(), reason="detectron2 is installed: there is nothing to fall back from")
def test_prefer_detectron2_falls_back_to_torchvision_with_a_warning(caplog, images):
    with caplog.at_level(logging.WARNING, logger="cloud_server.backends"):
        backend = build_backend("detection", random_weights=True, device="cpu", prefer="detectron2",
                                **FAST_DETECTOR)
    assert backend.family == "torchvision" and backend.name == "torchvision fasterrcnn_resnet50_fpn"
    assert any("cannot import detectron2" in r.getMessage() and "torchvision" in r.getMessage()
               for r in caplog.records)


def test_detectron2_has_no_human_or_classification_backend_so_torchvision_serves_them():
    backend = build_backend("human", random_weights=True, device="cpu", prefer="detectron2")
    assert backend.family == "torchvision" and backend.task == "human"


def test_detectron2_uses_the_papers_configs():
    assert CONFIGS[Task.DETECTION].config_path == "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
    assert CONFIGS[Task.SEGMENTATION].config_path == "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    assert CONFIGS[Task.DETECTION].weights_url == (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/"
        "model_final_280758.pkl")
    assert CONFIGS[Task.SEGMENTATION].file_name == "model_final_f10217.pkl"


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
