"""Rate–distortion training of a base codec (CompressAI style), resumable.

Loss ``R + λ·255²·MSE`` (:class:`compressai.losses.RateDistortionLoss`) with a second
optimizer on the entropy bottleneck's quantiles (the auxiliary loss), mixed quantisation
(:func:`icmh.models.adapted.training_forward`), optionally with the analysis and
synthesis transforms in bfloat16 autocast (``amp="bf16"``, about 2× faster on a CPU with
AVX-512 BF16; the entropy models stay float32).

Runs are repeatable and resumable: step ``s`` (1-based) trains on
``RandomCrops.batch(s)`` with the noise RNG seeded from ``(seed, s)``, and the learning
rate is a pure function of the step. Beside ``out`` the run keeps ``<out>.csv`` (one row
per step) and ``<out>.ckpt.safetensors`` (weights and both optimizers, every
``checkpoint_every`` steps); ``resume=True`` continues from it. The final weights are
rounded to float16 (the precision they are shipped in), the CDF tables are built, and
the file records its recipe: codec, quality, λ, steps, crop, batch, learning rates, time,
and the list of training images (checked to hold no evaluation image).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from compressai.losses import RateDistortionLoss
from torch import nn

from icmh.data_splits import TRAINING_SETS, image_list_digest, relative_names, training_images
from icmh.errors import InvalidInputError
from icmh.seeding import seeded
from icmh.models.adapted import training_forward
from icmh.models.registry import get_codec
from icmh.codec.weights import load_codec_state, save_codec_weights
from icmh.hub import read_state_dict

from icmh.training.checkpoint import RunFiles, TrainingRun, check_finite, set_learning_rate
from icmh.training.data import RandomCrops

CHECKPOINT_FORMAT = "icmh-codec-training/1"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}
CSV_FIELDS = ("step", "loss", "bpp", "mse", "psnr", "aux", "lr", "seconds")
RESUME_KEYS = ("codec", "quality", "batch_size", "crop", "lmbda", "seed", "sources", "amp")


@dataclass
class RDTrainConfig(RunFiles):
    """Settings of one rate–distortion training run."""

    out: Path
    sources: List[str] = field(default_factory=lambda: list(TRAINING_SETS))
    data_dir: Optional[Path] = None  # where the named sets lie (default: $ICMH_DATA_DIR)
    codec: str = "mbt2018-mean-small"
    quality: int = 3
    steps: int = 1000
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-4
    lr_drop: float = 0.9  # fraction of the steps after which lr × 0.1
    aux_lr: float = 1e-3
    lmbda: float = 0.0067
    seed: int = 0
    amp: str = "none"
    init_weights: Optional[Path] = None  # start from these weights (fine-tuning to another λ)
    checkpoint_every: int = 500
    resume: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.sources = [str(s) for s in self.sources]
        if self.amp not in AMP_DTYPES:
            raise InvalidInputError(f"unknown --amp {self.amp!r} (valid: {', '.join(AMP_DTYPES)})")
        if self.steps < 1 or self.batch_size < 1 or self.crop < 64 or self.crop % 16:
            raise InvalidInputError("steps and batch size must be >= 1 and the crop a multiple of 16, at least 64")
        if not 0 < self.lr_drop <= 1 or self.lr <= 0 or self.lmbda <= 0:
            raise InvalidInputError("--lr and --lmbda must be positive and --lr-drop in (0, 1]")
        get_codec(self.codec).check_quality(self.quality)


def learning_rate(config: RDTrainConfig, step: int) -> float:
    """Learning rate of (1-based) ``step``: ``lr``, then ``lr/10`` after ``lr_drop·steps``."""
    return config.lr * (0.1 if step > int(config.lr_drop * config.steps) else 1.0)


@dataclass
class RDTrainResult:
    """A trained codec (float16-exact weights, CDF tables built) and its run."""

    model: nn.Module
    history: List[Dict[str, float]]
    metadata: Dict[str, str]


def train_base_codec(config: RDTrainConfig, progress: bool = True) -> RDTrainResult:
    """Train (or resume training) a base codec and save it to ``config.out``.

    Raises :class:`InvalidInputError` for bad data, a checkpoint of other settings, or a
    diverging loss.
    """
    files = training_images(config.sources, config.data_dir)
    names = relative_names(files, config.data_dir)
    spec = get_codec(config.codec)
    model = seeded(config.seed, lambda: spec.build(config.quality))
    if config.init_weights is not None:
        load_codec_state(model, read_state_dict(Path(config.init_weights)),
                         f"--init-weights {config.init_weights} do not fit {config.codec} q{config.quality}")
    model = model.train().to(memory_format=torch.channels_last)
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main_params, lr=config.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=config.aux_lr)
    criterion = RateDistortionLoss(lmbda=config.lmbda)
    dataset = RandomCrops(files, crop=config.crop, seed=config.seed, length=config.steps * config.batch_size)
    amp = AMP_DTYPES[config.amp]

    run = TrainingRun(config, CHECKPOINT_FORMAT, RESUME_KEYS, {"model": model},
                      {"main": optimizer, "aux": aux_optimizer}, CSV_FIELDS)
    for step in run.steps(f"train-codec {config.codec} q{config.quality}", progress):
        began = time.perf_counter()
        lr = learning_rate(config, step)
        set_learning_rate(optimizer, lr)
        x = dataset.batch(step, config.batch_size).contiguous(memory_format=torch.channels_last)
        torch.manual_seed(config.seed * 1_000_003 + step)
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        out = criterion(training_forward(model, spec.latent_coder, x, amp), x)
        loss = check_finite(out["loss"], step, "lower --lr or resume from the last checkpoint")
        out["loss"].backward()
        nn.utils.clip_grad_norm_(main_params, 1.0)
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
        seconds = time.perf_counter() - began
        mse = out["mse_loss"].item()
        record = {"step": step, "loss": loss, "bpp": out["bpp_loss"].item(), "mse": mse,
                  "psnr": -10 * math.log10(max(mse, 1e-10)), "aux": aux_loss.item(), "lr": lr, "seconds": seconds}
        run.record(record, loss=f"{loss:.3f}", bpp=f"{record['bpp']:.3f}", psnr=f"{record['psnr']:.2f}")
    history = run.history
    elapsed = sum(r["seconds"] for r in history)

    model = model.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    model.update(force=True)
    metadata = recipe(config, names, history, elapsed)
    save_codec_weights(model, config.out, metadata)
    return RDTrainResult(model, history, metadata)


def recipe(config: RDTrainConfig, image_names: Sequence[str], history: Sequence[Dict[str, float]],
           seconds: float) -> Dict[str, str]:
    """The metadata a trained codec file carries: how to make it again, and from which images."""
    last = history[-1] if history else {}
    recent = history[-200:]
    meta = {k: str(v) for k, v in config.settings().items() if k not in ("out", "resume", "data_dir", "checkpoint_every")}
    meta.update({
        "format": "icmh-codec/1",
        "init_weights": Path(config.init_weights).name if config.init_weights else "",
        "sources": ",".join(config.sources),
        "training_images": "\n".join(image_names),
        "training_images_count": str(len(image_names)),
        "training_images_sha256": image_list_digest(image_names),
        "train_seconds": f"{seconds:.0f}",
        "trained_on": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
    })
    if recent:
        meta.update({f"final_{k}": f"{sum(r[k] for r in recent) / len(recent):.4f}"
                     for k in ("loss", "bpp", "psnr") if k in last})
    return meta
