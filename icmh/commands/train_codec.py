"""``icmh train-codec``: plain rate–distortion training of a base codec."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.models.registry import CODECS
from shared.paths import default_data_dir

from training.rd import RDTrainConfig, train_and_save


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-codec`` parser."""
    defaults = RDTrainConfig(data=[])
    parser = subparsers.add_parser(
        "train-codec", help="rate–distortion training of a base codec from scratch",
        description="Train a base codec with R + λ·255²·MSE and the auxiliary quantile loss (CompressAI style) "
                    "on random crops of real images, then save float16 safetensors. The defaults rebuild the "
                    "bundled mbt2018-mean-tiny codec (about 3–8 min on 2 CPU cores).",
    )
    parser.add_argument("--codec", default=defaults.codec, choices=sorted(CODECS), help="architecture")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="quality (sets N, M)")
    parser.add_argument("--data", type=Path, action="append", default=None,
                        help="image folder (repeatable; default: kodak and coco-mini under $ICMH_DATA_DIR)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--crop", type=int, default=defaults.crop, help="random crop size")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lmbda", type=float, default=defaults.lmbda, help="λ of R + λ·255²·MSE")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--init-weights", type=Path, metavar="PATH",
                        help="start from these weights instead of from scratch (e.g. fine-tune to another λ)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save; returns 0."""
    data = args.data or [default_data_dir() / "kodak", default_data_dir() / "coco-mini"]
    config = RDTrainConfig(data=data, codec=args.codec, quality=args.quality, steps=args.steps,
                           batch_size=args.batch_size, crop=args.crop, lr=args.lr, lmbda=args.lmbda, seed=args.seed,
                           init_weights=args.init_weights)
    train_and_save(config, args.out)
    last = config.history[-1]
    print(f"{args.out}: {args.codec} q{args.quality} after {last['step']} steps: "
          f"loss {last['loss']:.4f}, {last['bpp']:.4f} bpp (estimated), {last['psnr']:.2f} dB on training crops")
    return 0
