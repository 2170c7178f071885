"""``icmh train-restoration``: train the small restoration network of a low-level task (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from icmh.cli.common import check_file_output, positive_int
from icmh.codec.loader import check_device
from icmh.data_splits import TRAINING_SETS
from icmh.restoration import DEGRADATIONS
from icmh.tasks import RESTORATION_TASKS
from icmh.training.adapters import SCHEDULES
from icmh.training.restoration import LOSSES, RestorationTrainConfig, train_restoration


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-restoration`` parser."""
    defaults = RestorationTrainConfig(task=RESTORATION_TASKS[0].value)
    degradations = "; ".join(f"{task.value}: {DEGRADATIONS[task].describe()}" for task in RESTORATION_TASKS)
    parser = subparsers.add_parser(
        "train-restoration", help="train the restoration network of a low-level task (denoise, deblur, ...)",
        description="Train the small residual CNN that restores the frames of a low-level task: random crops of "
                    "training images (evaluation images are refused) are degraded on the fly with the task's "
                    f"seeded degradation ({degradations}), restored, and the L1 (or MSE) error to the clean crop "
                    "is minimised with Adam (learning rate ×0.1 after 60 % and 90 % of the steps). Writes OUT "
                    "(float16 safetensors recording the recipe and the training images), OUT.csv (one row per "
                    "step: loss, PSNR of the restored and of the degraded crops) and OUT.ckpt.safetensors "
                    "(--resume continues from it). The defaults are the shipped networks' recipe "
                    "(about 12 minutes on one CPU thread).",
    )
    parser.add_argument("--task", required=True, choices=[t.value for t in RESTORATION_TASKS])
    parser.add_argument("--data", action="append", default=None, metavar="SET_OR_DIR",
                        help=f"training set name ({', '.join(TRAINING_SETS)}) or image folder; repeatable "
                             f"(default: {', '.join(defaults.data)} under $ICMH_DATA_DIR)")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="optimizer steps (default %(default)s)")
    parser.add_argument("--crop", type=positive_int, default=defaults.crop,
                        help="side of the clean crops (super-resolution: the ×2 target; default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="default %(default)s")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES,
                        help="constant, or multistep: ×0.1 after 60 %% and 90 %% of the steps (default %(default)s)")
    parser.add_argument("--loss", default=defaults.loss, choices=sorted(LOSSES), help="default %(default)s")
    parser.add_argument("--channels", type=positive_int, default=defaults.channels,
                        help="feature channels of the network (default %(default)s)")
    parser.add_argument("--blocks", type=int, default=defaults.blocks, help="residual blocks (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the initial weights, the crops and the degradations (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default: cpu)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help="write the resume checkpoint every N steps (default: only at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.safetensors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .safetensors (default: the shipped file of the task in icmh/restoration/weights/, "
                             "which the task model loads)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save; returns 0."""
    check_device(args.device)
    if args.out is not None:
        check_file_output(args.out)
    config = RestorationTrainConfig(
        task=args.task, out=args.out, data=args.data or list(RestorationTrainConfig(task=args.task).data),
        steps=args.steps, crop=args.crop, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
        loss=args.loss, channels=args.channels, blocks=args.blocks, seed=args.seed, device=args.device,
        checkpoint_every=args.checkpoint_every, resume=args.resume,
    )
    result = train_restoration(config, progress=not args.no_progress)
    meta = result.metadata
    print(f"{config.out}: {args.task} network ({meta['parameters']} parameters), {config.steps} steps on "
          f"{meta['training_images_count']} training images in {result.seconds:.0f} s: "
          f"{meta.get('final_psnr', '?')} dB "
          f"restored vs {meta.get('final_psnr_input', '?')} dB degraded on training crops (mean of the last steps); "
          f"log {config.csv_path}")
    return 0
