"""The small restoration networks of the low-level consumers, and their weight files.

:class:`RestorationNet` is a residual CNN in plain PyTorch (SRResNet-lite / FFDNet-style):

* same-size tasks (denoise, deblur, low-light): the input is pixel-unshuffled ×2 (12
  channels at half resolution, so each 3×3 layer sees 6×6 pixels for a quarter of the
  cost), a head convolution to ``channels``, ``blocks`` residual blocks
  (conv–ReLU–conv + skip), ReLU, a tail convolution back to 12 channels, pixel-shuffled
  ×2, and added to the input: ``R(x) = x + f(x)``;
* ×2 super-resolution: the same body at the low resolution, a tail to ``3·2²`` channels
  and a PixelShuffle ×2, added to the bicubic ×2 upsampling of the input:
  ``R(x) = up(x) + f(x)``.

With the default 48 channels and 5 blocks that is about 218k (SR: 214k) parameters.
The tail starts at zero, so an untrained network is the skip path (identity / bicubic).

Weight files are safetensors (parameters as float16; nothing pickled) with metadata:
``format``, ``task``, ``model`` (registry name), the architecture, the degradation, the
training images (their relative names and the SHA-256 of the list), steps, seed and the
training recipe. The shipped files live in ``icmh/restoration/weights/`` (package data),
one per task: :func:`bundled_weights_path`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Mapping, Tuple

import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.seeding import seeded
from icmh.tasks import Task

from icmh.restoration.degradations import degradation_of

WEIGHTS_FORMAT = "icmh-restoration/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # icmh/restoration/weights: the shipped networks
MODEL_NAMES: Dict[Task, str] = {
    Task.DENOISE: "restore-denoise",
    Task.DEBLUR: "restore-deblur",
    Task.SUPER_RESOLUTION: "restore-sr2",
    Task.LOW_LIGHT: "restore-low-light",
}
"""Registry name of each task's network (also the stem of its shipped weight file)."""


@dataclass(frozen=True)
class NetworkConfig:
    """The architecture: feature ``channels``, residual ``blocks``, output ``scale`` (2: ×2 super-resolution)."""

    channels: int = 48
    blocks: int = 5
    scale: int = 1

    def __post_init__(self) -> None:
        if self.channels < 1 or self.blocks < 0 or self.scale not in (1, 2):
            raise InvalidInputError(f"bad restoration network: channels {self.channels} (>= 1), blocks "
                                    f"{self.blocks} (>= 0), scale {self.scale} (1 or 2)")

    @classmethod
    def for_task(cls, task: Task, channels: int = 48, blocks: int = 5) -> "NetworkConfig":
        """The architecture of ``task``'s network (its scale from the task's degradation)."""
        return cls(channels, blocks, degradation_of(task).scale)


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))`` with 3×3 convolutions of ``channels`` features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """The block's output (same shape as ``x``)."""
        return x + self.conv2(F.relu(self.conv1(x)))


class RestorationNet(nn.Module):
    """A small residual restoration CNN (see the module docstring for the layout)."""

    UNSHUFFLE = 2  # same-size tasks work at half resolution on 2×2 pixel blocks

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        width = 3 * self.UNSHUFFLE ** 2 if config.scale == 1 else 3
        out = width if config.scale == 1 else 3 * config.scale ** 2
        self.head = nn.Conv2d(width, config.channels, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(config.channels) for _ in range(config.blocks)))
        self.tail = nn.Conv2d(config.channels, out, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    @property
    def scale(self) -> int:
        """Output size / input size, per side."""
        return self.config.scale

    def skip(self, x: Tensor) -> Tensor:
        """The skip path alone: ``x``, or its bicubic ×``scale`` upsampling (what an untrained network gives)."""
        if self.config.scale == 1:
            return x
        return F.interpolate(x, scale_factor=self.config.scale, mode="bicubic", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        """Restore the N×3×h×w batch ``x`` ([0, 1]); returns N×3×(scale·h)×(scale·w), not clipped."""
        if self.config.scale > 1:
            return self.skip(x) + F.pixel_shuffle(self._residual(x), self.config.scale)
        height, width = x.shape[-2:]
        factor = self.UNSHUFFLE
        padded = F.pad(x, (0, (-width) % factor, 0, (-height) % factor), mode="replicate")
        residual = F.pixel_shuffle(self._residual(F.pixel_unshuffle(padded, factor)), factor)
        return x + residual[..., :height, :width]

    def _residual(self, x: Tensor) -> Tensor:
        return self.tail(F.relu(self.body(self.head(x))))


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def build_network(config: NetworkConfig, seed: int = 0) -> RestorationNet:
    """A new network with seeded initial weights (the caller's random state is left alone)."""
    return seeded(seed, lambda: RestorationNet(config))


def bundled_weights_path(task: Task) -> Path:
    """The shipped weight file of ``task``'s network (``icmh/restoration/weights/<model>.safetensors``)."""
    return WEIGHTS_DIR / f"{MODEL_NAMES[task]}.safetensors"


def save_network(net: RestorationNet, path: Path, task: Task, metadata: Mapping[str, object]) -> Dict[str, str]:
    """Write ``net`` to ``path`` (parameters as float16, written to a temporary file and renamed) with
    ``metadata`` (values stored as JSON text) plus format, task, model name and architecture; returns
    the metadata written."""
    meta = {key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in metadata.items()}
    meta.update(format=WEIGHTS_FORMAT, task=task.value, model=MODEL_NAMES[task],
                architecture=json.dumps(asdict(net.config), sort_keys=True))
    tensors = {name: value.detach().cpu().half().contiguous() for name, value in net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return meta


def read_network(path: Path, task: Task) -> Tuple[RestorationNet, Dict[str, str]]:
    """The network stored in ``path`` (float32, eval mode) and its metadata.

    Raises :class:`WeightsMissingError` when the file is absent (naming the command that
    makes it) and :class:`InvalidInputError` when it is unreadable, of another format or
    task, or does not fit the architecture it declares.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsMissingError(
            f"restoration weights {path.name} for task {task.value} are missing from {path.parent}; make them with "
            f"'icmh train-restoration --task {task.value} --out {path}' (or use --random-weights for a smoke run)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key).float() for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise InvalidInputError(f"{path} is not a readable safetensors file ({exc})") from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise InvalidInputError(f"{path} is not a restoration network file (format {meta.get('format')!r}, "
                                f"expected {WEIGHTS_FORMAT})")
    if meta.get("task") != task.value:
        raise InvalidInputError(f"{path} holds the network of task {meta.get('task')!r}, not {task.value}")
    try:
        net = RestorationNet(NetworkConfig(**json.loads(meta["architecture"])))
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"{path} does not fit its declared architecture: {str(exc).splitlines()[0]}") from None
    return net.eval(), meta
