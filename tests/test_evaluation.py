"""``icmh eval`` and its parts on the real images of ``../shared/data``.

The scorers are checked against answers known by construction (the ground truth scored
as detections gives AP 100 with pycocotools; known pixel errors give known PSNR). The
end-to-end runs use the bundled, trained tiny codec at its qualities and seeded random
task models, so their accuracy figures are not those of trained models; the tests check
that every figure is computed the way it claims (top-1 from labels.csv and AP with
pycocotools' COCOeval recomputed here from the same model's results, rates from the real
bytes) and that every output says RANDOM WEIGHTS.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icmh.evaluation.coders import LearnedCoder, PillowCoder
from icmh.evaluation.datasets import open_eval_set
from icmh.evaluation.scoring import ClassificationScorer, DetectionScorer, FidelityScorer, pseudo_ground_truth, resize_rle
from icmh.cli.main import main
from icmh.codec.adapter_checkpoint import save_adapters
from icmh.errors import InvalidInputError
from icmh.codec.frame_codec import FrameCodec
from icmh.images import load_image, save_image
from icmh.results import Box, Detection, TaskResult
from icmh.tasks import Task
from icmh.codec.weights import load_base_codec
from icmh.taskmodels import EVAL_SCORE_THRESHOLD, TASK_MODELS, ModelOptions, load_task_model
from icmh.taskmodels.torchvision_models import resize_short_side

from support import coco_results, cocoeval_ap, smooth_image

TINY = ["--codec", "mbt2018-mean-tiny"]
BANNER = "RANDOM WEIGHTS"


@pytest.fixture(scope="module")
def coco_dir(data_dir: Path) -> Path:
    folder = data_dir / "coco-mini"
    if not (folder / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"COCO-mini not found in {folder} (set ICMH_DATA_DIR)")
    return folder


@pytest.fixture(scope="module")
def imagenet_dir(data_dir: Path) -> Path:
    folder = data_dir / "imagenet-100"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"ImageNet-100 not found in {folder} (set ICMH_DATA_DIR)")
    return folder


@pytest.fixture(scope="module")
def coco_set(coco_dir: Path):
    return open_eval_set(Task.SEGMENTATION, coco_dir, limit=3)


def _ground_truth_as_result(coco, image_id: int, width: int, height: int, shift: float = 0.0) -> TaskResult:
    """The annotations of ``image_id`` as detections in a ``width``×``height`` copy of the image."""
    info = coco.imgs[image_id]
    sx, sy = width / info["width"], height / info["height"]
    found = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False)):
        x, y, w, h = ann["bbox"]
        rle = coco.annToRLE(ann)
        rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        found.append(Detection(Box((x + shift) * sx, y * sy, (x + w + shift) * sx, (y + h) * sy), ann["category_id"],
                               "x", 1.0, resize_rle(rle, height, width)))
    return TaskResult("segmentation", width, height, detections=found)


# -- data sets ---------------------------------------------------------------------------------------------------------
def test_coco_set_holds_only_annotated_images_in_id_order(coco_dir):
    full = open_eval_set(Task.DETECTION, coco_dir)
    assert len(full.images) == 79 and full.has_labels  # the README: 79 annotated val images
    ids = [item.image_id for item in full.images]
    assert ids == sorted(ids) and all(item.path.is_file() for item in full.images)
    assert [i.image_id for i in open_eval_set(Task.DETECTION, coco_dir, limit=3).images] == ids[:3]


def test_imagenet_set_reads_labels_csv(imagenet_dir):
    found = open_eval_set(Task.CLASSIFICATION, imagenet_dir)
    assert len(found.images) == 100 and found.labels_source == imagenet_dir / "labels.csv"
    rows = list(csv.reader(open(imagenet_dir / "labels.csv")))[1:]
    assert [(i.path.name, i.label) for i in found.images] == [(r[0], int(r[2])) for r in rows]


def test_a_folder_without_labels_is_a_set_without_labels(kodak_dir):
    found = open_eval_set(Task.DETECTION, kodak_dir, limit=2)
    assert not found.has_labels and len(found.images) == 2


@pytest.mark.parametrize("content, fragment", [
    ("file,wnid,class_index\nmissing.JPEG,n0,3\n", "does not exist"),
    ("file,wnid,class_index\nx.JPEG,n0,abc\n", "not an integer"),
    ("file,wnid,class_index\nx.JPEG,n0,1000\n", "outside 0–999"),
])
def test_bad_labels_files_are_refused_with_the_line(tmp_path, content, fragment):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.JPEG")
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(InvalidInputError, match=fragment):
        open_eval_set(Task.CLASSIFICATION, tmp_path)


# -- scorers -----------------------------------------------------------------------------------------------------------
def test_ground_truth_scored_as_detections_gives_ap_100_boxes_and_masks(coco_set):
    scorer = DetectionScorer(coco_set.coco, masks=True)
    for item in coco_set.images:
        info = coco_set.coco.imgs[item.image_id]
        # as the evaluation does: results on a resized (here: twice as large) copy, mapped back by the scorer
        scorer.add(item.image_id, _ground_truth_as_result(coco_set.coco, item.image_id, 2 * info["width"],
                                                          2 * info["height"]))
    metrics = scorer.compute()
    assert metrics["AP"] > 97 and metrics["AP50"] == pytest.approx(100.0)
    assert metrics["mask_AP"] > 90 and metrics["mask_AP50"] == pytest.approx(100.0)


def test_shifted_boxes_score_lower_and_no_detection_scores_zero(coco_set):
    scorer, empty = DetectionScorer(coco_set.coco), DetectionScorer(coco_set.coco)
    for item in coco_set.images:
        info = coco_set.coco.imgs[item.image_id]
        scorer.add(item.image_id, _ground_truth_as_result(coco_set.coco, item.image_id, info["width"],
                                                          info["height"], shift=15.0))
        empty.add(item.image_id, TaskResult("detection", info["width"], info["height"], detections=[]))
    assert 0 < scorer.compute()["AP"] < 80
    assert empty.compute() == {"AP": 0.0, "AP50": 0.0}


def test_pseudo_ground_truth_from_predictions_scores_those_predictions_100(coco_set):
    references = {}
    for item in coco_set.images:
        info = coco_set.coco.imgs[item.image_id]
        references[item.image_id] = _ground_truth_as_result(coco_set.coco, item.image_id, info["width"],
                                                            info["height"])
    truth = pseudo_ground_truth(references, masks=True)
    scorer = DetectionScorer(truth, masks=True)
    for image_id, result in references.items():
        scorer.add(image_id, result)
    metrics = scorer.compute()
    assert metrics["AP50"] == pytest.approx(100.0) and metrics["mask_AP50"] == pytest.approx(100.0)


def test_resize_rle_keeps_the_mask_shape():
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:50] = 1
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    resized = resize_rle({"size": rle["size"], "counts": rle["counts"].decode("ascii")}, 80, 120)
    back = mask_utils.decode({"size": resized["size"], "counts": resized["counts"].encode("ascii")})
    assert back.shape == (80, 120) and back.sum() == 4 * mask.sum()


def test_top1_top5_count_hits():
    def result(*indexes):
        from icmh.results import ClassScore

        return TaskResult("classification", 1, 1, classes=[ClassScore(i, str(i), 0.1) for i in indexes])

    scorer = ClassificationScorer({0: 5, 1: 7, 2: 9, 3: 1})
    for image_id, predicted in enumerate([(5, 1, 2, 3, 4), (1, 2, 3, 4, 7), (1, 2, 3, 4, 6), (1,)]):
        scorer.add(image_id, result(*predicted))
    assert scorer.compute() == {"top1": 50.0, "top5": 75.0}


def test_psnr_of_a_known_error_and_ms_ssim_of_identical_images():
    original = torch.rand(3, 192, 256, generator=torch.Generator().manual_seed(0))
    original = original.mul(254).round().div(255)  # room for +1/255 everywhere
    scorer = FidelityScorer()
    scorer.add(original, original + 1 / 255)  # every 8-bit value off by one: PSNR = 20·log10(255)
    assert scorer.compute()["psnr"] == pytest.approx(20 * math.log10(255), abs=1e-6)
    same = FidelityScorer()
    same.add(original, original.clone())
    assert same.compute()["ms_ssim"] == pytest.approx(1.0, abs=1e-6)


# -- coders ------------------------------------------------------------------------------------------------------------
def test_pillow_coders_count_the_bytes_of_the_real_file(kodak_dir):
    image = load_image(kodak_dir / "kodim01.png")
    rates = []
    for quality in (5, 30, 80):
        coded = PillowCoder("jpeg", quality).code(image)
        buffer = io.BytesIO()
        Image.open(kodak_dir / "kodim01.png").convert("RGB").save(buffer, format="JPEG", quality=quality)
        assert coded.nbytes == len(buffer.getvalue())
        assert coded.image.shape == image.shape
        rates.append(coded.bpp)
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert PillowCoder("webp", 10).code(image).bpp < PillowCoder("webp", 60).code(image).bpp


def test_learned_coder_rate_is_the_frame_size_and_output_the_real_decode(kodak_dir):
    frame_codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1))
    image = resize_short_side(load_image(kodak_dir / "kodim05.png"), 200, 300)
    coded = LearnedCoder(frame_codec, Task.HUMAN, "base", "tiny", False).code(image)
    frame = frame_codec.encode([image], Task.HUMAN)[0]
    assert coded.nbytes == len(frame.data)
    assert torch.equal(coded.image, frame_codec.decode([frame.data])[0].image)
    assert coded.bpp == pytest.approx(len(frame.data) * 8 / (image.shape[1] * image.shape[2]))


def test_resize_short_side_follows_the_protocol():
    image = torch.rand(3, 480, 640)
    assert resize_short_side(image, 800, 1333).shape == (3, 800, 1067)
    assert resize_short_side(torch.rand(3, 300, 1200), 800, 1333).shape == (3, 333, 1333)


# -- the command -------------------------------------------------------------------------------------------------------
def _eval(tmp_path: Path, capsys, *argv: str) -> tuple:
    code = main(["eval", *argv, "--out", str(tmp_path), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_classification_scores_top1_against_labels_csv(tmp_path, capsys, imagenet_dir):
    code, out, err = _eval(tmp_path, capsys, "--task", "classification", "--data", str(imagenet_dir),
                           "--images", "3", *TINY, "--qualities", "1,2", "--methods", "base,adapted,jpeg",
                           "--jpeg-qualities", "10,50", "--random-task-model", "--random-adapters")
    assert code == 0, err
    summary = json.loads((tmp_path / "eval-classification.json").read_text())
    assert summary["random_weights"] and BANNER in summary["warning"] and BANNER in out
    assert "labels.csv" in summary["reference"]
    # the uncompressed row's top-1, recomputed here from labels.csv and the same (seeded) model
    model = load_task_model(Task.CLASSIFICATION, None, ModelOptions(random_weights=True))
    items = open_eval_set(Task.CLASSIFICATION, imagenet_dir, limit=3).images
    hits = [model.infer([load_image(i.path)])[0].classes[0].index == i.label for i in items]
    rows = {(r["method"], r["quality"]): r for r in summary["points"]}
    assert rows[("uncompressed", 0)]["top1"] == pytest.approx(100 * sum(hits) / len(hits))
    assert {("base", 1), ("base", 2), ("adapted", 1), ("adapted", 2), ("jpeg", 10), ("jpeg", 50)} <= set(rows)
    assert rows[("base", 1)]["bpp"] < rows[("base", 2)]["bpp"]  # the trained tiny codec's qualities
    assert rows[("jpeg", 10)]["bpp"] < rows[("jpeg", 50)]["bpp"]
    # adapted against base and jpeg, base against jpeg; top1 and top5
    assert {(r["method"], r["anchor"]) for r in summary["bd"]} == {("adapted", "base"), ("adapted", "jpeg"),
                                                                    ("base", "jpeg")}
    assert len(summary["bd"]) == 3 * 2
    with open(tmp_path / "eval-classification.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(summary["points"])
    with Image.open(tmp_path / "eval-classification.png") as png:
        assert png.size[0] > 600


def test_eval_fidelity_mode_scores_the_uncompressed_predictions_100(tmp_path, capsys, imagenet_dir):
    code, out, err = _eval(tmp_path, capsys, "--task", "classification", "--data", str(imagenet_dir),
                           "--images", "3", *TINY, "--qualities", "1", "--methods", "base,webp",
                           "--webp-qualities", "20", "--reference", "predictions", "--random-task-model")
    assert code == 0, err
    summary = json.loads((tmp_path / "eval-classification.json").read_text())
    assert "fidelity" in summary["reference"] and "no labels" in out
    assert summary["points"][0]["method"] == "uncompressed" and summary["points"][0]["top1"] == 100.0


def test_eval_detection_on_coco_mini_gives_pycocotools_ap_curves_plot_and_bd_table(tmp_path, capsys, coco_dir):
    """The real YOLOX-nano (random adapters): the uncompressed row's AP is recomputed here with COCOeval
    from the model's own detections, and is not zero (a random detector would score 0 either way)."""
    if not TASK_MODELS["yolox-nano"].files_present():
        pytest.skip("yolox-nano files not found (set ICMH_MODELS_DIR to ../shared/models)")
    code, out, err = _eval(tmp_path, capsys, "--task", "detection", "--data", str(coco_dir), "--images", "2",
                           *TINY, "--model", "yolox-nano", "--qualities", "1,2", "--methods", "base,adapted,jpeg",
                           "--jpeg-qualities", "10,40", "--random-adapters")
    assert code == 0, err
    summary = json.loads((tmp_path / "eval-detection.json").read_text())
    assert "instances_val2017.json" in summary["reference"] and summary["random_weights"]
    methods = [(r["method"], r["quality"]) for r in summary["points"]]
    assert methods == [("uncompressed", 0), ("base", 1), ("adapted", 1), ("base", 2), ("adapted", 2),
                       ("jpeg", 10), ("jpeg", 40)]
    assert all(row["images"] == 2 for row in summary["points"])
    model = load_task_model(Task.DETECTION, "yolox-nano", ModelOptions(score_threshold=EVAL_SCORE_THRESHOLD))
    eval_set = open_eval_set(Task.DETECTION, coco_dir, limit=2)
    results = model.infer([load_image(item.path) for item in eval_set.images])
    ids = [item.image_id for item in eval_set.images]
    detections = [entry for image_id, result in zip(ids, results) for entry in coco_results(image_id, result)]
    ap, ap50 = cocoeval_ap(eval_set.coco, detections, ids)
    uncompressed = summary["points"][0]
    assert ap50 > 10, "the real detector found nothing: the comparison below would be vacuous"
    assert (uncompressed["AP"], uncompressed["AP50"]) == (pytest.approx(ap), pytest.approx(ap50))
    assert {(r["method"], r["anchor"], r["metric"]) for r in summary["bd"]} == {
        (m, a, k) for m, a in (("adapted", "base"), ("adapted", "jpeg"), ("base", "jpeg")) for k in ("AP", "AP50")}
    assert "BD-rate" in out and out.count(BANNER) >= 2
    assert (tmp_path / "eval-detection.png").stat().st_size > 10_000


def test_eval_encoder_int8_codes_with_the_int8_analysis_and_says_so(tmp_path, capsys, kodak_dir):
    """The rate–distortion cost of the int8 edge encoder: its frames decode with the standard decoder,
    a little larger or worse than eager's, and the coder label names the path."""
    photos = tmp_path / "photos"
    save_image(smooth_image(192, 256, 5), photos / "train.png")
    rows = {}
    for label, options in (("eager", ["--encoder", "eager"]), ("int8", ["--encoder", "int8"]),
                           ("int8-photos", ["--encoder", "int8", "--calibration", str(photos)])):
        out = tmp_path / label
        code, _, err = _eval(out, capsys, "--task", "human", "--data", str(kodak_dir), "--images", "1", *TINY,
                             "--qualities", "1", "--methods", "base", *options)
        assert code == 0, err
        rows[label] = json.loads((out / "eval-human.json").read_text())["points"][1]
    assert "int8 encoder, calibrated on " in rows["int8"]["coder"]  # bsds500-train where present, else synthetic
    assert f"int8 encoder, calibrated on {photos}" in rows["int8-photos"]["coder"]
    assert "encoder" not in rows["eager"]["coder"]
    assert rows["int8"]["bpp"] != rows["eager"]["bpp"]
    assert rows["int8-photos"]["bpp"] != rows["int8"]["bpp"]  # other calibration ranges, other latents
    code, _, err = _eval(tmp_path / "refused", capsys, "--task", "human", "--data", str(kodak_dir), *TINY,
                         "--encoder", "int8", "--calibration", "kodak")
    assert code != 0 and "evaluation set" in err and "Traceback" not in err
    assert abs(rows["int8"]["psnr"] - rows["eager"]["psnr"]) < 0.5  # close: the same codec, 8-bit g_a
    assert abs(rows["int8"]["bpp"] / rows["eager"]["bpp"] - 1) < 0.05


def test_eval_human_psnr_rises_with_jpeg_quality_and_bd_is_computed(tmp_path, capsys, kodak_dir):
    code, out, err = _eval(tmp_path, capsys, "--task", "human", "--data", str(kodak_dir), "--images", "1",
                           *TINY, "--qualities", "1,2,3,4", "--methods", "base,jpeg,webp",
                           "--jpeg-qualities", "5,10,20,40", "--webp-qualities", "5,10,20,40")
    assert code == 0, err
    summary = json.loads((tmp_path / "eval-human.json").read_text())
    assert not summary["random_weights"] and BANNER not in out
    for method in ("base", "jpeg", "webp"):  # a higher quality costs more bits and gives a better image
        points = [r for r in summary["points"] if r["method"] == method]
        assert [r["bpp"] for r in points] == sorted(r["bpp"] for r in points)
        assert [r["psnr"] for r in points] == sorted(r["psnr"] for r in points)
        assert all(0.5 < r["ms_ssim"] <= 1.0 for r in points)
    psnr = next(r for r in summary["bd"] if r["metric"] == "psnr" and r["anchor"] == "jpeg")
    assert psnr["fit"] == "pchip" and math.isfinite(psnr["bd_rate"]) and math.isfinite(psnr["bd_metric"])


def test_eval_uses_the_adapter_file_of_each_quality(tmp_path, capsys, imagenet_dir):
    frame_codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1))
    frame_codec.add_random_adapters(Task.CLASSIFICATION, seed=3)
    save_adapters(tmp_path / "cls-q1.safetensors", frame_codec.codec, Task.CLASSIFICATION,
                  frame_codec.loaded.fingerprint, random_weights=True)
    code, out, err = _eval(tmp_path / "out", capsys, "--task", "classification", "--data", str(imagenet_dir),
                           "--images", "2", *TINY, "--qualities", "1", "--methods", "adapted",
                           "--adapters", str(tmp_path), "--random-task-model")
    assert code == 0, err
    rows = json.loads((tmp_path / "out" / "eval-classification.json").read_text())["points"]
    assert "cls-q1.safetensors" in rows[1]["coder"] and rows[1]["random_weights"]


@pytest.mark.parametrize("argv, fragment", [
    (["--task", "detection", "--data", "/nonexistent/folder"], "is not a folder"),
    (["--task", "classification", "--qualities", "1", "--methods", "adapted"], "no classification adapters"),
    (["--task", "detection", "--reference", "labels", "--kodak"], "no detection labels"),
    (["--task", "human", "--qualities", "9"], "has no quality 9"),
    (["--task", "human", "--jpeg-qualities", "120", "--methods", "jpeg"], "within 0–100"),
])
def test_eval_errors_are_one_line(tmp_path, capsys, imagenet_dir, kodak_dir, argv, fragment):
    data = str(kodak_dir) if "--kodak" in argv else str(imagenet_dir)
    argv = [a for a in argv if a != "--kodak"]
    if "--data" not in argv:
        argv += ["--data", data]
    code, out, err = _eval(tmp_path, capsys, *TINY, *argv)
    assert code == 2 and fragment in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_suite_of_one_task_writes_its_table_plot_and_json(data_dir, tmp_path, capsys):
    """``icmh eval --suite --task human`` on the real Kodak folder (two images, the tiny codec): the
    suite's anchors, the table with BD rows against JPEG and WebP, the plot and the JSON summary."""
    if not (data_dir / "kodak").is_dir():
        pytest.skip(f"Kodak not found in {data_dir} (set ICMH_DATA_DIR)")
    out = tmp_path / "suite"
    code = main(["eval", "--suite", "--task", "human", "--codec", "mbt2018-mean-tiny", "--qualities", "1,2,3,4",
                 "--images", "2", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "suite: 1 tasks" in printed
    summary = json.loads((out / "results.json").read_text())
    assert list(summary) == ["human"] and summary["human"]["images"] == 2
    methods = {(p["method"], p["quality"]) for p in summary["human"]["points"]}
    assert {("base", q) for q in (1, 2, 3, 4)} <= methods and ("jpeg", 90) in methods and ("webp", 5) in methods
    anchors = {(row["anchor"], row["metric"]) for row in summary["human"]["bd"] if row["method"] == "base"}
    assert {("jpeg", "psnr"), ("webp", "psnr"), ("jpeg", "ms_ssim")} <= anchors
    table = (out / "results.md").read_text()
    assert "| human | 2 |" in table and "RANDOM WEIGHTS" not in table
    assert (out / "eval-human.png").stat().st_size > 0


def test_suite_refuses_a_task_it_has_no_entry_for(capsys):
    assert main(["eval", "--suite", "--task", "low-light"]) == 2
    assert "the suite has no entry for low-light" in capsys.readouterr().err


def test_pareto_front_keeps_the_best_score_reachable_at_each_rate():
    from icmh.evaluation.report import pareto_front

    rates = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    rates_kept, scores_kept = pareto_front(rates, np.array([10.0, 30.0, 25.0, 30.0, 40.0]))  # noisy accuracy
    assert rates_kept.tolist() == [0.1, 0.2, 0.5] and scores_kept.tolist() == [10.0, 30.0, 40.0]
    rates_kept, scores_kept = pareto_front(rates, np.array([50.0, 40.0, 45.0, 30.0, 20.0]))  # lower is better
    assert rates_kept.tolist() == [0.1, 0.2, 0.4, 0.5]
    monotone = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pareto_front(rates, monotone)[1].tolist() == monotone.tolist()
    assert pareto_front(rates, np.array([1.0, math.nan, 3.0, 4.0, 5.0]))[0].tolist() == [0.1, 0.3, 0.4, 0.5]


def test_bd_table_compares_noisy_curves_on_their_fronts_and_says_so():
    from icmh.evaluation.report import bd_table
    from icmh.evaluation.runner import EvalResult

    rows = [{"method": "jpeg", "quality": q, "bpp": b, "top1": t, "top5": 100.0 * b}
            for q, b, t in ((10, 0.4, 40.0), (20, 0.6, 66.0), (40, 1.0, 77.0), (70, 1.5, 77.0), (90, 2.8, 85.0))]
    rows += [{"method": "base", "quality": q, "bpp": b, "top1": t, "top5": 100.0 * b}
             for q, b, t in ((1, 0.3, 49.0), (2, 0.5, 73.0), (3, 0.8, 72.0), (4, 1.0, 76.0))]
    result = EvalResult("classification", "labels", "m", "c", False, rows)
    row = next(r for r in bd_table(result) if r["metric"] == "top1")
    assert math.isfinite(row["bd_rate"]) and row["bd_rate"] < 0
    assert "1 anchor point left out" in row["note"] and "1 test point left out" in row["note"]
