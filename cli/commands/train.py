"""``icmh train``: train one task's adapters (or universal decoder heads) on a frozen base codec and
frozen task models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional

from icmh.cli.common import (add_task_model_options, add_weight_options, check_file_output, model_choices,
                             model_options, positive_int, random_parts, warn_random_weights)
from icmh.codec.loader import check_device
from icmh.data_splits import TRAINING_SETS, training_images
from icmh.errors import InvalidInputError
from icmh.models.registry import CODECS, get_codec
from icmh.taskmodels import load_task_model
from icmh.tasks import Task
from icmh.training.adapters import SCHEDULES, AdapterTrainConfig, train_adapters
from icmh.training.calibrate import calibrate
from icmh.training.data import RandomCrops
from icmh.training.rd import AMP_DTYPES
from icmh.training.supervision import SUPERVISORS


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
    parser.add_argument("--task", choices=[t.value for t in Task if t.uses_adapters],
                        help="the task whose adapters to train (or --heads)")
    universal = parser.add_argument_group(
        "universal coding (one bitstream for several consumers; see docs/universal.md)")
    universal.add_argument("--heads", metavar="LIST",
                           help="train decoder heads for these consumers, e.g. human,detection,classification,machine "
                                "(with the shared encoder adapters unless --decoder-only); --out is then a folder. "
                                "Loss: bpp + Σ λ_t·D_t; human: pixel MSE, λ = the codec's own λ·255²; machine: "
                                "task-agnostic supervision (--supervisor)")
    universal.add_argument("--decoder-only", action="store_true",
                           help="train only the heads, on a frozen encoder: the base encoder, or --encoder-adapters")
    universal.add_argument("--encoder-adapters", type=Path, metavar="FILE",
                           help="with --decoder-only: the shared-encoder file whose frames the heads decode")
    universal.add_argument("--supervisor", default=defaults.supervisor, choices=SUPERVISORS,
                           help="what supervises the machine head (and --embedding-weight): standin (the real "
                                "small classifiers' features together), clip-vit-b-32/16 (CLIP weights from the "
                                "Hugging Face cache) or clip-random (tests) (default %(default)s)")
    universal.add_argument("--lmbdas", metavar="C=λ,...", help="λ per head, e.g. human=400,detection=4.6 "
                                                              "(default: see --heads)")
    add_task_model_options(parser, several=True)
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
    parser.add_argument("--importance", action="store_true",
                        help="also learn an importance-map selector: a quantiser level in −3..3 per 64×64 block, "
                             "sent as side information counted in the rate (docs/importance.md)")
    parser.add_argument("--prompts", action="store_true",
                        help="also learn a task prompt: a per-channel scale and shift of the decoded latent")
    parser.add_argument("--embedding-weight", type=float, default=0.0, metavar="BETA",
                        help="restoration tasks (LL-ICM): add BETA × the --supervisor's global-to-instance embedding "
                             "distance between the restored and the clean image to the pixel error, for "
                             "robustness to the degradation (default 0: pixel error only)")
    parser.add_argument("--resume", action="store_true", help="continue from FILE.ckpt.safetensors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, help="output adapter checkpoint (.safetensors); required unless --calibrate")
    parser.add_argument("--calibrate", action="store_true",
                        help="train nothing: print, for every quality of the codec, the base codec's estimated bpp, "
                             "the task model's distortion D on training crops, and λ = k·bpp/D (see --balance)")
    parser.add_argument("--balance", type=float, default=1.0, metavar="K",
                        help="k of --calibrate: the weight of the distortion term against the rate at the start "
                             "(default 1)")
    add_weight_options(parser, adapters=False, task_models=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and save (or print the λ calibration); returns 0."""
    check_device(args.device)
    if (args.task is None) == (args.heads is None):
        raise InvalidInputError("give either --task TASK (one task's adapters) or --heads LIST (universal coding)")
    heads = [Task.parse(name.strip()) for name in args.heads.split(",") if name.strip()] if args.heads else []
    if args.calibrate:
        if heads:
            raise InvalidInputError("--calibrate works per task: give --task")
        return run_calibration(args, Task.parse(args.task))
    if args.out is None:
        raise InvalidInputError("give --out FILE for the adapters (a folder with --heads), or --calibrate")
    if not heads:
        check_file_output(args.out)
    parts = random_parts(args)
    tasks = heads or [Task.parse(args.task)]
    models = model_choices(args.model, tasks)
    config = AdapterTrainConfig(
        task=args.task or "", out=args.out, data=args.data or list(TRAINING_SETS), model=models.get(tasks[0]),
        models_dir=args.models_dir, codec=args.codec, quality=args.quality, steps=args.steps, crop=args.crop,
        batch_size=args.batch_size, lr=args.lr, lmbda=args.lmbda, schedule=args.schedule, seed=args.seed,
        device=args.device, amp=args.amp, checkpoint_every=args.checkpoint_every, resume=args.resume,
        random_task_model="task models" in parts, codec_weights=args.codec_weights, random_codec="codec" in parts,
        variant=args.variant, mid_dim=args.mid_dim, init=args.init, heads=[t.value for t in heads],
        joint=not args.decoder_only, encoder_adapters=args.encoder_adapters, supervisor=args.supervisor,
        models={t.value: name for t, name in models.items()} if heads else {}, lmbdas=parse_lmbdas(args.lmbdas),
        importance=args.importance, prompts=args.prompts, embedding_weight=args.embedding_weight,
    )
    warn_random_weights(f"icmh train {args.task or 'universal heads'}", args)
    history = train_adapters(config, progress=not args.no_progress)
    random = f" [RANDOM WEIGHTS: {', '.join(parts)}]" if parts else ""
    last = history[-1] if history else {"step": history.start_step, "loss": float("nan"),
                                        "bpp": float("nan"), "distortion": float("nan")}
    what = f"universal heads {', '.join(config.heads)}" if heads else f"{args.task} adapters"
    weights = ", ".join(f"{c}={v:g}" for c, v in config.lmbdas.items()) if heads else f"{config.lmbda:g}"
    print(f"{args.out}: {what} for {args.codec} q{config.quality} against {history.task_model_label}"
          f"{random}, λ {weights}, {last['step']} steps: loss {last['loss']:.4f}, {last['bpp']:.4f} bpp "
          f"(estimated), distortion {last['distortion']:.5f} on training crops; log {config.csv_path}")
    return 0


def parse_lmbdas(text: Optional[str]) -> Dict[str, float]:
    """``--lmbdas human=400,detection=4.6`` as consumer -> λ; raises :class:`InvalidInputError`."""
    lmbdas: Dict[str, float] = {}
    for item in (part.strip() for part in (text or "").split(",") if part.strip()):
        name, _, value = item.partition("=")
        try:
            lmbdas[Task.parse(name.strip()).value] = float(value)
        except ValueError:
            raise InvalidInputError(f"bad --lmbdas entry {item!r}: give CONSUMER=λ, e.g. human=400") from None
    return lmbdas


def run_calibration(args: argparse.Namespace, task: Task) -> int:
    """``--calibrate``: the λ table of the task model for every quality of the codec; returns 0."""
    spec = get_codec(args.codec)
    qualities = [args.quality] if args.quality else list(spec.qualities)
    model = load_task_model(task, model_choices(args.model, [task]).get(task), model_options(args))
    crops = RandomCrops(training_images(args.data or list(TRAINING_SETS)), crop=args.crop, seed=args.seed)
    points = calibrate(model, args.codec, qualities, crops, batch_size=args.batch_size, balance=args.balance,
                       device=args.device)
    print(f"λ calibration of {model.name} ({model.weights_label}) on {args.codec}, crops {args.crop}², "
          f"k = {args.balance:g}")
    print(f"  {'quality':>7}{'bpp':>9}{'D':>12}{'λ = k·bpp/D':>14}")
    for point in points:
        print(f"  {point.quality:>7}{point.bpp:>9.4f}{point.distortion:>12.5g}{point.lmbda:>14.4g}")
    return 0
