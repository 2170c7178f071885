"""Adapter training: frozen base codec + frozen task model, only the task's adapters learn.

Loss ``bpp + λ·D`` with ``bpp = −Σ log2 likelihoods / pixels`` (noisy likelihoods of
the training forward, :meth:`AdaptedCodec.forward`) and ``D`` the task's feature
distortion (:mod:`training.distortion`). Adam on the adapter parameters only.

Runs are repeatable: step ``s`` (1-based) uses the crops ``RandomCrops[(s−1)·B … s·B−1]``
and seeds the torch RNG (quantisation noise) from ``(seed, s)``, and the learning-rate
schedule is a pure function of the step. A resumed run therefore ends with exactly the
tensors of an uninterrupted one.

Files next to ``out``: ``<out>.csv`` (step, loss, bpp, distortion, lr) and the resume
checkpoint ``<out>.ckpt.safetensors`` (adapter tensors, Adam state flattened into
tensors, metadata ``step`` and ``config``); the final adapters go to ``out`` through
:func:`shared.adapter_checkpoint.save_adapters`. Safetensors only: nothing is pickled.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from shared.adapter_checkpoint import AdapterMetadata, save_adapters
from shared.codec_loader import CodecOptions, open_frame_codec
from shared.errors import InvalidInputError
from shared.models.adapted import AdapterConfig
from shared.tasks import Task

from .data import RandomCrops
from .distortion import build_distortion

CHECKPOINT_FORMAT = "icmh-adapter-training/1"
SCHEDULES = ("constant", "multistep")
MULTISTEP_MILESTONES = (0.6, 0.9)  # fractions of the total steps; lr × 0.1 at each
LAMBDA_PRESETS: Dict[str, Dict[int, float]] = {
    "classification": {1: 1.8, 2: 3.5, 3: 6.7, 4: 13.0},
    "detection": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    "segmentation": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
}


def preset_lambda(task: str, quality: int) -> float:
    """The paper's λ for ``task`` at ``quality`` (nearest preset quality outside 1–4)."""
    presets = LAMBDA_PRESETS[Task.parse(task).value]
    nearest = min(presets, key=lambda q: (abs(q - quality), q))
    return presets[nearest]


@dataclass
class AdapterTrainConfig:
    """Settings of one adapter training run."""

    task: str
    out: Path
    data: List[Path] = field(default_factory=list)
    codec: str = "mbt2018-mean"
    quality: int = 3
    steps: int = 1000
    crop: int = 256
    batch_size: int = 8
    lr: float = 1e-4
    lmbda: Optional[float] = None  # None: the preset of task and quality
    schedule: str = "constant"
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 0  # 0: only at the end
    resume: bool = False
    random_weights: bool = False  # seeded random task model (smoke runs)
    codec_weights: Optional[Path] = None
    random_codec: bool = False  # seeded random base codec (smoke runs)
    variant: str = "sfma"
    mid_dim: int = 64
    init: str = "zero"

    def __post_init__(self) -> None:
        self.task = Task.parse(self.task).value
        if not Task(self.task).uses_adapters:
            raise InvalidInputError("task 'human' has no adapters to train")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"unknown schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        if self.steps < 1 or self.batch_size < 1 or self.crop < 64 or self.crop % 64:
            raise InvalidInputError("steps and batch size must be >= 1 and the crop a multiple of 64")
        self.out = Path(self.out)
        self.data = [Path(p) for p in self.data]
        if self.lmbda is None:
            self.lmbda = preset_lambda(self.task, self.quality)

    @property
    def csv_path(self) -> Path:
        return self.out.with_name(self.out.name + ".csv")

    @property
    def checkpoint_path(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt.safetensors")

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
                          | {"data": [str(p) for p in self.data]}, sort_keys=True)


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


# -- resume checkpoints -------------------------------------------------------------------------
def save_training_checkpoint(path: Path, adapter_set, optimizer: torch.optim.Optimizer, step: int,
                             config: AdapterTrainConfig) -> None:
    """Adapter tensors + flattened Adam state (``optim.<i>.<key>``) as safetensors."""
    tensors = {f"adapter.{k}": v.detach().cpu().contiguous() for k, v in adapter_set.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            value = value if isinstance(value, Tensor) else torch.tensor(float(value))
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT, "step": str(step),
                                           "config": config.to_json()})
    tmp.replace(path)


def read_training_checkpoint(path: Path):
    """``(step, config dict, adapter state, optimizer state {index: {key: tensor}})``."""
    if not path.is_file():
        raise InvalidInputError(f"cannot resume: no training checkpoint {path}")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(f"{path} is not an icmh adapter training checkpoint")
    adapters = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
    optim: Dict[int, Dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim.setdefault(int(index), {})[name] = value
    return int(meta["step"]), json.loads(meta["config"]), adapters, optim


def _check_resumable(saved: dict, config: AdapterTrainConfig) -> None:
    same = ("task", "codec", "quality", "variant", "mid_dim", "init", "batch_size", "crop", "seed")
    for key in same:
        if saved.get(key) != getattr(config, key):
            raise InvalidInputError(f"cannot resume: checkpoint has {key}={saved.get(key)!r}, "
                                    f"this run {getattr(config, key)!r}")


# -- training -----------------------------------------------------------------------------------
def _batch(dataset: RandomCrops, step: int, batch_size: int) -> Tensor:
    start = (step - 1) * batch_size
    return torch.stack([dataset[start + i] for i in range(batch_size)])


def _write_csv(path: Path, rows: Sequence[Dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "bpp", "distortion", "lr"])
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: Path, upto: int) -> List[Dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [{"step": int(r["step"]), **{k: float(r[k]) for k in ("loss", "bpp", "distortion", "lr")}}
                for r in csv.DictReader(handle)]
    return [r for r in rows if r["step"] <= upto]


def train_adapters(config: AdapterTrainConfig, progress: bool = True) -> TrainHistory:
    """Train the adapters of ``config.task``; writes ``config.out`` and returns the history."""
    task = Task(config.task)
    frame_codec = open_frame_codec(CodecOptions(
        codec=config.codec, quality=config.quality, codec_weights=config.codec_weights,
        random_weights=config.random_codec, seed=config.seed, device=config.device,
    ))
    codec = frame_codec.codec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        adapter_set = codec.add_adapters(task, AdapterConfig(config.variant, config.mid_dim, config.init))
    codec.set_task(task)
    codec.train()
    distortion = build_distortion(task, config.random_weights, config.device, seed=config.seed)
    dataset = RandomCrops(config.data, crop=config.crop, seed=config.seed, length=config.steps * config.batch_size)
    params = list(adapter_set.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)

    history = TrainHistory()
    history.step_seconds = []
    start = 0
    if config.resume:
        start, saved, adapter_state, optim_state = read_training_checkpoint(config.checkpoint_path)
        _check_resumable(saved, config)
        adapter_set.load_state_dict(adapter_state, strict=True)
        groups = optimizer.state_dict()["param_groups"]
        optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
        history.extend(_read_csv(config.csv_path, start))
    history.start_step = start
    _write_csv(config.csv_path, history)

    label = f"train {task.value} adapters {config.codec} q{config.quality}"
    if config.random_weights:
        label += f" [{distortion.label}]"
    bar = tqdm(range(start + 1, config.steps + 1), desc=label, disable=not progress,
               initial=start, total=config.steps)
    device = torch.device(config.device)
    with config.csv_path.open("a", newline="") as log:
        writer = csv.DictWriter(log, fieldnames=["step", "loss", "bpp", "distortion", "lr"])
        for step in bar:
            began = time.perf_counter()
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = _batch(dataset, step, config.batch_size).to(device)
            torch.manual_seed(config.seed * 1_000_003 + step)
            optimizer.zero_grad(set_to_none=True)
            out = codec(x)
            pixels = x.shape[0] * x.shape[2] * x.shape[3]
            bpp = sum(-torch.log2(l).sum() for l in out["likelihoods"].values()) / pixels
            dist = distortion(x, out["x_hat"])
            loss = bpp + config.lmbda * dist
            if not math.isfinite(loss.item()):
                raise InvalidInputError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
            loss.backward()
            optimizer.step()
            history.step_seconds.append(time.perf_counter() - began)
            record = {"step": step, "loss": loss.item(), "bpp": bpp.item(), "distortion": dist.item(), "lr": lr}
            history.append(record)
            writer.writerow(record)
            log.flush()
            bar.set_postfix(loss=f"{record['loss']:.4f}", bpp=f"{record['bpp']:.4f}",
                            distortion=f"{record['distortion']:.4f}")
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save_training_checkpoint(config.checkpoint_path, adapter_set, optimizer, step, config)
    codec.eval()
    save_training_checkpoint(config.checkpoint_path, adapter_set, optimizer, config.steps, config)
    history.metadata = save_adapters(
        config.out, codec, task, frame_codec.loaded.fingerprint, lmbda=config.lmbda,
        training_data=",".join(p.name for p in config.data), steps=config.steps,
        random_weights=config.random_weights or config.random_codec,
    )
    history.codec, history.optimizer = codec, optimizer
    return history
