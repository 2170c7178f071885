"""Merge per-task suite runs into one results table, recomputing the BD rows with today's code.

The suite's tasks can run side by side (``icmh eval --suite --task T --out out/results/T``);
this reads every ``eval-*.json`` under the given folders and writes one ``results.md`` and
``results.json``, as ``icmh eval --suite`` would have, and each task's ``eval-TASK.png``:

    .venv/bin/python scripts/merge_results.py out/results/* --out out/results

A task found in several folders is joined point by point (a later folder's point of the same
method and quality replaces an earlier one), so a new quality evaluated on its own
(``icmh eval --task T --qualities 5 --methods base,adapted --out out/q5/T``) joins the table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from icmh.evaluation.report import bd_table, plot_curves, read_result
from icmh.evaluation.runner import EvalResult
from icmh.evaluation.suite import SUITE, SuiteResult, markdown, summary
from icmh.tasks import Task


LEARNED = ("base", "adapted", "universal")


def join(first: EvalResult, later: EvalResult) -> EvalResult:
    """``first``'s points with ``later``'s added (``later`` wins for the same method and quality): rows without
    a rate first, then the learned methods by quality, then the anchors; the codec label lists every quality."""
    rows = {(r["method"], r["quality"]): r for r in first.rows}
    rows.update({(r["method"], r["quality"]): r for r in later.rows})
    methods = list(dict.fromkeys([r["method"] for r in first.rows] + [r["method"] for r in later.rows]))

    def place(row: dict) -> tuple:
        if row["method"] in LEARNED:
            return 1, row["quality"], methods.index(row["method"])
        return (0 if math.isnan(row["bpp"]) else 2), methods.index(row["method"]), row["quality"]

    ordered = sorted(rows.values(), key=place)
    qualities = ",".join(str(q) for q in sorted({r["quality"] for r in ordered if r["method"] in LEARNED}))
    label = re.sub(r" q[\d,]+", f" q{qualities}", first.codec_label, count=1)
    return EvalResult(first.task, first.reference, first.task_model, label,
                      first.random_weights or later.random_weights, ordered, first.notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding eval-TASK.json files")
    parser.add_argument("--out", type=Path, required=True, help="where results.md and results.json go")
    args = parser.parse_args()
    suite = SuiteResult()
    order = [entry.task for entry in SUITE]
    found: dict = {}
    for folder in args.folders:
        for path in sorted(folder.glob("eval-*.json")):
            result = read_result(path)
            task = Task(result.task)
            found[task] = (join(found[task][0], result), found[task][1]) if task in found else (result, path)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in sorted(found, key=lambda t: order.index(t) if t in order else len(order)):
        result, path = found[task]
        suite.results[task], suite.tables[task] = result, bd_table(result)
        suite.seconds[task] = json.loads((path.parent / "results.json").read_text())[task.value]["seconds"] \
            if (path.parent / "results.json").is_file() else math.nan
        plot_curves(result, args.out / f"eval-{task.value}.png")
    (args.out / "results.md").write_text(markdown(suite))
    (args.out / "results.json").write_text(json.dumps(summary(suite), indent=2, default=str) + "\n")
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
