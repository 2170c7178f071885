"""Plain rate–distortion training of a base codec (CompressAI style).

Loss ``R + λ·255²·MSE`` (:class:`compressai.losses.RateDistortionLoss`) with a second
optimizer on the entropy bottleneck's quantiles (the auxiliary loss). Used to make the
small ``mbt2018-mean-tiny`` codec that tests, demos and benchmarks run on, since no
pretrained weights can be downloaded on the development machines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
from compressai.losses import RateDistortionLoss
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.models.registry import get_codec
from shared.weights import load_codec_state, read_state_dict, save_codec_weights

from .data import RandomCrops


@dataclass
class RDTrainConfig:
    """Settings of one rate–distortion training run."""

    data: List[Path]
    codec: str = "mbt2018-mean-tiny"
    quality: int = 1
    steps: int = 1000
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    aux_lr: float = 1e-3
    lmbda: float = 0.0067
    seed: int = 0
    init_weights: Optional[Path] = None  # start from these weights (fine-tuning to another λ)
    history: List[Dict[str, float]] = field(default_factory=list)


def _cycle(loader: DataLoader) -> Iterator[torch.Tensor]:
    while True:
        yield from loader


def train_base_codec(config: RDTrainConfig, progress: bool = True) -> nn.Module:
    """Train a base codec (from scratch, or from ``init_weights``); returns it with its CDF tables built (``update()``).

    Float weights are rounded to float16 precision before the tables are built, so the
    model saved as float16 by :func:`save_codec_weights` is exactly the one returned.
    """
    torch.manual_seed(config.seed)
    spec = get_codec(config.codec)
    model = spec.build(config.quality).train()
    if config.init_weights is not None:
        load_codec_state(model, read_state_dict(Path(config.init_weights)),
                         f"--init-weights {config.init_weights} do not fit {config.codec} q{config.quality}")
    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main_params, lr=config.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=config.aux_lr)
    criterion = RateDistortionLoss(lmbda=config.lmbda)
    dataset = RandomCrops(config.data, crop=config.crop, seed=config.seed, length=config.steps * config.batch_size)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=0)
    batches = _cycle(loader)
    bar = tqdm(range(config.steps), desc=f"train {config.codec} q{config.quality}", disable=not progress)
    for step in bar:
        x = next(batches)
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        out = criterion(model(x), x)
        out["loss"].backward()
        nn.utils.clip_grad_norm_(main_params, 1.0)
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
        psnr = -10 * math.log10(max(out["mse_loss"].item(), 1e-10))
        record = {"step": step + 1, "loss": out["loss"].item(), "bpp": out["bpp_loss"].item(), "psnr": psnr, "aux": aux_loss.item()}
        config.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", bpp=f"{record['bpp']:.3f}", psnr=f"{psnr:.2f}")
    model.eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    model.update(force=True)
    return model


def train_and_save(config: RDTrainConfig, out: Path, progress: bool = True) -> nn.Module:
    """Train with :func:`train_base_codec` and save the result (float16 safetensors) to ``out``."""
    model = train_base_codec(config, progress=progress)
    last = config.history[-1] if config.history else {}
    meta = {k: str(v) for k, v in asdict(config).items() if k != "history"}
    if config.init_weights is not None:
        meta["init_weights"] = Path(config.init_weights).name
    meta["data"] = ",".join(Path(p).name for p in config.data)
    meta.update({f"final_{k}": f"{v:.4f}" for k, v in last.items() if k != "step"})
    save_codec_weights(model, out, meta)
    return model
