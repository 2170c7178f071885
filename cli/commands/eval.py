"""``icmh eval``: rate–accuracy curves of the base codec, the adapted codec, JPEG and WebP."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List

from icmh.cli.common import (add_calibration_option, add_task_model_options, add_weight_options, model_choices,
                             positive_int, random_parts, warn_random_weights)
from icmh.codec.loader import check_device, default_codec
from icmh.errors import InvalidInputError
from icmh.models.encoder_paths import EAGER, ENCODER_PATHS
from icmh.models.registry import CODECS
from icmh.tasks import Task

from icmh.evaluation.bjontegaard import METHODS as BD_METHODS
from icmh.evaluation.report import TABLE_METHOD
from icmh.evaluation.report import RANDOM_BANNER, bd_table, format_bd_table, format_points, plot_curves, write_points
from icmh.evaluation.runner import METHODS, REFERENCES, EvalConfig, run_evaluation
from icmh.evaluation.suite import SUITE, run_suite


def int_list(text: str) -> List[int]:
    """argparse type: comma-separated integers, e.g. ``1,2,3,4``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def name_list(text: str) -> List[str]:
    """argparse type: comma-separated method names."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in METHODS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"methods must be among {', '.join(METHODS)}; got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` parser."""
    defaults = EvalConfig(task="detection", data=Path("."))
    parser = subparsers.add_parser(
        "eval", help="rate–accuracy curves: base codec, adapted codec, JPEG, WebP; BD table and plot",
        description="Code every image of DATA with each method at each quality, run the task model on the "
                    "reconstruction and score it: COCO AP/AP50 (boxes; masks for segmentation) with pycocotools, "
                    "top-1/top-5 from labels.csv, or PSNR/MS-SSIM for human. The restoration tasks (denoise, deblur, "
                    "super-resolution, low-light) code each clean image degraded with the task's seeded degradation, "
                    "restore every reconstruction with the task's network and score PSNR/SSIM/MS-SSIM against the "
                    "clean image and BRISQUE (no reference, lower is better), with two rows without rate: the "
                    "restored uncompressed input and the degraded input itself. Each task model's own input "
                    "geometry is coded (METHOD.md): YOLOX at long side 416, YOLOv5 at 640, SqueezeNet 227, "
                    "MobileNetV2 its 224 centre crop, the R-CNNs short side 800 (max 1333), ResNet-50 its "
                    "resize-256 centre-crop-224; results are mapped back to the original image. Rate is the real "
                    "coded size in bits per pixel. Writes OUT/eval-TASK.csv, .json and .png and prints the points and "
                    "the BD-rate / BD-metric table (adapted vs base, JPEG and WebP; base vs JPEG and WebP). "
                    "--suite runs the project's whole results table instead (every task on its standard set).",
    )
    parser.add_argument("--suite", action="store_true",
                        help="every task on its standard set under $ICMH_DATA_DIR (Kodak, COCO-mini val, "
                             "ImageNet-100) with the default models, codec and shipped adapters; writes OUT/results.md "
                             "and results.json beside each task's files (--data and the anchor qualities come from "
                             "the suite; --task runs only that task's entry)")
    parser.add_argument("--task", choices=[t.value for t in Task],
                        help="the task to evaluate (with --suite: only that task's entry of the suite)")
    parser.add_argument("--data", type=Path,
                        help="image folder: COCO-style (annotations/instances_*.json + val2017/), ImageNet-style "
                             "(labels.csv) or plain images; for the restoration tasks with its sub-folders "
                             "(e.g. sr-bench) (without --suite)")
    parser.add_argument("--annotations", type=Path, help="COCO instances json (default: found under DATA)")
    parser.add_argument("--labels", type=Path, help="classification labels CSV (default: DATA/labels.csv)")
    parser.add_argument("--images", type=positive_int, help="evaluate only the first N images (default: all)")
    parser.add_argument("--reference", default=defaults.reference, choices=REFERENCES,
                        help="ground truth: the set's labels, or the task model's predictions on the uncompressed "
                             "images (fidelity); auto = labels where the set has them (default: auto)")
    add_task_model_options(parser)
    parser.add_argument("--codec", default=default_codec(), choices=sorted(CODECS),
                        help="base codec (default here: %(default)s)")
    parser.add_argument("--qualities", type=int_list, default=[],
                        help="codec qualities, comma-separated (default: every quality the project ships for its own "
                             "codecs, e.g. 1,2,3,4,5 for mbt2018-mean-small; 1,2,3,4 for the zoo codecs)")
    parser.add_argument("--methods", type=name_list, default=list(defaults.methods),
                        help=f"methods, comma-separated among {','.join(METHODS)} (default: "
                             f"{','.join(defaults.methods)}; universal: one bitstream for every consumer, decoded "
                             f"by --head, from the universal adapter files of --adapters or the shipped ones)")
    parser.add_argument("--head", metavar="CONSUMER",
                        help="method universal: the decoder head whose output the task model gets (default: the "
                             "task's own; e.g. machine, to measure a task model the codec was never trained with)")
    parser.add_argument("--jpeg-qualities", type=int_list, default=list(defaults.jpeg_qualities),
                        help="Pillow JPEG qualities (default: 5,10,20,40)")
    parser.add_argument("--webp-qualities", type=int_list, default=list(defaults.webp_qualities),
                        help="Pillow WebP qualities (default: 5,10,20,40)")
    parser.add_argument("--short-side", type=positive_int, default=None,
                        help="R-CNN detectors: resize the short side to this (default: the paper's 800)")
    parser.add_argument("--max-side", type=positive_int, default=None,
                        help="R-CNN detectors: longest side at most this (default: the paper's 1333)")
    parser.add_argument("--max-proposals", type=positive_int,
                        help="detector proposals kept after the RPN (default: the model's 1000; fewer is faster)")
    parser.add_argument("--bd-method", default=TABLE_METHOD, choices=BD_METHODS,
                        help="BD interpolation for curves of 4+ points (fewer always use pchip; default: %(default)s, which does not overshoot on saturating accuracy curves; cubic: the classic VCEG-M33 fit)")
    parser.add_argument("--encoder", default=EAGER, choices=ENCODER_PATHS,
                        help="how the learned methods' analysis transform runs when encoding: eager (PyTorch), "
                             "compiled (ONNX Runtime) or int8 (ONNX Runtime, 8-bit); measures the rate–accuracy "
                             "cost of a faster edge encoder (decoding is the standard decoder; default: eager)")
    add_calibration_option(parser)
    add_weight_options(parser, task_models=True)
    parser.add_argument("--out", type=Path, default=Path("out/eval"), help="output folder (default: out/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the CSV/JSON/PNG and print the tables; returns 0."""
    check_device(args.device)
    if args.suite:
        return run_suite_command(args)
    if args.task is None or args.data is None:
        raise InvalidInputError("give --task and --data (or --suite for the whole results table)")
    task = Task.parse(args.task)
    config = _config(args, task)
    warn_random_weights(f"icmh eval {args.task}", args)
    result = run_evaluation(config, progress=not args.no_progress)
    stem = f"eval-{result.task}"
    table = bd_table(result, args.bd_method)
    files = write_points(result, table, args.out, stem)
    files["png"] = plot_curves(result, args.out / f"{stem}.png")
    banner = f"!!! {RANDOM_BANNER} !!!" if result.random_weights else ""
    lines = [banner, f"task {result.task}; codec {result.codec_label}", f"task model {result.task_model}",
             f"scored against {result.reference}", *(f"note: {note}" for note in result.notes),
             format_points(result), "",
             f"Bjøntegaard deltas (negative BD-rate: fewer bits than the anchor; {result.primary_metric} first):",
             format_bd_table(table), banner, "wrote " + ", ".join(str(path) for path in files.values())]
    print("\n".join(line for line in lines if line is not banner or banner))
    return 0


def _config(args: argparse.Namespace, task: Task) -> EvalConfig:
    parts = random_parts(args)
    return EvalConfig(
        task=task.value, data=args.data or Path("."), model=model_choices(args.model, [task]).get(task),
        models_dir=args.models_dir,
        codec=args.codec, qualities=args.qualities,
        methods=args.methods, jpeg_qualities=args.jpeg_qualities, webp_qualities=args.webp_qualities,
        adapters=args.adapters, codec_weights=args.codec_weights, annotations=args.annotations, labels=args.labels,
        images=args.images, reference=args.reference, short_side=args.short_side, max_side=args.max_side,
        max_proposals=args.max_proposals, device=args.device, encoder_path=args.encoder,
        calibration=args.calibration,
        random_task_model="task models" in parts, random_codec="codec" in parts,
        random_adapters="adapters" in parts, seed=args.seed, head=args.head,
    )


def run_suite_command(args: argparse.Namespace) -> int:
    """``--suite``: the results table of every task; prints each task as it finishes and the table; returns 0."""
    warn_random_weights("icmh eval --suite", args)
    started = time.perf_counter()

    def report(task: Task, result, seconds: float) -> None:
        print(f"{task.value}: {result.task_model}, {result.rows[0]['images']} images, {seconds:.0f} s", flush=True)

    if args.model:
        raise InvalidInputError("--suite uses each task's default model; evaluate other models one task at a time")
    if args.task and all(entry.task.value != args.task for entry in SUITE):
        raise InvalidInputError(f"the suite has no entry for {args.task} (it has: "
                                f"{', '.join(entry.task.value for entry in SUITE)})")
    tasks = [Task.parse(args.task)] if args.task else None
    suite = run_suite(args.out, _config(args, Task.HUMAN), tasks=tasks, bd_method=args.bd_method,
                      progress=not args.no_progress, on_task=report)
    print((args.out / "results.md").read_text())
    print(f"suite: {len(suite.results)} tasks in {time.perf_counter() - started:.0f} s; wrote {args.out}/results.md, "
          f"results.json and eval-TASK.csv/.json/.png")
    return 0
