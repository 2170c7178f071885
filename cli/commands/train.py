"""``icmh train``: train one task's adapters on a frozen base codec and a frozen task model."""

from __future__ import annotations

import argparse
from pathlib import Path

from icmh.cli.common import (add_task_model_options, add_weight_options, check_file_output, model_choices,
                             positive_int, random_parts, warn_random_weights)
from icmh.codec.loader import check_device
from icmh.data_splits import TRAINING_SETS
from icmh.models.registry import CODECS
from icmh.tasks import Task
from icmh.training.adapters import SCHEDULES, AdapterTrainConfig, train_adapters
from icmh.training.rd import AMP_DTYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser."""
    defaults = AdapterTrainConfig(task="detection", out=Path("unused"), model="fasterrcnn_resnet50_fpn")
    parser = subparsers.add_parser(
        "train", help="train the adapters of one task (base codec and task model frozen)",
        description="Train one task's adapters with bpp + λ·D on random crops of training images (no labels "
                    "needed). D is the task model's feature distortion: the mean over its feature levels of the "
                    "MSE between the features of x̂ and x (YOLOX / YOLOv5 neck outputs, SqueezeNet / MobileNetV2 "
                    "stages, R50-FPN p2..p6, ResNet-50 layer1..4), each in the model's own input preparation. "
                    "Evaluation images are refused. Writes FILE (adapter checkpoint for --adapters), FILE.csv "
                    "(log) and FILE.ckpt.safetensors (resume).",
    )
    parser.add_argument("--task", required=True, choices=[t.value for t in Task if t.uses_adapters])
    add_task_model_options(parser)
    parser.add_argument("--codec", default=defaults.codec, choices=sorted(CODECS), help="base codec (default %(default)s)")
    parser.add_argument("--quality", type=int, default=None, help="quality of the base codec (default: its own)")
    parser.add_argument("--data", action="append", default=None, metavar="SET_OR_DIR",
                        help=f"training set name ({', '.join(TRAINING_SETS)}) or image folder; repeatable "
                             f"(default: all three training sets under $ICMH_DATA_DIR)")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help="total optimizer steps")
    parser.add_argument("--crop", type=positive_int, default=defaults.crop, help="random crop size (multiple of 64)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lmbda", type=float, default=None,
                        help="λ (default: the preset of the task model and quality; see the README)")
    parser.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=defaults.amp,
                        help="bf16: codec transforms and task model in bfloat16 autocast (faster on AVX-512 BF16 "
                             "CPUs and GPUs; default %(default)s)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help="write the resume checkpoint every N steps (default: only at the end)")
    parser.add_argument("--variant", default=defaults.variant, help="adapter variant")
    parser.add_argument("--mid-dim", type=positive_int, default=defaults.mid_dim, help="adapter bottleneck d")
    parser.add_argument("--init", default=defaults.init, help="adapter initialisation")
    parser.add_argument("--resume", action="store_true", help="continue from FILE.ckpt.safetensors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, required=True, help="output adapter checkpoint (.safetensors)")
    add_weight_options(parser, adapters=False, task_models=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save; returns 0."""
    check_file_output(args.out)
    check_device(args.device)
    task = Task.parse(args.task)
    parts = random_parts(args)
    config = AdapterTrainConfig(
        task=args.task, out=args.out, data=args.data or list(TRAINING_SETS), model=model_choices(args.model, [task]).get(task),
        models_dir=args.models_dir, codec=args.codec, quality=args.quality, steps=args.steps, crop=args.crop,
        batch_size=args.batch_size, lr=args.lr, lmbda=args.lmbda, schedule=args.schedule, seed=args.seed,
        device=args.device, amp=args.amp, checkpoint_every=args.checkpoint_every, resume=args.resume,
        random_task_model="task models" in parts, codec_weights=args.codec_weights, random_codec="codec" in parts,
        variant=args.variant, mid_dim=args.mid_dim, init=args.init,
    )
    warn_random_weights(f"icmh train {args.task}", args)
    history = train_adapters(config, progress=not args.no_progress)
    random = f" [RANDOM WEIGHTS: {', '.join(parts)}]" if parts else ""
    last = history[-1] if history else {"step": history.start_step, "loss": float("nan"),
                                        "bpp": float("nan"), "distortion": float("nan")}
    print(f"{args.out}: {args.task} adapters for {args.codec} q{config.quality} against {history.task_model_label}"
          f"{random}, λ={config.lmbda:g}, {last['step']} steps: loss {last['loss']:.4f}, {last['bpp']:.4f} bpp "
          f"(estimated), distortion {last['distortion']:.5f} on training crops; log {config.csv_path}")
    return 0
