"""Random crops of training images (file lists from :func:`icmh.data_splits.training_images`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from icmh.errors import InvalidInputError


class RandomCrops(Dataset):
    """Random ``crop``² RGB crops (with random horizontal flips) of ``files``.

    Images smaller than the crop are first resized so that their short side equals it.
    Item ``i`` comes from a generator seeded with ``(seed, i)``, so a run is repeatable
    and item ``i`` is the same whatever was read before it.
    """

    def __init__(self, files: Sequence[Path], crop: int = 256, seed: int = 0, length: int = 0) -> None:
        if not files:
            raise InvalidInputError("no training images")
        self.files = [Path(p) for p in files]
        self.crop = crop
        self.seed = seed
        self.length = length or len(self.files)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        rng = random.Random(self.seed * 1_000_003 + index)
        path = self.files[rng.randrange(len(self.files))]
        with Image.open(path) as image:
            image = image.convert("RGB")
            if min(image.size) < self.crop:
                image = TF.resize(image, self.crop)
            width, height = image.size
            left = rng.randrange(width - self.crop + 1)
            top = rng.randrange(height - self.crop + 1)
            patch = image.crop((left, top, left + self.crop, top + self.crop))
        tensor = TF.to_tensor(patch)
        return torch.flip(tensor, dims=[-1]) if rng.random() < 0.5 else tensor

    def batch(self, step: int, batch_size: int) -> Tensor:
        """The crops of (1-based) ``step``: items ``(step−1)·B … step·B−1``, stacked."""
        start = (step - 1) * batch_size
        return torch.stack([self[start + i] for i in range(batch_size)])
