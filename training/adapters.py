"""Adapter training: frozen base codec + frozen task model, only the task's adapters learn.

Loss ``bpp + λ·D`` with ``bpp = −Σ log2 likelihoods / pixels`` (noisy likelihoods of the
training forward, :func:`icmh.models.adapted.training_forward`) and ``D`` the task model's
feature distortion (:meth:`icmh.taskmodels.TaskModel.distortion`: the mean over its
feature levels of the MSE between the features of ``x̂`` and ``x``, each model in its own
input preparation; no labels). Adam on the adapter parameters only.

Runs are repeatable: step ``s`` (1-based) uses the crops ``RandomCrops.batch(s)`` and seeds
the torch RNG (quantisation noise) from ``(seed, s)``, and the learning-rate schedule is a
pure function of the step. A resumed run therefore ends with exactly the tensors of an
uninterrupted one.

Files next to ``out``: ``<out>.csv`` (step, loss, bpp, distortion, lr) and the resume
checkpoint ``<out>.ckpt.safetensors`` (adapter tensors and Adam state, see
:mod:`icmh.training.checkpoint`); the final adapters go to ``out`` through
:func:`icmh.codec.adapter_checkpoint.save_adapters`, with the task model and the list of
training images in their metadata. Safetensors only: nothing is pickled.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from icmh.codec.adapter_checkpoint import AdapterMetadata, save_adapters
from icmh.codec.loader import OWN_CODEC, CodecOptions, open_frame_codec
from icmh.data_splits import TRAINING_SETS, relative_names, training_images
from icmh.errors import InvalidInputError
from icmh.models.adapted import AdapterConfig
from icmh.models.registry import get_codec
from icmh.seeding import seeded
from icmh.taskmodels import ModelOptions, default_model_name, load_task_model
from icmh.tasks import Task
from icmh.training.checkpoint import StepLog, check_same_settings, read_checkpoint, save_checkpoint
from icmh.training.data import RandomCrops
from icmh.training.rd import AMP_DTYPES

CHECKPOINT_FORMAT = "icmh-adapter-training/2"
CSV_FIELDS = ("step", "loss", "bpp", "distortion", "lr")
RESUME_KEYS = ("task", "model", "codec", "quality", "variant", "mid_dim", "init", "batch_size", "crop", "seed", "lmbda")
SCHEDULES = ("constant", "multistep")
MULTISTEP_MILESTONES = (0.6, 0.9)  # fractions of the total steps; lr × 0.1 at each

# λ per task model and quality. The paper's models keep the paper's values (METHOD.md); the real
# small models' feature scales differ, so theirs were re-calibrated (README, "Adapters").
LAMBDA_PRESETS: Dict[str, Dict[int, float]] = {
    "resnet50": {1: 1.8, 2: 3.5, 3: 6.7, 4: 13.0},
    "fasterrcnn_resnet50_fpn": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    "maskrcnn_resnet50_fpn": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    "faster_rcnn_R_50_FPN_3x": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    "mask_rcnn_R_50_FPN_3x": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
}


def preset_lambda(model: str, quality: int) -> float:
    """The λ preset of task model ``model`` at ``quality`` (the nearest preset quality outside the table).

    Raises :class:`InvalidInputError` when the model has no preset (pass ``--lmbda``)."""
    if model not in LAMBDA_PRESETS:
        raise InvalidInputError(f"no λ preset for task model {model}; pass --lmbda "
                                f"(presets: {', '.join(sorted(LAMBDA_PRESETS))})")
    presets = LAMBDA_PRESETS[model]
    return presets[min(presets, key=lambda q: (abs(q - quality), q))]


@dataclass
class AdapterTrainConfig:
    """Settings of one adapter training run (``icmh train --help`` explains each)."""

    task: str
    out: Path
    data: List[str] = field(default_factory=lambda: list(TRAINING_SETS))
    model: Optional[str] = None  # task model name; None: the task's default
    models_dir: Optional[Path] = None
    codec: str = OWN_CODEC
    quality: Optional[int] = None  # None: the codec's default quality
    steps: int = 1000
    crop: int = 256
    batch_size: int = 8
    lr: float = 1e-4
    lmbda: Optional[float] = None  # None: the preset of the task model and quality
    schedule: str = "constant"
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"
    checkpoint_every: int = 0  # 0: only at the end
    resume: bool = False
    random_task_model: bool = False  # seeded random task model (smoke runs)
    codec_weights: Optional[Path] = None
    random_codec: bool = False  # seeded random base codec (smoke runs)
    variant: str = "sfma"
    mid_dim: int = 64
    init: str = "zero"

    def __post_init__(self) -> None:
        task = Task.parse(self.task)
        self.task = task.value
        if not task.uses_adapters:
            raise InvalidInputError("task 'human' has no adapters to train")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"unknown schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        if self.amp not in AMP_DTYPES:
            raise InvalidInputError(f"unknown --amp {self.amp!r} (valid: {', '.join(AMP_DTYPES)})")
        if self.steps < 1 or self.batch_size < 1 or self.crop < 64 or self.crop % 64:
            raise InvalidInputError("steps and batch size must be >= 1 and the crop a multiple of 64")
        self.out = Path(self.out)
        self.data = [str(p) for p in self.data]
        self.quality = self.quality or get_codec(self.codec).default_quality
        self.model = self.model or default_model_name(task, self.models_dir)
        if self.lmbda is None:
            self.lmbda = preset_lambda(self.model, self.quality)

    @property
    def csv_path(self) -> Path:
        """The per-step log beside ``out``."""
        return self.out.with_name(self.out.name + ".csv")

    @property
    def checkpoint_path(self) -> Path:
        """The resume checkpoint beside ``out``."""
        return self.out.with_name(self.out.name + ".ckpt.safetensors")

    def settings(self) -> Dict[str, object]:
        """The settings as plain JSON values."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def learning_rate(config: AdapterTrainConfig, step: int) -> float:
    """Learning rate of (1-based) ``step``."""
    if config.schedule == "constant":
        return config.lr
    drops = sum(step > int(f * config.steps) for f in MULTISTEP_MILESTONES)
    return config.lr * 0.1 ** drops


class TrainHistory(list):
    """The per-step records (dicts); also carries the trained codec, optimizer, metadata and step times."""

    codec = None
    step_seconds: List[float]
    optimizer = None
    metadata: Optional[AdapterMetadata] = None
    start_step: int = 0
    task_model_label: str = ""


def train_adapters(config: AdapterTrainConfig, progress: bool = True) -> TrainHistory:
    """Train the adapters of ``config.task``; writes ``config.out`` and returns the history.

    Raises :class:`InvalidInputError` (bad data, evaluation images, a checkpoint of other
    settings, a diverging loss) or :class:`~icmh.errors.WeightsMissingError`.
    """
    task = Task(config.task)
    files = training_images(config.data)
    frame_codec = open_frame_codec(CodecOptions(
        codec=config.codec, quality=config.quality, codec_weights=config.codec_weights,
        random_codec=config.random_codec, seed=config.seed, device=config.device,
    ))
    codec = frame_codec.codec
    adapter_set = seeded(config.seed, lambda: codec.add_adapters(
        task, AdapterConfig(config.variant, config.mid_dim, config.init)))
    codec.set_task(task)
    codec.train()
    model = load_task_model(task, config.model, ModelOptions(
        device=config.device, random_weights=config.random_task_model, seed=config.seed, models_dir=config.models_dir))
    dataset = RandomCrops(files, crop=config.crop, seed=config.seed, length=config.steps * config.batch_size)
    optimizer = torch.optim.Adam(list(adapter_set.parameters()), lr=config.lr)
    amp = AMP_DTYPES[config.amp]

    history = TrainHistory()
    history.step_seconds = []
    history.task_model_label = f"{model.name} ({model.weights_label})"
    start = 0
    if config.resume:
        checkpoint = read_checkpoint(config.checkpoint_path, CHECKPOINT_FORMAT)
        check_same_settings(checkpoint.config, config.settings(), RESUME_KEYS)
        adapter_set.load_state_dict(checkpoint.groups["adapter"], strict=True)
        checkpoint.restore_optimizer("adam", optimizer)
        start = checkpoint.step
    log = StepLog(config.csv_path, CSV_FIELDS)
    history.extend(log.restart(start))
    history.start_step = start

    def save(step: int) -> None:
        save_checkpoint(config.checkpoint_path, CHECKPOINT_FORMAT, step, config.settings(),
                        {"adapter": adapter_set.state_dict()}, {"adam": optimizer})

    label = f"train {task.value} adapters {config.codec} q{config.quality} [{model.name}]"
    bar = tqdm(range(start + 1, config.steps + 1), desc=label, disable=not progress, initial=start, total=config.steps)
    device = torch.device(config.device)
    try:
        for step in bar:
            began = time.perf_counter()
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = dataset.batch(step, config.batch_size).to(device)
            torch.manual_seed(config.seed * 1_000_003 + step)
            optimizer.zero_grad(set_to_none=True)
            out = codec(x, amp)
            pixels = x.shape[0] * x.shape[2] * x.shape[3]
            bpp = sum(-torch.log2(l).sum() for l in out["likelihoods"].values()) / pixels
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                dist = model.distortion(x, out["x_hat"]).float()
            loss = bpp + config.lmbda * dist
            if not math.isfinite(loss.item()):
                raise InvalidInputError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
            loss.backward()
            optimizer.step()
            history.step_seconds.append(time.perf_counter() - began)
            record = {"step": step, "loss": loss.item(), "bpp": bpp.item(), "distortion": dist.item(), "lr": lr}
            history.append(record)
            log.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", bpp=f"{record['bpp']:.4f}",
                            distortion=f"{record['distortion']:.4f}")
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save(step)
    finally:
        log.close()
    codec.eval()
    save(config.steps)
    history.metadata = save_adapters(
        config.out, codec, task, frame_codec.loaded.fingerprint, lmbda=config.lmbda,
        training_data="\n".join(relative_names(files)), steps=config.steps,
        random_weights=config.random_task_model or config.random_codec, task_model=model.name,
    )
    history.codec, history.optimizer = codec, optimizer
    return history
