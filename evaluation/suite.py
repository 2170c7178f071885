"""The project's results table: every task's rate–accuracy points and BD deltas in one run.

:data:`SUITE` names, per task, the evaluation set and the JPEG / WebP qualities whose rates
overlap the codec's; :func:`run_suite` evaluates each (the default task model, the shipped
codec and its trained adapters, JPEG, WebP, the uncompressed ceiling), writes each task's
CSV / JSON / PNG as ``icmh eval`` does, then ``results.md`` (the points and the BD table of
adapted vs base, adapted vs JPEG, adapted vs WebP — and the codec vs JPEG and WebP on
Kodak) and ``results.json``. ``icmh eval --suite`` and ``make results`` run it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from icmh.evaluation.report import TABLE_METHOD, bd_table, plot_curves, write_points
from icmh.evaluation.runner import EvalConfig, EvalResult, run_evaluation
from icmh.paths import default_data_dir
from icmh.tasks import Task


@dataclass(frozen=True)
class SuiteEntry:
    """One task of the suite: its data folder (under the data directory) and its anchor qualities."""

    task: Task
    folder: str
    jpeg_qualities: Tuple[int, ...]
    webp_qualities: Tuple[int, ...]
    methods: Tuple[str, ...] = ("base", "adapted", "jpeg", "webp")


SUITE: Tuple[SuiteEntry, ...] = (
    SuiteEntry(Task.HUMAN, "kodak", (5, 10, 20, 40, 70, 90), (5, 20, 40, 60, 80, 90), ("base", "jpeg", "webp")),
    SuiteEntry(Task.DETECTION, "coco-mini", (5, 10, 20, 40, 70, 90), (5, 20, 40, 60, 80, 90)),
    SuiteEntry(Task.SEGMENTATION, "coco-mini", (5, 10, 20, 40, 70, 90), (5, 20, 40, 60, 80, 90)),
    SuiteEntry(Task.CLASSIFICATION, "imagenet-100", (5, 10, 20, 40, 70, 90), (5, 20, 40, 60, 80, 90)),
)


@dataclass
class SuiteResult:
    """The evaluations of the suite, the BD rows of each, and how long each took."""

    results: Dict[Task, EvalResult] = field(default_factory=dict)
    tables: Dict[Task, List[Dict[str, object]]] = field(default_factory=dict)
    seconds: Dict[Task, float] = field(default_factory=dict)


def run_suite(out: Path, base: EvalConfig, tasks: Optional[Sequence[Task]] = None, data_dir: Optional[Path] = None,
              bd_method: str = TABLE_METHOD, progress: bool = True,
              on_task: Optional[Callable[[Task, EvalResult, float], None]] = None) -> SuiteResult:
    """Evaluate every entry of :data:`SUITE` (or those of ``tasks``) with ``base``'s settings and write the outputs.

    ``base`` supplies everything but the task, data and anchor qualities (codec, qualities,
    image limit, device, models). Raises what :func:`run_evaluation` raises.
    """
    data_dir = Path(data_dir or default_data_dir())
    suite = SuiteResult()
    for entry in SUITE:
        if tasks is not None and entry.task not in tasks:
            continue
        config = replace(base, task=entry.task.value, data=data_dir / entry.folder, methods=entry.methods, model=None,
                         jpeg_qualities=entry.jpeg_qualities, webp_qualities=entry.webp_qualities)
        started = time.perf_counter()
        result = run_evaluation(config, progress=progress)
        seconds = time.perf_counter() - started
        table = bd_table(result, bd_method)
        stem = f"eval-{entry.task.value}"
        write_points(result, table, out, stem)
        plot_curves(result, out / f"{stem}.png")
        suite.results[entry.task], suite.tables[entry.task], suite.seconds[entry.task] = result, table, seconds
        if on_task is not None:
            on_task(entry.task, result, seconds)
    (out / "results.md").write_text(markdown(suite))
    (out / "results.json").write_text(json.dumps(summary(suite), indent=2, default=_finite) + "\n")
    return suite


def _finite(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def summary(suite: SuiteResult) -> Dict[str, object]:
    """The suite as JSON-able data: per task the models, the points, the BD rows and the time."""
    return {task.value: {"task_model": result.task_model, "codec": result.codec_label, "reference": result.reference,
                         "images": result.rows[0]["images"] if result.rows else 0, "seconds": suite.seconds[task],
                         "random_weights": result.random_weights, "points": result.rows, "bd": suite.tables[task]}
            for task, result in suite.results.items()}


def _number(value: object, digits: int) -> str:
    return "n/a" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(suite: SuiteResult) -> str:
    """``results.md``: for each task the BD rows on its primary metric, then every point."""
    lines = ["# Rate–accuracy results", ""]
    lines += ["| task | images | task model | method | vs | metric | BD-rate | BD-metric |",
              "|---|---|---|---|---|---|---|---|"]
    for task, result in suite.results.items():
        model = result.task_model.split(" (")[0]
        for row in suite.tables[task]:
            if row["metric"] != result.primary_metric:
                continue
            rate = "n/a" if not math.isfinite(row["bd_rate"]) else f"{row['bd_rate']:+.1f} %"
            lines.append(f"| {task.value} | {result.rows[0]['images']} | {model} | {row['method']} | {row['anchor']} | "
                         f"{row['metric']} | {rate} | {_number(row['bd_metric'], 2)} |")
    for task, result in suite.results.items():
        metrics = list(result.metrics)
        lines += ["", f"## {task.value}: {result.task_model}", "",
                  f"Codec: {result.codec_label}. Scored against {result.reference}. "
                  f"{result.rows[0]['images']} images, {suite.seconds[task]:.0f} s.", "",
                  "| method | q | bpp | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
        for row in result.rows:
            quality = "–" if not math.isfinite(row["bpp"]) else str(row["quality"])
            lines.append(f"| {row['method']} | {quality} | {_number(row['bpp'], 4)} | "
                         + " | ".join(_number(row[m], 2) for m in metrics) + " |")
    if any(result.random_weights for result in suite.results.values()):
        lines.insert(1, "**RANDOM WEIGHTS: these figures are NOT those of trained models.**")
    return "\n".join(lines) + "\n"
