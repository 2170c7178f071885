"""``icmh train``: train one task's adapters on a frozen base codec and a frozen task model."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli_common import check_file_output, positive_int, warn_random_weights
from shared.codec_loader import check_device
from shared.models.registry import CODECS
from shared.tasks import Task

from training.adapters import SCHEDULES, AdapterTrainConfig, train_adapters


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser."""
    defaults = AdapterTrainConfig(task="detection", out=Path("unused"))
    parser = subparsers.add_parser(
        "train", help="train the adapters of one task (base codec and task model frozen)",
        description="Train one task's adapters with bpp + λ·D, D the task model's feature distortion "
                    "(ResNet-50 stages for classification, R50-FPN p2..p6 for detection / segmentation), on "
                    "random crops of real images (COCO / ImageNet / Kodak folders; no labels needed). Writes "
                    "FILE (adapter checkpoint for --adapters), FILE.csv (log) and FILE.ckpt.safetensors (resume).",
    )
    parser.add_argument("--task", required=True, choices=[t.value for t in Task if t.uses_adapters])
    parser.add_argument("--codec", default=defaults.codec, choices=sorted(CODECS), help="base codec")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="quality of the base codec")
    parser.add_argument("--codec-weights", type=Path, metavar="PATH", help="base codec weights file")
    parser.add_argument("--data", type=Path, action="append", required=True, help="image folder (repeatable)")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help="total optimizer steps")
    parser.add_argument("--crop", type=positive_int, default=defaults.crop, help="random crop size (multiple of 64)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lmbda", type=float, default=None, help="λ (default: the paper's preset for task and quality)")
    parser.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help="write the resume checkpoint every N steps (default: only at the end)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--variant", default=defaults.variant, help="adapter variant")
    parser.add_argument("--mid-dim", type=positive_int, default=defaults.mid_dim, help="adapter bottleneck d")
    parser.add_argument("--init", default=defaults.init, help="adapter initialisation")
    parser.add_argument("--resume", action="store_true", help="continue from FILE.ckpt.safetensors")
    parser.add_argument("--random-weights", action="store_true",
                        help="seeded random task model (smoke runs only; loudly labelled)")
    parser.add_argument("--random-codec", action="store_true", help="seeded random base codec (smoke runs only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, required=True, help="output adapter checkpoint (.safetensors)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save; returns 0."""
    check_file_output(args.out)
    check_device(args.device)
    config = AdapterTrainConfig(
        task=args.task, out=args.out, data=args.data, codec=args.codec, quality=args.quality, steps=args.steps,
        crop=args.crop, batch_size=args.batch_size, lr=args.lr, lmbda=args.lmbda, schedule=args.schedule,
        seed=args.seed, device=args.device, checkpoint_every=args.checkpoint_every, resume=args.resume,
        random_weights=args.random_weights, codec_weights=args.codec_weights, random_codec=args.random_codec,
        variant=args.variant, mid_dim=args.mid_dim, init=args.init,
    )
    if args.random_weights:
        warn_random_weights(f"the {args.task} task model for training")
    if args.random_codec:
        warn_random_weights(f"the base codec {args.codec} for training")
    history = train_adapters(config, progress=not args.no_progress)
    random = " [RANDOM WEIGHTS]" if (args.random_weights or args.random_codec) else ""
    last = history[-1] if history else {"step": history.start_step, "loss": float("nan"),
                                        "bpp": float("nan"), "distortion": float("nan")}
    print(f"{args.out}: {args.task} adapters for {args.codec} q{args.quality}{random}, λ={config.lmbda:g}, "
          f"{last['step']} steps: loss {last['loss']:.4f}, {last['bpp']:.4f} bpp (estimated), "
          f"distortion {last['distortion']:.5f} on training crops; log {config.csv_path}")
    return 0
