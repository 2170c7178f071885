"""Merge per-task suite runs into one results table, recomputing the BD rows with today's code.

The suite's tasks can run side by side (``icmh eval --suite --task T --out out/results/T``);
this reads every ``eval-*.json`` under the given folders and writes one ``results.md`` and
``results.json``, as ``icmh eval --suite`` would have:

    .venv/bin/python scripts/merge_results.py out/results/* --out out/results
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from icmh.evaluation.report import bd_table, read_result
from icmh.evaluation.suite import SUITE, SuiteResult, markdown, summary
from icmh.tasks import Task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding eval-TASK.json files")
    parser.add_argument("--out", type=Path, required=True, help="where results.md and results.json go")
    args = parser.parse_args()
    suite = SuiteResult()
    order = [entry.task for entry in SUITE]
    found = {}
    for folder in args.folders:
        for path in sorted(folder.glob("eval-*.json")):
            result = read_result(path)
            found[Task(result.task)] = (result, path)
    for task in sorted(found, key=lambda t: order.index(t) if t in order else len(order)):
        result, path = found[task]
        suite.results[task], suite.tables[task] = result, bd_table(result)
        suite.seconds[task] = json.loads((path.parent / "results.json").read_text())[task.value]["seconds"] \
            if (path.parent / "results.json").is_file() else math.nan
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(markdown(suite))
    (args.out / "results.json").write_text(json.dumps(summary(suite), indent=2, default=str) + "\n")
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
