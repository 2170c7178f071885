"""Compare methods of several ``icmh eval`` runs of one task: BD table and one plot.

Each SPEC names a run's ``eval-TASK.json`` and one of its methods, with an optional new label:
``RUN.json:METHOD[=LABEL]``; specs with the same label make one curve (e.g. one run per quality). Every method listed is compared with every method listed after
it (BD-rate / BD-metric on each curve's Pareto front, PCHIP as in the results table), so list
the methods under test first:

    .venv/bin/python scripts/compare_methods.py \\
        out/importance/eval-detection.json:adapted=importance \\
        out/results/detection/eval-detection.json:adapted=sfma \\
        out/results/detection/eval-detection.json:base \\
        out/results/detection/eval-detection.json:jpeg --out out/importance/compare

Writes OUT/compare-TASK.md (points and BD table) and OUT/compare-TASK.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

from icmh.evaluation.report import bd_table, format_bd_table, plot_curves, read_result, reference_rows
from icmh.evaluation.runner import EvalResult


def parse_spec(text: str) -> Tuple[Path, str, str]:
    """``RUN.json:METHOD[=LABEL]`` as (path, method, label)."""
    path, _, method = text.rpartition(":")
    if not path or not method:
        raise argparse.ArgumentTypeError(f"{text!r}: give RUN.json:METHOD[=LABEL]")
    method, _, label = method.partition("=")
    return Path(path), method, label or method


def merged(specs: List[Tuple[Path, str, str]]) -> EvalResult:
    """One result holding the chosen methods' rows (relabelled) and the first run's reference rows."""
    runs = {path: read_result(path) for path, _, _ in specs}
    first = runs[specs[0][0]]
    rows = [dict(row) for row in reference_rows(first)]
    for path, method, label in specs:
        result = runs[path]
        if result.task != first.task:
            raise SystemExit(f"error: {path} is a {result.task} run, {specs[0][0]} a {first.task} run")
        chosen = [dict(row, method=label) for row in result.rows if row["method"] == method]
        if not chosen:
            raise SystemExit(f"error: {path} has no points of method {method!r}")
        rows += chosen
    return EvalResult(first.task, first.reference, first.task_model, first.codec_label,
                      any(r.random_weights for r in runs.values()), rows, first.notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", type=parse_spec, metavar="RUN.json:METHOD[=LABEL]")
    parser.add_argument("--out", type=Path, required=True, help="folder for compare-TASK.md and .png")
    args = parser.parse_args()
    result = merged(args.specs)
    labels = list(dict.fromkeys(label for _, _, label in args.specs))  # a label may gather several runs
    pairs = [(test, anchor) for i, test in enumerate(labels) for anchor in labels[i + 1:]]
    table = bd_table(result, pairs=pairs)
    args.out.mkdir(parents=True, exist_ok=True)
    points = "\n".join(f"| {r['method']} | {r['bpp']:.4f} | " + " | ".join(f"{r[m]:.2f}" for m in result.metrics) + " |"
                       for r in result.rows if r["bpp"] == r["bpp"])
    text = (f"# {result.task}: {', '.join(labels)}\n\n{result.codec_label}; task model {result.task_model}; "
            f"scored against {result.reference}\n\n| method | bpp | {' | '.join(result.metrics)} |\n"
            f"|---|---|{'---|' * len(result.metrics)}\n{points}\n\n```\n{format_bd_table(table)}\n```\n")
    (args.out / f"compare-{result.task}.md").write_text(text)
    plot_curves(result, args.out / f"compare-{result.task}.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
