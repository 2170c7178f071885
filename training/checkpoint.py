"""Resume checkpoints of training runs, as safetensors (nothing is pickled).

A checkpoint holds named groups of tensors (``<group>.<name>``: a module's state dict),
the state of each optimizer flattened into tensors (``optim.<optimizer>.<index>.<key>``),
and metadata: a format tag, the step reached and the run's settings as JSON. It is
written to a temporary file and renamed, so an interrupted write never leaves a broken
checkpoint behind.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from icmh.errors import InvalidInputError

OPTIM_PREFIX = "optim."


@dataclass
class TrainingCheckpoint:
    """What :func:`read_checkpoint` returns."""

    step: int
    config: Dict[str, object]
    groups: Dict[str, Dict[str, Tensor]]
    optimizers: Dict[str, Dict[int, Dict[str, Tensor]]]

    def restore_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        """Load the saved state of optimizer ``name`` into ``optimizer`` (its param groups stay)."""
        groups = optimizer.state_dict()["param_groups"]
        optimizer.load_state_dict({"state": self.optimizers.get(name, {}), "param_groups": groups})


def save_checkpoint(
    path: Path, fmt: str, step: int, config: Mapping[str, object],
    groups: Mapping[str, Mapping[str, Tensor]], optimizers: Mapping[str, torch.optim.Optimizer],
) -> None:
    """Write a checkpoint of format ``fmt`` at ``step`` (see the module docstring)."""
    tensors: Dict[str, Tensor] = {}
    for group, state in groups.items():
        for key, value in state.items():
            tensors[f"{group}.{key}"] = value.detach().cpu().contiguous()
    for name, optimizer in optimizers.items():
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                value = value if isinstance(value, Tensor) else torch.tensor(float(value))
                tensors[f"{OPTIM_PREFIX}{name}.{index}.{key}"] = value.detach().cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": fmt, "step": str(step),
                                           "config": json.dumps(config, sort_keys=True, default=str)})
    tmp.replace(path)


def read_checkpoint(path: Path, fmt: str) -> TrainingCheckpoint:
    """Read a checkpoint written by :func:`save_checkpoint` with format ``fmt``.

    Raises :class:`InvalidInputError` if the file is missing, unreadable or of another format.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"cannot resume: no training checkpoint {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise InvalidInputError(f"cannot resume: {path} is not a readable checkpoint ({exc})") from None
    if meta.get("format") != fmt:
        raise InvalidInputError(f"cannot resume: {path} is not a {fmt} checkpoint")
    groups: Dict[str, Dict[str, Tensor]] = {}
    optimizers: Dict[str, Dict[int, Dict[str, Tensor]]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            name, index, state_key = key[len(OPTIM_PREFIX):].split(".", 2)
            optimizers.setdefault(name, {}).setdefault(int(index), {})[state_key] = value
        else:
            group, name = key.split(".", 1)
            groups.setdefault(group, {})[name] = value
    return TrainingCheckpoint(int(meta["step"]), json.loads(meta["config"]), groups, optimizers)


def check_same_settings(saved: Mapping[str, object], current: Mapping[str, object], keys) -> None:
    """Raise :class:`InvalidInputError` naming the first of ``keys`` whose value differs."""
    for key in keys:
        if saved.get(key) != current.get(key):
            raise InvalidInputError(f"cannot resume: checkpoint has {key}={saved.get(key)!r}, "
                                    f"this run {current.get(key)!r}")


class RunFiles:
    """For the config dataclass of a resumable run with an ``out`` path: the files kept beside ``out``
    (never inside it: an adapter folder is loaded whole by ``--adapters``) and the settings as plain
    JSON values, which the checkpoint records and a resume compares."""

    @property
    def csv_path(self) -> Path:
        """The per-step log beside ``out``."""
        return self.out.with_name(self.out.name + ".csv")  # type: ignore[attr-defined]

    @property
    def checkpoint_path(self) -> Path:
        """The resume checkpoint beside ``out``."""
        return self.out.with_name(self.out.name + ".ckpt.safetensors")  # type: ignore[attr-defined]

    def settings(self) -> Dict[str, object]:
        """The settings as plain JSON values (paths as text)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}  # type: ignore[call-overload]


class StepLog:
    """The per-step CSV log of a run (``<out>.csv``): one row per step, kept consistent on resume.

    :meth:`restart` keeps the rows up to the step a run resumes from (a run stopped after its
    last checkpoint logged steps it will redo) and rewrites the file with them; :meth:`append`
    adds one row and flushes, so the file is always current.
    """

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)
        self._handle = None

    def restart(self, upto: int) -> List[Dict[str, float]]:
        """Keep the rows of steps ``≤ upto`` (none when ``upto`` is 0); returns them."""
        rows: List[Dict[str, float]] = []
        if upto and self.path.is_file():
            with self.path.open(newline="") as handle:
                rows = [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if k in self.fields}
                        for row in csv.DictReader(handle)]
            rows = [r for r in rows if r["step"] <= upto]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.close()
        self._handle = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.fields)
        self._writer.writeheader()
        self._writer.writerows(rows)
        self._handle.flush()
        return rows

    def append(self, row: Dict[str, float]) -> None:
        """Write one row (keys: the fields) and flush."""
        self._writer.writerow(row)
        self._handle.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class TrainingRun:
    """What every resumable training loop does around its step: resume, log, checkpoint, progress.

    Built from the run's config (a :class:`RunFiles` dataclass with ``out``, ``resume``, ``steps``
    and ``checkpoint_every``), the checkpoint format and the settings a resume must match
    (``resume_keys``; ``option_keys`` default to ``False`` in older checkpoints), the module groups
    and optimizers to checkpoint by name, and the CSV columns. On resume, the groups, the
    optimizers and the log are restored to the checkpoint's step (:attr:`start`; the records so far
    in :attr:`history`). :meth:`steps` yields the steps still to run under a progress bar, writes a
    checkpoint every ``checkpoint_every`` steps and at the end, and closes the log whatever happens.
    """

    def __init__(self, config: RunFiles, fmt: str, resume_keys: Sequence[str], groups: Mapping[str, nn.Module],
                 optimizers: Mapping[str, torch.optim.Optimizer], csv_fields: Sequence[str],
                 option_keys: Sequence[str] = ()) -> None:
        self.config, self.fmt = config, fmt
        self.groups, self.optimizers = dict(groups), dict(optimizers)
        self.start = 0
        if config.resume:  # type: ignore[attr-defined]
            checkpoint = read_checkpoint(config.checkpoint_path, fmt)
            settings = config.settings()
            check_same_settings(checkpoint.config, settings, resume_keys)
            check_same_settings({k: checkpoint.config.get(k, False) for k in option_keys}, settings, option_keys)
            for name, group in self.groups.items():
                group.load_state_dict(checkpoint.groups[name], strict=True)
            for name, optimizer in self.optimizers.items():
                checkpoint.restore_optimizer(name, optimizer)
            self.start = checkpoint.step
        self.log = StepLog(config.csv_path, csv_fields)
        self.history: List[Dict[str, float]] = self.log.restart(self.start)
        self.bar: tqdm = None

    def save(self, step: int) -> None:
        """Write the resume checkpoint at ``step``."""
        save_checkpoint(self.config.checkpoint_path, self.fmt, step, self.config.settings(),
                        {name: group.state_dict() for name, group in self.groups.items()}, self.optimizers)

    def steps(self, label: str, progress: bool = True) -> Iterator[int]:
        """The (1-based) steps from :attr:`start` + 1 to the config's ``steps``, under a progress bar named
        ``label``; a checkpoint every ``checkpoint_every`` steps and one at the end (if any step ran)."""
        total, every = self.config.steps, self.config.checkpoint_every  # type: ignore[attr-defined]
        self.bar = tqdm(range(self.start + 1, total + 1), desc=label, disable=not progress, initial=self.start,
                        total=total)
        try:
            for step in self.bar:
                yield step
                if every and step % every == 0:
                    self.save(step)
        finally:
            self.log.close()
        if self.start < total:
            self.save(total)

    def record(self, row: Dict[str, float], **shown: str) -> None:
        """Keep one step's record (history and CSV) and show ``shown`` beside the progress bar."""
        self.history.append(row)
        self.log.append(row)
        if self.bar is not None:
            self.bar.set_postfix(**shown)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def check_finite(loss: Tensor, step: int, advice: str = "lower --lr") -> float:
    """``loss`` as a float; raises :class:`InvalidInputError` naming ``step`` when it is NaN or infinite."""
    value = loss.item()
    if not math.isfinite(value):
        raise InvalidInputError(f"training diverged at step {step} (loss {value}); {advice}")
    return value
