"""``icmh train-codec``: rate–distortion training of a base codec, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from icmh.data_splits import TRAINING_SETS
from icmh.models.registry import CODECS

from icmh.training.rd import AMP_DTYPES, RDTrainConfig, train_base_codec


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-codec`` parser."""
    defaults = RDTrainConfig(out=Path("unused"))
    parser = subparsers.add_parser(
        "train-codec", help="rate–distortion training of a base codec (resumable)",
        description="Train a base codec with R + λ·255²·MSE and the auxiliary quantile loss (CompressAI style) "
                    "on random crops of training images, then save float16 safetensors that record the recipe "
                    "and the training images. Evaluation images (Kodak, annotated COCO-mini val, ImageNet-100, "
                    "sr-bench) are refused. Writes <out>.csv every step and <out>.ckpt.safetensors every "
                    "--checkpoint-every steps; --resume continues from it (also after raising --steps).",
    )
    parser.add_argument("--codec", default=defaults.codec, choices=sorted(CODECS), help="architecture (default %(default)s)")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="quality (sets N, M; default %(default)s)")
    parser.add_argument("--data", action="append", default=None, metavar="SET_OR_DIR",
                        help=f"training set name ({', '.join(TRAINING_SETS)}) or image folder; repeatable "
                             f"(default: all three training sets under $ICMH_DATA_DIR)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="total optimizer steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default %(default)s")
    parser.add_argument("--crop", type=int, default=defaults.crop, help="random crop size (default %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--lr-drop", type=float, default=defaults.lr_drop,
                        help="fraction of --steps after which the learning rate drops ×0.1 (default %(default)s)")
    parser.add_argument("--lmbda", type=float, default=defaults.lmbda, help="λ of R + λ·255²·MSE (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=defaults.amp,
                        help="bf16: analysis/synthesis transforms in bfloat16 autocast (≈2× faster on CPUs with "
                             "AVX-512 BF16 and on GPUs); entropy models stay float32 (default %(default)s)")
    parser.add_argument("--init-weights", type=Path, metavar="PATH",
                        help="start from these weights instead of from scratch (e.g. fine-tune to another λ)")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, metavar="STEPS",
                        help="write the resume checkpoint every STEPS steps (default %(default)s; 0: at the end only)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>.ckpt.safetensors")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save; returns 0."""
    config = RDTrainConfig(
        out=args.out, sources=args.data or list(TRAINING_SETS), codec=args.codec, quality=args.quality,
        steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr, lr_drop=args.lr_drop,
        lmbda=args.lmbda, seed=args.seed, amp=args.amp, init_weights=args.init_weights,
        checkpoint_every=args.checkpoint_every, resume=args.resume,
    )
    result = train_base_codec(config)
    meta = result.metadata
    print(f"{args.out}: {args.codec} q{args.quality} after {config.steps} steps on "
          f"{meta['training_images_count']} training images: {meta.get('final_bpp', '?')} bpp (estimated), "
          f"{meta.get('final_psnr', '?')} dB on training crops (mean of the last 200 steps)")
    return 0
