"""Random crops from folders of real images (Kodak, COCO, ImageNet style folders)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import List, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from shared.errors import InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def find_images(roots: Sequence[Path]) -> List[Path]:
    """All image files below ``roots`` (recursively), sorted; raises if there are none."""
    files: List[Path] = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise InvalidInputError(f"image folder {root} does not exist")
        candidates = [root] if root.is_file() else root.rglob("*")
        files.extend(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, roots))}")
    return sorted(files)


class RandomCrops(Dataset):
    """Random ``crop``² RGB crops (with random horizontal flips) of the images below ``roots``.

    Images smaller than the crop are first resized so that their short side equals it.
    Randomness comes from a generator seeded per item, so a run is repeatable.
    """

    def __init__(self, roots: Sequence[Path], crop: int = 256, seed: int = 0, length: int = 0) -> None:
        self.files = find_images(roots)
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
