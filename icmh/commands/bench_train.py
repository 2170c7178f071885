"""``icmh bench train``: adapter-training throughput (images per second) of each task."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List

import torch

from shared.cli_common import positive_int, warn_random_weights
from shared.codec_loader import check_device
from shared.errors import InvalidInputError
from shared.models.registry import CODECS
from shared.paths import default_data_dir

from training.adapters import AdapterTrainConfig, train_adapters

TASKS = ("classification", "detection", "segmentation")
WARMUP_STEPS = 1


def register(benches: argparse._SubParsersAction) -> None:
    """Add the ``bench train`` parser."""
    parser = benches.add_parser(
        "train", help="adapter-training throughput (images/s) per task",
        description="Runs a few steps of 'icmh train' for each task on random crops of real images and prints "
                    "the images per second of the timed steps (median step time; the first step is warm-up), "
                    "and each task's throughput relative to classification (the lightest task model), measured "
                    "in the same run. Task models have random weights unless --pretrained (timing does not "
                    "depend on them).",
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default: {','.join(TASKS)})")
    parser.add_argument("--codec", default="mbt2018-mean", choices=sorted(CODECS))
    parser.add_argument("--quality", type=int, default=3)
    parser.add_argument("--crop", type=positive_int, default=256, help="crop size (default: 256, the paper's)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="batch size (default: 8)")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed steps per task (default: 3)")
    parser.add_argument("--data", type=Path, action="append", default=None,
                        help="image folder (default: $ICMH_DATA_DIR/kodak)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random-codec", action="store_true", help="seeded random base codec (timing only)")
    parser.add_argument("--pretrained", action="store_true", help="load the pretrained task models (hub cache)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Time each task's training steps and print images/s; returns 0."""
    check_device(args.device)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise InvalidInputError(f"--tasks must be among {', '.join(TASKS)}, got {args.tasks!r}")
    if not args.pretrained:
        warn_random_weights("the task models of bench train (timing only)")
    data = args.data or [default_data_dir() / "kodak"]
    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="icmh-bench-train-") as scratch:
        for task in tasks:
            config = AdapterTrainConfig(
                task=task, out=Path(scratch) / f"{task}.safetensors", data=data, codec=args.codec,
                quality=args.quality, steps=WARMUP_STEPS + args.steps, crop=args.crop, batch_size=args.batch_size,
                device=args.device, random_weights=not args.pretrained, random_codec=args.random_codec,
            )
            history = train_adapters(config, progress=False)
            timed: List[float] = history.step_seconds[WARMUP_STEPS:]
            step = statistics.median(timed)
            results[task] = {"step_s": step, "images_per_s": args.batch_size / step}
    anchor = results[tasks[0]]["images_per_s"]
    for task in tasks:
        results[task]["relative_to_" + tasks[0]] = results[task]["images_per_s"] / anchor
    report = {"codec": f"{args.codec} q{args.quality}", "device": args.device, "threads": torch.get_num_threads(),
              "crop": args.crop, "batch_size": args.batch_size, "timed_steps": args.steps,
              "task_models": "pretrained" if args.pretrained else "RANDOM WEIGHTS (timing only)", "tasks": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"adapter training, {report['codec']}, crops {args.crop}², batch {args.batch_size}, {args.device}, "
          f"{report['threads']} threads, task models {report['task_models']}")
    print(f"  {'task':<16}{'s/step':>9}{'images/s':>10}{'vs ' + tasks[0]:>22}")
    for task in tasks:
        r = results[task]
        print(f"  {task:<16}{r['step_s']:>9.2f}{r['images_per_s']:>10.2f}{r['relative_to_' + tasks[0]]:>22.3f}")
    return 0
