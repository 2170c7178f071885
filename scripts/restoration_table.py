"""The gain of each restoration network on the evaluation sets, without coding: degraded vs restored.

For every restoration task and every set, the clean images are degraded (seed 0, as
``icmh eval``), restored by the task's network, and both are scored against the clean
images (PSNR, SSIM, MS-SSIM, BRISQUE): the ``degraded`` and ``uncompressed`` rows of
``icmh eval`` for many sets at once. Prints a Markdown table (the one in
docs/restoration.md) and writes the figures as JSON.

    .venv/bin/python scripts/restoration_table.py --out out/restoration/table.json
    .venv/bin/python scripts/restoration_table.py --tasks denoise --sets sr-bench/set5 --images 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from icmh.evaluation.datasets import open_eval_set
from icmh.evaluation.restoration import restoration_gain
from icmh.paths import default_data_dir
from icmh.taskmodels import load_task_model
from icmh.tasks import RESTORATION_TASKS, Task

SETS = ("sr-bench/set5", "sr-bench/set14", "sr-bench/mcmaster", "sr-bench/sun-hays80", "kodak")
METRICS = (("psnr", "PSNR dB", 2), ("ssim", "SSIM", 3), ("ms_ssim", "MS-SSIM", 3), ("brisque", "BRISQUE ↓", 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="data folder (default: $ICMH_DATA_DIR)")
    parser.add_argument("--tasks", default=",".join(t.value for t in RESTORATION_TASKS))
    parser.add_argument("--sets", default=",".join(SETS), help="folders under --data, comma-separated")
    parser.add_argument("--images", type=int, default=None, help="only the first N images of each set")
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    args = parser.parse_args()
    figures = {}
    header = "| task | set | images | " + " | ".join(f"{label} degraded → restored" for _, label, _ in METRICS) + " | s |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for task in (Task.parse(name) for name in args.tasks.split(",")):
        model = load_task_model(task)
        for name in args.sets.split(","):
            items = open_eval_set(task, args.data / name, limit=args.images).images
            started = time.perf_counter()
            gain = restoration_gain(task, model, items, progress=True)
            seconds = time.perf_counter() - started
            figures.setdefault(task.value, {})[name] = {"images": len(items), "seconds": seconds, **gain}
            cells = [f"{gain['degraded'][key]:.{digits}f} → **{gain['restored'][key]:.{digits}f}**"
                     for key, _, digits in METRICS]
            lines.append(f"| {task.value} | {name} | {len(items)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
