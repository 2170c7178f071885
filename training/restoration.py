"""Training of the restoration networks (``icmh train-restoration``), resumable.

Each step takes ``batch_size`` random ``crop``² crops of training images
(:class:`~icmh.training.data.RandomCrops` over :func:`icmh.data_splits.training_images`,
so evaluation images are refused), degrades them with the task's seeded degradation
(:func:`icmh.restoration.degrade`, seed ``(seed, step)``), restores them and minimises the
L1 (or MSE) error to the clean crops (for ×2 super-resolution the crop is the
high-resolution target and the network sees its ×½ version). Adam; the learning rate is
``lr``, then ×0.1 after 60 % and again after 90 % of the steps (``schedule="multistep"``).

Runs are repeatable and resumable as the other trainers: step ``s`` uses
``RandomCrops.batch(s)`` and the degradation seed of ``s``, so a resumed run ends with the
tensors of an uninterrupted one. Beside ``out``: ``<out>.csv`` (step, loss, PSNR of the
restored and of the degraded crops, lr, seconds) and ``<out>.ckpt.safetensors`` (network
and Adam state). The final network goes to ``out`` (:func:`icmh.restoration.save_network`)
with its recipe and the list of training images.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from icmh.data_splits import image_list_digest, relative_names, training_images
from icmh.errors import InvalidInputError
from icmh.restoration import (NetworkConfig, RestorationNet, build_network, bundled_weights_path,
                              degradation_parameters, degrade, parameter_count, restoration_target, save_network)
from icmh.tasks import RESTORATION_TASKS, Task
from icmh.training.adapters import SCHEDULES, learning_rate
from icmh.training.checkpoint import RunFiles, TrainingRun, check_finite, set_learning_rate
from icmh.training.data import RandomCrops

CHECKPOINT_FORMAT = "icmh-restoration-training/1"
CSV_FIELDS = ("step", "loss", "psnr", "psnr_input", "lr", "seconds")
RESUME_KEYS = ("task", "data", "crop", "batch_size", "seed", "loss", "channels", "blocks")
LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
DEFAULT_DATA = ("bsds500-train",)
RECENT_STEPS = 100  # the final_* figures of the metadata average this many last steps


@dataclass
class RestorationTrainConfig(RunFiles):
    """Settings of one restoration training run (``icmh train-restoration --help`` explains each)."""

    task: str
    out: Optional[Path] = None  # None: the shipped file of the task (icmh/restoration/weights/)
    data: List[str] = field(default_factory=lambda: list(DEFAULT_DATA))
    data_dir: Optional[Path] = None  # where the named sets lie (default: $ICMH_DATA_DIR)
    steps: int = 1500
    crop: int = 96
    batch_size: int = 16
    lr: float = 1e-3
    schedule: str = "multistep"
    loss: str = "l1"
    channels: int = 48
    blocks: int = 5
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 0  # 0: only at the end
    resume: bool = False

    def __post_init__(self) -> None:
        task = Task.parse(self.task)
        if not task.is_restoration:
            raise InvalidInputError(f"task {task.value} has no restoration network (restoration tasks: "
                                    f"{', '.join(t.value for t in RESTORATION_TASKS)})")
        self.task = task.value
        self.out = Path(self.out) if self.out is not None else bundled_weights_path(task)
        self.data = [str(p) for p in self.data]
        if self.loss not in LOSSES:
            raise InvalidInputError(f"unknown loss {self.loss!r} (valid: {', '.join(LOSSES)})")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"unknown schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.checkpoint_every < 0:
            raise InvalidInputError("steps and batch size must be >= 1, the learning rate positive and "
                                    "--checkpoint-every >= 0")
        scale = NetworkConfig.for_task(task, self.channels, self.blocks).scale  # also checks channels and blocks
        if self.crop < 16 or self.crop % (2 * scale):
            raise InvalidInputError(f"the crop must be at least 16 and a multiple of {2 * scale} for {task.value}, "
                                    f"got {self.crop}")

    @property
    def network(self) -> NetworkConfig:
        """The architecture trained."""
        return NetworkConfig.for_task(Task(self.task), self.channels, self.blocks)


@dataclass
class RestorationTrainResult:
    """A trained network, its per-step records and the metadata written with it."""

    net: RestorationNet
    history: List[Dict[str, float]]
    metadata: Dict[str, str]
    seconds: float


def psnr_of(restored: Tensor, target: Tensor) -> float:
    """PSNR in dB of a batch (clipped to [0, 1]) against ``target``, from the batch MSE."""
    mse = F.mse_loss(restored.detach().clamp(0, 1), target).item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def train_restoration(config: RestorationTrainConfig, progress: bool = True) -> RestorationTrainResult:
    """Train (or resume training) the network of ``config.task`` and save it to ``config.out``.

    Raises :class:`InvalidInputError` for bad data (including evaluation images), a
    checkpoint of other settings, or a diverging loss.
    """
    task = Task(config.task)
    files = training_images(config.data, config.data_dir)
    names = relative_names(files, config.data_dir)
    device = torch.device(config.device)
    net = build_network(config.network, config.seed).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    dataset = RandomCrops(files, crop=config.crop, seed=config.seed, length=config.steps * config.batch_size)
    criterion = LOSSES[config.loss]

    run = TrainingRun(config, CHECKPOINT_FORMAT, RESUME_KEYS, {"net": net}, {"adam": optimizer}, CSV_FIELDS)
    for step in run.steps(f"train-restoration {task.value}", progress):
        began = time.perf_counter()
        lr = learning_rate(config, step)
        set_learning_rate(optimizer, lr)
        clean = dataset.batch(step, config.batch_size)
        degraded = degrade(task, clean, seed=config.seed * 1_000_003 + step).to(device)
        target = restoration_target(task, clean).to(device)
        optimizer.zero_grad(set_to_none=True)
        restored = net(degraded)
        loss = criterion(restored, target)
        value = check_finite(loss, step, "lower --lr or resume from the last checkpoint")
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - began
        record = {"step": step, "loss": value, "psnr": psnr_of(restored, target),
                  "psnr_input": psnr_of(net.skip(degraded), target), "lr": lr, "seconds": seconds}
        run.record(record, loss=f"{value:.4f}", psnr=f"{record['psnr']:.2f}", input=f"{record['psnr_input']:.2f}")
    history = run.history
    elapsed = sum(r["seconds"] for r in history)
    net = net.eval().cpu()
    metadata = save_network(net, config.out, task, recipe(config, names, history, elapsed, parameter_count(net)))
    return RestorationTrainResult(net, history, metadata, elapsed)


def recipe(config: RestorationTrainConfig, image_names: Sequence[str], history: Sequence[Dict[str, float]],
           seconds: float, parameters: int) -> Dict[str, object]:
    """The metadata a trained network carries: how to make it again, from which images, and how it ended."""
    settings = {k: v for k, v in config.settings().items()
                if k not in ("out", "resume", "data_dir", "checkpoint_every", "device")}
    recent = list(history)[-RECENT_STEPS:]
    meta: Dict[str, object] = {
        "recipe": settings,
        "steps": str(config.steps),
        "seed": str(config.seed),
        "parameters": str(parameters),
        "degradation": degradation_parameters(Task(config.task)),
        "training_images": "\n".join(image_names),
        "training_images_count": str(len(image_names)),
        "training_images_sha256": image_list_digest(image_names),
        "train_seconds": f"{seconds:.0f}",
        "trained_on": f"{platform.machine()} {config.device}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads",
        "command": command_line(config),
    }
    if recent:
        meta.update({f"final_{key}": f"{sum(r[key] for r in recent) / len(recent):.3f}"
                     for key in ("loss", "psnr", "psnr_input")})
    return meta


def command_line(config: RestorationTrainConfig) -> str:
    """The ``icmh train-restoration`` command that makes this network again (apart from ``--out``)."""
    defaults = RestorationTrainConfig(task=config.task)
    parts = [f"icmh train-restoration --task {config.task}"]
    for source in config.data if config.data != defaults.data else ():
        parts.append(f"--data {source}")
    for name in ("steps", "crop", "batch_size", "lr", "schedule", "loss", "channels", "blocks", "seed"):
        value = getattr(config, name)
        if value != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)
