"""The ``mobilenet-v2`` task model: the uint8 TFLite file of ../shared/models, dequantised into PyTorch.

Accuracy on imagenet-100 with the evaluation protocol, agreement with the TFLite runtime,
training features and gradients, refusal of damaged or missing files, random weights,
and the TFLite reader's errors. Skips with a message when the model file or the images
are absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.evaluation.datasets import open_eval_set
from icmh.images import load_image
from icmh.paths import default_data_dir
from icmh.results import TaskResult
from icmh.tasks import Task
from icmh.taskmodels import RANDOM_WEIGHTS_LABEL, ModelOptions, TaskModel, load_task_model
from icmh.taskmodels.files import locate
from icmh.taskmodels.imagenet import class_names
from icmh.taskmodels.mobilenet import FEATURE_TENSORS, TFLITE_FILE
from icmh.taskmodels.tflite import OPERATOR_BUILDERS, build_network, parse_model, same_padding

BATCH = 16
MIN_TOP1 = 0.83               # README: 85 %; measured here 88 % (the TFLite runtime: 89 %)
MIN_TOP1_AGREEMENT = 95       # of 100 images; measured 98 (emulated uint8 activations vs the runtime)
PROBABILITY_TOLERANCE = 0.15  # max |p_torch − p_tflite| over the top-5 classes of all images; measured 0.107
MEAN_DIFFERENCE = 0.02        # mean of those differences; measured 0.0055
FEATURE_STRIDES = (4, 8, 16, 32)
FEATURE_CHANNELS = (24, 32, 96, 320)


@pytest.fixture(scope="module")
def model_path() -> Path:
    """The TFLite file; skips when it is not found."""
    path = locate(TFLITE_FILE)
    if path is None:
        pytest.skip(f"{TFLITE_FILE.path} not found (set ICMH_MODELS_DIR or put ../shared/models beside the checkout)")
    return path


@pytest.fixture(scope="module")
def model(model_path: Path) -> TaskModel:
    """The pretrained model, built through the registry."""
    return load_task_model(Task.CLASSIFICATION, "mobilenet-v2")


@pytest.fixture(scope="module")
def imagenet() -> Tuple[List[Path], List[int]]:
    """imagenet-100 image paths and their class indexes; skips when absent."""
    folder = default_data_dir() / "imagenet-100"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"imagenet-100 not found in {folder} (set ICMH_DATA_DIR)")
    eval_set = open_eval_set(Task.CLASSIFICATION, folder)
    return [item.path for item in eval_set.images], [int(item.label) for item in eval_set.images]


@pytest.fixture(scope="module")
def prepared(model: TaskModel, imagenet: Tuple[List[Path], List[int]]) -> List[torch.Tensor]:
    """The model inputs (224×224, as evaluation codes them) of the imagenet-100 images."""
    return [model.model_input(load_image(path)) for path in imagenet[0]]


@pytest.fixture(scope="module")
def results(model: TaskModel, prepared: List[torch.Tensor]) -> List[TaskResult]:
    """Inference on the prepared images in batches of 16, as evaluation runs it."""
    out: List[TaskResult] = []
    for start in range(0, len(prepared), BATCH):
        out.extend(model.infer_prepared(prepared[start:start + BATCH]))
    return out


def tflite_probabilities(model_path: Path, images_uint8: np.ndarray) -> np.ndarray:
    """The TFLite runtime's 1001 output probabilities for N×224×224×3 uint8 images."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")
    interpreter = interpreter_module.Interpreter(model_path=str(model_path), num_threads=2)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = target["quantization"]
    out = []
    for image in images_uint8:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        out.append((interpreter.get_tensor(target["index"])[0].astype(np.float64) - zero_point) * scale)
    return np.stack(out)


# -- accuracy and agreement -------------------------------------------------------------------------
def test_top1_on_imagenet100_reaches_the_readme_accuracy(results: List[TaskResult],
                                                         imagenet: Tuple[List[Path], List[int]]) -> None:
    labels = imagenet[1]
    top1 = np.mean([r.classes[0].index == label for r, label in zip(results, labels)])
    assert len(results) == len(labels) == 100
    assert top1 >= MIN_TOP1, f"top-1 {top1:.2f} below {MIN_TOP1}"


def test_results_carry_class_index_and_name(model: TaskModel, results: List[TaskResult]) -> None:
    names = class_names()
    for result in results[:5]:
        assert (result.width, result.height) == (224, 224)
        assert len(result.classes) == model.top_k
        scores = [c.score for c in result.classes]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        assert all(c.name == names[c.index] for c in result.classes)


def test_agrees_with_the_tflite_runtime(model_path: Path, prepared: List[torch.Tensor],
                                        results: List[TaskResult]) -> None:
    # the runtime gets the uint8 image; the model rounds its input to that same grid
    images = torch.stack(prepared).mul(255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    expected = tflite_probabilities(model_path, images)  # N×1001, index 0 the background
    agreeing = sum(result.classes[0].index + 1 == int(p.argmax()) for result, p in zip(results, expected))
    difference = np.array([[abs(c.score - p[c.index + 1]) for c in result.classes]
                           for result, p in zip(results, expected)])
    assert agreeing >= MIN_TOP1_AGREEMENT, f"top-1 agrees on {agreeing}/100 images"
    assert difference.max() <= PROBABILITY_TOLERANCE
    assert difference.mean() <= MEAN_DIFFERENCE


# -- training features ------------------------------------------------------------------------------
def test_features_are_the_block_outputs_at_strides_4_to_32(model: TaskModel) -> None:
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.features(x)
    assert model.feature_names == tuple(name for name, _ in FEATURE_TENSORS)
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // s, 96 // s)
                                                   for c, s in zip(FEATURE_CHANNELS, FEATURE_STRIDES)]


def test_gradients_reach_the_input_through_the_distortion_but_not_the_parameters(model: TaskModel) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 64, 64, generator=generator)
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=generator)).clamp(0, 1).requires_grad_(True)
    distortion = model.distortion(x, x_hat)
    distortion.backward()
    assert torch.isfinite(distortion) and distortion > 0
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


# -- files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_damaged_file_is_refused_with_one_clear_error(model_path: Path, tmp_path: Path, damage: str) -> None:
    data = bytearray(model_path.read_bytes())
    if damage == "tampered":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    copy = tmp_path / TFLITE_FILE.path
    copy.parent.mkdir(parents=True)
    copy.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError) as error:
        load_task_model(Task.CLASSIFICATION, "mobilenet-v2", ModelOptions(models_dir=tmp_path))
    assert "SHA-256" in str(error.value) and "\n" not in str(error.value)


def test_a_missing_file_names_the_file_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError) as error:
        load_task_model(Task.CLASSIFICATION, "mobilenet-v2", ModelOptions(models_dir=tmp_path))
    assert TFLITE_FILE.path in str(error.value) and "--models-dir" in str(error.value)


def test_random_weights_build_are_labelled_and_differ(model: TaskModel, model_path: Path) -> None:
    random_model = load_task_model(Task.CLASSIFICATION, "mobilenet-v2", ModelOptions(random_weights=True, seed=3))
    assert RANDOM_WEIGHTS_LABEL in random_model.weights_label and not random_model.pretrained
    assert model.pretrained and RANDOM_WEIGHTS_LABEL not in model.weights_label
    pairs = list(zip(model.parameters(), random_model.parameters()))
    assert pairs and all(p.shape == q.shape and not torch.equal(p, q) for p, q in pairs)
    (result,) = random_model.infer([torch.rand(3, 300, 240, generator=torch.Generator().manual_seed(2))])
    assert (result.width, result.height) == (240, 300) and len(result.classes) == random_model.top_k


# -- the TFLite reader ------------------------------------------------------------------------------
def test_an_unknown_operator_is_refused_naming_it(model_path: Path) -> None:
    graph = parse_model(model_path.read_bytes())
    builders = {name: build for name, build in OPERATOR_BUILDERS.items() if name != "SOFTMAX"}
    with pytest.raises(InvalidInputError, match="SOFTMAX is not supported"):
        build_network(graph, builders=builders, what="mobilenet.tflite")


@pytest.mark.parametrize("data", [b"", b"not a tflite file at all", b"\x10\x00\x00\x00TFL3" + b"\xff" * 40])
def test_malformed_bytes_are_refused_with_one_clear_error(data: bytes) -> None:
    with pytest.raises(InvalidInputError, match="^bad.tflite: ") as error:
        parse_model(data, "bad.tflite")
    assert "\n" not in str(error.value)


def test_a_truncated_flatbuffer_is_refused_by_the_reader(model_path: Path) -> None:
    data = model_path.read_bytes()
    with pytest.raises(InvalidInputError, match="^cut.tflite: "):
        build_network(parse_model(data[: len(data) // 3], "cut.tflite"), what="cut.tflite")


def test_same_padding_puts_the_extra_pixel_at_the_bottom_right() -> None:
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(8, 1, 2) == (0, 0)
    assert same_padding(5, 3, 1, dilation=2) == (2, 2)


def test_logits_emulate_the_uint8_grid_while_features_run_in_float(model: TaskModel) -> None:
    def on_grid(value: torch.Tensor, tensor: int) -> bool:
        quantize = next(node.quantize for node in model.network.nodes if node.output == tensor)
        steps = value / quantize.scale + quantize.zero_point
        return bool(torch.allclose(steps, steps.round(), atol=1e-3) and steps.min() >= 0 and steps.max() <= 255)

    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        (scores,) = model.network.run(model.normalize(x), (model.logits_tensor,))
        first_feature = model.features(x)[0]
    assert on_grid(scores, model.logits_tensor)
    assert not on_grid(first_feature, model.feature_tensors[0])
