"""What an evaluation shows people: the points (CSV, JSON), the BD table and the curves (PNG).

Every output names the models and says loudly when any ran with random weights.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from icmh.errors import InvalidInputError

from icmh.evaluation.bjontegaard import bd_metric, bd_rate
from icmh.evaluation.runner import EvalResult

RANDOM_BANNER = "RANDOM WEIGHTS: these figures are NOT those of trained models"
LEARNED = ("universal", "adapted", "base")  # the coders under test, in the order the table lists them
ORDER = ("universal", "adapted", "base", "jpeg", "webp")  # each is compared with those after it
METRIC_UNITS = {"AP": "%", "AP50": "%", "mask_AP": "%", "mask_AP50": "%", "top1": "%", "top5": "%",
                "psnr": "dB", "ms_ssim": "", "ssim": "", "brisque": "lower is better"}
REFERENCE_STYLES = {"uncompressed": "--", "degraded": ":"}  # rows without a rate: horizontal lines
CUBIC_MIN_POINTS = 4
# The fit of the rate–accuracy tables: piecewise cubic (PCHIP, as JVET's current BD sheets). Task accuracy
# saturates towards the uncompressed ceiling; one cubic polynomial through 4–6 such points overshoots
# (measured: segmentation adapted vs JPEG +127 % with cubic, −63 % with PCHIP on the same points).
TABLE_METHOD = "pchip"


def curve(result: EvalResult, method: str, metric: str) -> tuple:
    """``(bpp, metric)`` arrays of ``method``'s points, by increasing rate."""
    points = sorted((r["bpp"], r[metric]) for r in result.rows if r["method"] == method)
    return np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)


def pareto_front(rates: np.ndarray, metrics: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The points of a curve (sorted by rate) that no cheaper point of the same curve beats: the best
    metric reachable at each rate. Accuracy measured on a small set is noisy, so a higher rate can
    score lower (or the same); Bjøntegaard's fit needs a strictly monotonic curve. The direction
    (higher or lower is better) is read from the curve's ends; non-finite points are left out."""
    finite = np.isfinite(rates) & np.isfinite(metrics)
    rates, metrics = rates[finite], metrics[finite]
    rising = metrics.size == 0 or metrics[-1] >= metrics[0]
    keep: List[int] = []
    for index, value in enumerate(metrics):
        if not keep or (value > metrics[keep[-1]] if rising else value < metrics[keep[-1]]):
            keep.append(index)
    return rates[keep], metrics[keep]


def bd_pairs(methods: Sequence[str]) -> List[Tuple[str, str]]:
    """``(test, anchor)`` pairs to compare: each learned method against every coder after it in
    :data:`ORDER` — ``universal`` (one bitstream for every consumer) against the per-task ``adapted``
    bitstreams, ``base``, ``jpeg`` and ``webp``; ``adapted`` against ``base``, ``jpeg``, ``webp``; ``base``
    against ``jpeg`` and ``webp`` — where present."""
    present = set(methods)
    return [(test, anchor) for test in LEARNED for anchor in ORDER[ORDER.index(test) + 1:]
            if test in present and anchor in present]


def bd_table(result: EvalResult, method: str = TABLE_METHOD,
             pairs: Sequence[Tuple[str, str]] = ()) -> List[Dict[str, Any]]:
    """BD-rate (%) and BD-metric of each ``(test, anchor)`` pair (default: those of :func:`bd_pairs`),
    for every metric; see :func:`compare`."""
    pairs = list(pairs) or bd_pairs([r["method"] for r in result.rows])
    return [compare(result, test, anchor, metric, method) for metric in list(result.metrics) for test, anchor in pairs]


def compare(result: EvalResult, test_method: str, anchor_method: str, metric: str,
            method: str = TABLE_METHOD) -> Dict[str, Any]:
    """BD-rate (%) and BD-metric of ``test_method`` against ``anchor_method`` on ``metric``.

    A negative BD-rate means the test method needs fewer bits than the anchor for the same
    metric. Each curve is reduced to its :func:`pareto_front` first (``note`` says how many
    points were left out). A curve with fewer than 4 points uses PCHIP instead of the cubic fit
    (said in ``fit``); a pair that cannot be compared (too few points, constant curves, no
    shared range) gets NaN and the reason in ``note``.
    """
    raw_anchor, raw_test = curve(result, anchor_method, metric), curve(result, test_method, metric)
    anchor, test = pareto_front(*raw_anchor), pareto_front(*raw_test)
    fit = method if min(anchor[0].size, test[0].size) >= CUBIC_MIN_POINTS else "pchip"
    dropped = {name: raw[0].size - kept[0].size
               for name, raw, kept in (("anchor", raw_anchor, anchor), ("test", raw_test, test))}
    note = ("Pareto fronts: " + ", ".join(f"{count} {name} point{'s' * (count > 1)} left out (a cheaper "
                                           f"point of the same curve scores as well)"
                                           for name, count in dropped.items() if count)
            if any(dropped.values()) else "")
    row = {"method": test_method, "anchor": anchor_method, "metric": metric, "fit": fit,
           "bd_rate": math.nan, "bd_metric": math.nan, "note": note}
    try:
        row["bd_rate"] = bd_rate(*anchor, *test, method=fit)
        row["bd_metric"] = bd_metric(*anchor, *test, method=fit)
    except InvalidInputError as exc:  # the reason goes into the table instead of stopping the report
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        row["note"] = f"{note}; {reason}" if note else reason
    return row


def read_result(path: Path) -> EvalResult:
    """An :class:`EvalResult` from the ``eval-TASK.json`` that ``icmh eval`` wrote (JSON nulls back to NaN)."""
    data = json.loads(Path(path).read_text())
    rows = [{key: (math.nan if value is None else value) for key, value in row.items()} for row in data["points"]]
    for row in rows:
        row["bpp"] = float(row["bpp"])
    return EvalResult(data["task"], data["reference"], data["task_model"], data["codec"], data["random_weights"],
                      rows, data.get("notes") or [])


def write_points(result: EvalResult, table: Sequence[Dict[str, Any]], folder: Path, stem: str) -> Dict[str, Path]:
    """Write ``<stem>.csv`` (one line per point) and ``<stem>.json`` (points, BD ``table``, labels); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    columns = list(dict.fromkeys(key for row in result.rows for key in row))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result.rows)
    summary = {
        "task": result.task, "reference": result.reference, "task_model": result.task_model,
        "codec": result.codec_label, "random_weights": result.random_weights,
        "warning": RANDOM_BANNER if result.random_weights else None, "notes": result.notes,
        "primary_metric": result.primary_metric, "points": result.rows, "bd": list(table),
    }
    json_path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    return {"csv": csv_path, "json": json_path}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def reference_rows(result: EvalResult) -> List[Dict[str, Any]]:
    """The rows without a rate (``uncompressed``; ``degraded`` for the restoration tasks), in order."""
    return [row for row in result.rows if math.isnan(row["bpp"])]


def plot_curves(result: EvalResult, path: Path) -> Path:
    """One PNG with a panel per metric: each method's rate–metric curve, the rows without a rate as horizontal
    lines (uncompressed dashed, degraded dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.metrics)
    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.2 * rows + 0.9), squeeze=False)
    references = reference_rows(result)
    methods = [m for m in dict.fromkeys(r["method"] for r in result.rows) if m not in {r["method"] for r in references}]
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, names):
        for method in methods:
            rate, value = curve(result, method, metric)
            ax.plot(rate, value, marker="o", label=method)
        for row in references:
            if math.isfinite(row[metric]):
                ax.axhline(row[metric], color="grey", linestyle=REFERENCE_STYLES.get(row["method"], "--"),
                           label=row["method"])
        unit = METRIC_UNITS[metric]
        ax.set_xlabel("bits per pixel (real bitstream)")
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    title = f"{result.task}: {result.codec_label}\ntask model: {result.task_model}\nscored against {result.reference}"
    if result.random_weights:
        title = f"[{RANDOM_BANNER}]\n{title}"
    fig.suptitle(title, fontsize=8, color="darkred" if result.random_weights else "black")
    if result.random_weights:
        fig.text(0.5, 0.5, RANDOM_BANNER, ha="center", va="center", fontsize=13, color="red", alpha=0.35,
                 rotation=20, transform=fig.transFigure)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / fig.get_figheight()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_points(result: EvalResult) -> str:
    """The points as an aligned text table."""
    names = list(result.metrics)
    lines = [f"{'method':<13}{'q':>4}{'bpp':>9}" + "".join(f"{n:>11}" for n in names)]
    for row in result.rows:
        rate = "-" if math.isnan(row["bpp"]) else f"{row['bpp']:.4f}"
        quality = "-" if math.isnan(row["bpp"]) else str(row["quality"])
        lines.append(f"{row['method']:<13}{quality:>4}{rate:>9}" + "".join(f"{row[n]:>11.3f}" for n in names))
    return "\n".join(lines)


def format_bd_table(table: Sequence[Dict[str, Any]]) -> str:
    """The BD table as aligned text (``n/a`` with the reason where a pair could not be compared)."""
    if not table:
        return "BD table: no learned codec and anchor to compare"
    width = {key: max(len(heading), *(len(str(row[key])) for row in table)) + 1
             for key, heading in (("method", "method"), ("anchor", "vs"), ("metric", "metric"))}
    lines = [f"{'method':<{width['method']}}{'vs':<{width['anchor']}}{'metric':<{width['metric']}}{'fit':<7}"
             f"{'BD-rate':>11}{'BD-metric':>12}  note"]
    for row in table:
        rate = "n/a" if math.isnan(row["bd_rate"]) else f"{row['bd_rate']:+.2f} %"
        value = "n/a" if math.isnan(row["bd_metric"]) else f"{row['bd_metric']:+.3f}"
        lines.append(f"{row['method']:<{width['method']}}{row['anchor']:<{width['anchor']}}"
                     f"{row['metric']:<{width['metric']}}{row['fit']:<7}{rate:>11}{value:>12}  {row['note']}")
    return "\n".join(lines)
