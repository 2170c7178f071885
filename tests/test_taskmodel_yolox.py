"""The ``yolox-nano`` task model: COCO accuracy, agreement with onnxruntime, gradients, file checks.

Needs the real model file (``../shared/models`` or ``$ICMH_MODELS_DIR``) and the coco-mini
images (``../shared/data`` or ``$ICMH_DATA_DIR``); skips with a message without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List

import pytest
import torch
from torchvision.ops import box_iou

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.evaluation.datasets import EvalSet, open_eval_set
from icmh.evaluation.scoring import DetectionScorer
from icmh.images import load_image
from icmh.paths import default_data_dir
from icmh.results import TaskResult
from icmh.taskmodels import (
    EVAL_SCORE_THRESHOLD,
    RANDOM_WEIGHTS_LABEL,
    ModelOptions,
    default_model_name,
    get_task_model_spec,
    load_task_model,
)
from icmh.taskmodels.files import locate, read_verified
from icmh.taskmodels.geometry import letterbox
from icmh.taskmodels.yolox import INPUT_SIZE, YOLOX_FILE, YoloxNano, decode, select, to_network_input
from icmh.tasks import Task

# onnx2torch's Slice indexes with a list (a deprecation warning of torch; results checked below)
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

MIN_AP, MIN_AP50 = 29.0, 48.0  # measured: AP 31.2, AP50 50.8 on the 79 annotated coco-mini val images
RAW_TOLERANCE = 2e-3  # max |torch − onnxruntime| of the raw 1×3549×85 outputs (measured ≤ 5.6e-4 over the 79 images)
BOX_TOLERANCE = 0.5  # pixels on the 416 canvas, after decoding
KNOWN_IMAGE_ID, KNOWN_CLASSES = 519208, {"person", "elephant"}  # a man beside an elephant


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core test machine two threads run ~15× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_file() -> Path:
    """The ONNX file; skips when it is not in the models folder."""
    path = locate(YOLOX_FILE)
    if path is None:
        pytest.skip(f"{YOLOX_FILE.path} not found (set ICMH_MODELS_DIR to the folder of ../shared/models)")
    return path


@pytest.fixture(scope="module")
def coco_set() -> EvalSet:
    """The annotated coco-mini val images; skips when the data folder lacks them."""
    folder = default_data_dir() / "coco-mini"
    if not folder.is_dir():
        pytest.skip(f"coco-mini not found in {folder.parent} (set ICMH_DATA_DIR)")
    return open_eval_set(Task.DETECTION, folder)


@pytest.fixture(scope="module")
def model(model_file: Path) -> YoloxNano:
    """The pretrained model with the default options (score threshold 0.25)."""
    return load_task_model(Task.DETECTION, "yolox-nano", ModelOptions())


@pytest.fixture(scope="module")
def canvases(model: YoloxNano, coco_set: EvalSet) -> torch.Tensor:
    """Two coco-mini images as the network sees them: 2×3×416×416 letterboxed RGB in [0, 1]."""
    images = [model.model_input(load_image(item.path)) for item in coco_set.images[:2]]
    return torch.stack([letterbox(image, (INPUT_SIZE, INPUT_SIZE), center=False)[0] for image in images])


def raw(model: YoloxNano, x: torch.Tensor) -> torch.Tensor:
    """The model's raw N×3549×85 outputs for canvases ``x``, without gradients."""
    with torch.inference_mode():
        return model.raw_outputs(x)


def detection_classes(result: TaskResult) -> List[str]:
    """The class names of ``result``'s detections, best first."""
    return [d.label_name for d in result.detections]


def test_registry_entry_is_the_default_detector_when_its_file_is_present(model_file: Path) -> None:
    spec = get_task_model_spec("yolox-nano")
    assert spec.tasks == (Task.DETECTION,) and spec.files == (YOLOX_FILE,)
    assert spec.stands_in_for == "Faster R-CNN R50-FPN"
    assert default_model_name(Task.DETECTION) == "yolox-nano"


def test_coco_mini_box_ap_with_the_evaluation_protocol(model_file: Path, coco_set: EvalSet) -> None:
    evaluated = load_task_model(Task.DETECTION, "yolox-nano",
                                ModelOptions(score_threshold=EVAL_SCORE_THRESHOLD, max_detections=100))
    scorer = DetectionScorer(coco_set.coco)
    for item in coco_set.images:
        image = load_image(item.path)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        scorer.add(item.image_id, evaluated.infer_prepared([evaluated.model_input(image)], sizes=[size])[0])
    metrics = scorer.compute()
    assert len(coco_set.images) == 79
    assert metrics["AP"] >= MIN_AP and metrics["AP50"] >= MIN_AP50, metrics


def test_raw_outputs_match_onnxruntime(model: YoloxNano, canvases: torch.Tensor) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(read_verified(YOLOX_FILE), providers=["CPUExecutionProvider"])
    ours = raw(model, canvases)
    for i in range(canvases.shape[0]):
        (reference,) = session.run(None, {"images": to_network_input(canvases[i:i + 1]).numpy()})
        reference = torch.from_numpy(reference)
        assert reference.shape == ours[i:i + 1].shape == (1, 3549, 85)
        assert (reference - ours[i:i + 1]).abs().max() <= RAW_TOLERANCE
        expected = select(decode(reference, INPUT_SIZE, INPUT_SIZE)[0], 0.25, 100)
        found = select(decode(ours[i:i + 1], INPUT_SIZE, INPUT_SIZE)[0], 0.25, 100)
        assert len(expected[0]) > 0
        assert torch.equal(found[1], expected[1])
        torch.testing.assert_close(found[0], expected[0], atol=BOX_TOLERANCE, rtol=0)
        torch.testing.assert_close(found[2], expected[2], atol=1e-3, rtol=0)


def test_a_batch_gives_the_results_of_single_images(model: YoloxNano, coco_set: EvalSet) -> None:
    inputs = [model.model_input(load_image(item.path)) for item in coco_set.images[:2]]
    assert inputs[0].shape != inputs[1].shape
    batched = model.infer_prepared(inputs)
    single = [model.infer_prepared([image])[0] for image in inputs]
    for one, alone in zip(batched, single):
        assert detection_classes(one) == detection_classes(alone)
        for a, b in zip(one.detections, alone.detections):
            assert a.box.to_json() == pytest.approx(b.box.to_json(), abs=1e-2)


def test_known_objects_are_found_where_annotated(model: YoloxNano, coco_set: EvalSet) -> None:
    item = next(i for i in coco_set.images if i.image_id == KNOWN_IMAGE_ID)
    result = model.infer([load_image(item.path)])[0]
    top = result.detections[:5]
    assert KNOWN_CLASSES <= {d.label_name for d in top}
    annotations = coco_set.coco.loadAnns(coco_set.coco.getAnnIds(imgIds=[KNOWN_IMAGE_ID], iscrowd=False))
    for name in KNOWN_CLASSES:
        detected = torch.tensor([d.box.to_json() for d in top if d.label_name == name])
        truth = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                              (a["bbox"] for a in annotations if coco_set.coco.cats[a["category_id"]]["name"] == name)])
        assert box_iou(detected, truth).max() >= 0.5, name


def test_features_are_the_pafpn_levels_at_strides_8_16_32(model: YoloxNano) -> None:
    features = model.features(torch.rand(2, 3, 256, 192))
    assert len(features) == len(model.feature_names) == 3
    assert [tuple(f.shape) for f in features] == [(2, 64, 32, 24), (2, 128, 16, 12), (2, 256, 8, 6)]


def test_distortion_gradients_reach_the_input_and_not_the_weights(model: YoloxNano) -> None:
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    x_hat.requires_grad_(True)
    model.distortion(x, x_hat).backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_other_tasks_are_refused(model: YoloxNano) -> None:
    with pytest.raises(InvalidInputError, match="does not do classification"):
        model.infer_prepared([torch.rand(3, 32, 32)], task=Task.CLASSIFICATION)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:], id="one-byte-changed"),
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
])
def test_a_damaged_model_file_is_refused(model_file: Path, tmp_path: Path, damage) -> None:
    copy = tmp_path / YOLOX_FILE.path
    copy.parent.mkdir(parents=True)
    copy.write_bytes(damage(model_file.read_bytes()))
    with pytest.raises(InvalidInputError, match="SHA-256"):
        load_task_model(Task.DETECTION, "yolox-nano", ModelOptions(models_dir=tmp_path))


def test_a_missing_model_file_names_the_file_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError, match="yolox_nano.onnx") as error:
        load_task_model(Task.DETECTION, "yolox-nano", ModelOptions(models_dir=tmp_path))
    assert "--models-dir" in str(error.value) and "\n" not in str(error.value)


def test_random_weights_are_labelled_seeded_and_differ_from_the_pretrained_model(
        model: YoloxNano, canvases: torch.Tensor) -> None:
    options = ModelOptions(random_weights=True, seed=3)
    randomized = load_task_model(Task.DETECTION, "yolox-nano", options)
    assert randomized.weights_label.startswith(RANDOM_WEIGHTS_LABEL) and not randomized.pretrained
    assert model.pretrained and RANDOM_WEIGHTS_LABEL not in model.weights_label
    outputs = raw(randomized, canvases[:1])
    assert (outputs - raw(model, canvases[:1])).abs().max() > 0.1
    assert torch.equal(outputs, raw(load_task_model(Task.DETECTION, "yolox-nano", options), canvases[:1]))
