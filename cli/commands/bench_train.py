"""``icmh bench train``: adapter-training throughput (images per second) of each task."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Dict, Sequence

import torch

from icmh.cli.common import (add_task_model_options, add_weight_options, model_choices, positive_int, random_parts,
                             warn_random_weights)
from icmh.codec.loader import OWN_CODEC, check_device
from icmh.data_splits import TRAINING_SETS
from icmh.errors import InvalidInputError
from icmh.models.registry import CODECS, get_codec
from icmh.tasks import Task
from icmh.training.adapters import AdapterTrainConfig, train_adapters
from icmh.training.rd import AMP_DTYPES

TASKS = ("classification", "detection", "segmentation")
WARMUP_STEPS = 1


def register(benches: argparse._SubParsersAction) -> None:
    """Add the ``bench train`` parser."""
    parser = benches.add_parser(
        "train", help="adapter-training throughput (images/s) per task",
        description="Runs a few steps of 'icmh train' for each task on random crops of real images and prints "
                    "the images per second of the timed steps (median step time; the first step is warm-up), "
                    "and each task's throughput relative to classification (the lightest task model), measured "
                    "in the same run, with each task's default task model (or --model TASK=NAME).",
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default: {','.join(TASKS)})")
    parser.add_argument("--codec", default=OWN_CODEC, choices=sorted(CODECS))
    parser.add_argument("--quality", type=int, default=None, help="default: the codec's own")
    parser.add_argument("--crop", type=positive_int, default=256, help="crop size (default: 256, the paper's)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="batch size (default: 8)")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed steps per task (default: 3)")
    parser.add_argument("--data", action="append", default=None, metavar="SET_OR_DIR",
                        help="training set or image folder (default: the training sets under $ICMH_DATA_DIR)")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none", help="as icmh train --amp")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_task_model_options(parser, several=True)
    add_weight_options(parser, adapters=False, task_models=True)
    parser.set_defaults(func=run)


def throughput(step_seconds: Sequence[float], batch_size: int) -> Dict[str, float]:
    """Seconds per step (the median of the steps after the :data:`WARMUP_STEPS` warm-up) and images per second."""
    step = statistics.median(step_seconds[WARMUP_STEPS:])
    return {"step_s": step, "images_per_s": batch_size / step}


def run(args: argparse.Namespace) -> int:
    """Time each task's training steps and print images/s; returns 0."""
    check_device(args.device)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise InvalidInputError(f"--tasks must be among {', '.join(TASKS)}, got {args.tasks!r}")
    warn_random_weights("bench train (timing only)", args)
    parts = random_parts(args)
    models = model_choices(args.model, [Task.parse(task) for task in tasks])
    results: Dict[str, Dict[str, float]] = {}
    labels: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="icmh-bench-train-") as scratch:
        for task in tasks:
            config = AdapterTrainConfig(
                task=task, out=Path(scratch) / f"{task}.safetensors", data=args.data or list(TRAINING_SETS),
                model=models.get(Task.parse(task)), models_dir=args.models_dir, codec=args.codec, quality=args.quality,
                steps=WARMUP_STEPS + args.steps, crop=args.crop, batch_size=args.batch_size, lmbda=1.0,
                device=args.device, amp=args.amp, random_task_model="task models" in parts,
                random_codec="codec" in parts, seed=args.seed, codec_weights=args.codec_weights,
            )
            history = train_adapters(config, progress=False)
            labels[task] = history.task_model_label
            results[task] = throughput(history.step_seconds, args.batch_size)
    anchor = results[tasks[0]]["images_per_s"]
    for task in tasks:
        results[task]["relative_to_" + tasks[0]] = results[task]["images_per_s"] / anchor
    report = {"codec": f"{args.codec} q{args.quality or get_codec(args.codec).default_quality}", "device": args.device, "threads": torch.get_num_threads(),
              "crop": args.crop, "batch_size": args.batch_size, "timed_steps": args.steps,
              "amp": args.amp, "task_models": labels, "tasks": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"adapter training, {report['codec']}, crops {args.crop}², batch {args.batch_size}, {args.device}, "
          f"{report['threads']} threads, amp {args.amp}")
    print(f"  {'task':<16}{'s/step':>9}{'images/s':>10}{'vs ' + tasks[0]:>22}  task model")
    for task in tasks:
        r = results[task]
        print(f"  {task:<16}{r['step_s']:>9.2f}{r['images_per_s']:>10.2f}{r['relative_to_' + tasks[0]]:>22.3f}"
              f"  {labels[task]}")
    return 0
