"""``icmh bench models``: per-frame latency of every task model, beside the paper's model it stands in for."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, List, Optional

import torch

from icmh.cli.common import add_task_model_options, positive_int
from icmh.codec.loader import check_device
from icmh.errors import IcmhError
from icmh.images import load_image
from icmh.paths import default_data_dir
from icmh.taskmodels import TASK_MODELS, ModelOptions, TaskModelSpec, load_task_model

FRAME_SIZE = (480, 640)  # a VGA camera frame (H, W)
STANDS_IN = {"yolox-nano": "fasterrcnn_resnet50_fpn", "yolov5n-seg": "maskrcnn_resnet50_fpn",
             "squeezenet1_1": "resnet50", "mobilenet-v2": "resnet50"}


def register(benches: argparse._SubParsersAction) -> None:
    """Add the ``bench models`` parser."""
    parser = benches.add_parser(
        "models", help="per-frame latency of each task model vs the paper's model it stands in for",
        description="Runs each real small task model of ../shared/models and the torchvision model it stands in "
                    "for on the same 640×480 frames (a COCO image where $ICMH_DATA_DIR has one) and prints the "
                    "median milliseconds per frame (after one warm-up frame) and the ratio to the stand-in, "
                    "measured in the same run. The torchvision models run with seeded random weights where "
                    "their hub weights are absent: their timing does not depend on the weights.",
    )
    parser.add_argument("--frames", type=positive_int, default=5, help="timed frames per model (default 5)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_task_model_options(parser)
    parser.set_defaults(func=run)


def _frame() -> torch.Tensor:
    folder = default_data_dir() / "coco-mini" / "val2017"
    for path in sorted(folder.glob("*.jpg")) if folder.is_dir() else []:
        image = load_image(path)
        if tuple(image.shape[-2:]) == FRAME_SIZE:
            return image
    return torch.rand(3, *FRAME_SIZE, generator=torch.Generator().manual_seed(0))


def _time(spec: TaskModelSpec, options: ModelOptions, frame: torch.Tensor, frames: int) -> Dict[str, object]:
    try:
        model = load_task_model(spec.tasks[0], spec.name, options)
    except IcmhError:  # hub weights absent: time the architecture with seeded random weights
        model = load_task_model(spec.tasks[0], spec.name, ModelOptions(**{**options.__dict__, "random_weights": True}))
    frame = frame.to(options.device)
    model.infer([frame])  # warm-up
    seconds: List[float] = []
    for _ in range(frames):
        start = time.perf_counter()
        model.infer([frame])
        if options.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"task": spec.tasks[0].value, "ms": 1e3 * statistics.median(seconds), "weights": model.weights_label}


def run(args: argparse.Namespace) -> int:
    """Time the models and print the table; returns 0."""
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.model or [name for name in STANDS_IN if TASK_MODELS[name].files_present(args.models_dir)]
    options = ModelOptions(device=args.device, models_dir=args.models_dir, score_threshold=0.25)
    frame = _frame()
    timings: Dict[str, Dict[str, object]] = {}
    for name in dict.fromkeys(names + [STANDS_IN[n] for n in names if n in STANDS_IN]):
        timings[name] = _time(TASK_MODELS[name], options, frame, args.frames)
    for name, stand_in in STANDS_IN.items():
        if name in timings and stand_in in timings:
            timings[name]["stands_in_for"] = stand_in
            timings[name]["ratio"] = timings[name]["ms"] / timings[stand_in]["ms"]
    report = {"device": args.device, "threads": torch.get_num_threads(), "frame": "640x480", "frames": args.frames,
              "models": timings}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"task models on {report['frame']} frames, {args.device}, {report['threads']} threads, "
          f"median of {args.frames} (after a warm-up)")
    print(f"  {'model':<26}{'task':<16}{'ms/frame':>10}{'ratio':>8}  {'stands in for':<26}weights")
    for name, row in timings.items():
        ratio: Optional[float] = row.get("ratio")  # type: ignore[assignment]
        print(f"  {name:<26}{row['task']:<16}{row['ms']:>10.1f}{'' if ratio is None else f'{ratio:.3f}':>8}  "
              f"{row.get('stands_in_for', ''):<26}{row['weights']}")
    return 0
