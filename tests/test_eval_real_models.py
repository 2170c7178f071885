"""``icmh eval`` end to end with each real task model of ``../shared/models``.

Each run codes a few real images with the trained tiny codec, JPEG and WebP, scores the
model's results with pycocotools / labels.csv, and its uncompressed row must be exactly
what the model gives on those images, scored here by pycocotools' COCOeval itself / the
labels, through the loader path that the ``test_taskmodel_*``
files check against the published figures on the full sets (YOLOX-nano box AP ≥ 29,
YOLOv5n-seg mask AP ≥ 27, SqueezeNet top-1 68 % ± 2, MobileNetV2 top-1 ≥ 83 %).
"""

from __future__ import annotations

import json

import pytest

from icmh.cli.main import main
from icmh.evaluation.datasets import open_eval_set
from icmh.images import load_image
from icmh.taskmodels import EVAL_SCORE_THRESHOLD, TASK_MODELS, ModelOptions, load_task_model
from icmh.tasks import Task

from support import coco_results, cocoeval_ap

IMAGES = 6
CASES = [("detection", "yolox-nano", "coco-mini"), ("segmentation", "yolov5n-seg", "coco-mini"),
         ("classification", "mobilenet-v2", "imagenet-100"), ("classification", "squeezenet1_1", "imagenet-100")]


def _expected_uncompressed(task: Task, model_name: str, folder) -> dict:
    model = load_task_model(task, model_name, ModelOptions(score_threshold=EVAL_SCORE_THRESHOLD, max_detections=100))
    eval_set = open_eval_set(task, folder, limit=IMAGES)
    images = [load_image(item.path) for item in eval_set.images]
    results = model.infer_prepared([model.model_input(image) for image in images], task,
                                   [tuple(image.shape[-2:]) for image in images])
    if task is Task.CLASSIFICATION:
        hits = [r.classes[0].index == item.label for r, item in zip(results, eval_set.images)]
        return {"top1": 100 * sum(hits) / len(hits)}
    ids = [item.image_id for item in eval_set.images]
    boxes = [entry for image_id, result in zip(ids, results) for entry in coco_results(image_id, result)]
    expected = dict(zip(("AP", "AP50"), cocoeval_ap(eval_set.coco, boxes, ids)))
    if task is Task.SEGMENTATION:
        masks = [entry for image_id, result in zip(ids, results) for entry in coco_results(image_id, result, True)]
        expected.update(zip(("mask_AP", "mask_AP50"), cocoeval_ap(eval_set.coco, masks, ids, "segm")))
    return expected


@pytest.mark.parametrize("task, model, folder", CASES, ids=[case[1] for case in CASES])
def test_eval_runs_end_to_end_with_each_real_model(tmp_path, capsys, data_dir, task, model, folder):
    if not TASK_MODELS[model].files_present():
        pytest.skip(f"{model} files not found (set ICMH_MODELS_DIR to ../shared/models)")
    if not (data_dir / folder).is_dir():
        pytest.skip(f"{data_dir / folder} not found (set ICMH_DATA_DIR)")
    code = main(["eval", "--task", task, "--model", model, "--data", str(data_dir / folder), "--images", str(IMAGES),
                 "--codec", "mbt2018-mean-tiny", "--qualities", "1,4", "--methods", "base,jpeg,webp",
                 "--jpeg-qualities", "10,60", "--webp-qualities", "10,60", "--out", str(tmp_path), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((tmp_path / f"eval-{task}.json").read_text())
    assert not summary["random_weights"] and "RANDOM" not in out
    assert summary["task_model"].startswith(model)
    rows = {(r["method"], r["quality"]): r for r in summary["points"]}
    assert set(rows) == {("uncompressed", 0), ("base", 1), ("base", 4), ("jpeg", 10), ("jpeg", 60), ("webp", 10),
                         ("webp", 60)}
    expected = _expected_uncompressed(Task(task), model, data_dir / folder)
    for metric, value in expected.items():
        assert rows[("uncompressed", 0)][metric] == pytest.approx(value, abs=1e-9), metric
    metric = "top1" if task == "classification" else "AP"
    for method, (low, high) in (("base", (1, 4)), ("jpeg", (10, 60)), ("webp", (10, 60))):
        assert rows[(method, low)]["bpp"] < rows[(method, high)]["bpp"]  # more bits at the higher quality
    assert rows[("uncompressed", 0)][metric] > 0 and rows[("jpeg", 60)][metric] > 0, "the real model found nothing"
