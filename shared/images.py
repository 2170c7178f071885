"""Image files ↔ tensors, and padding to the codec's block size."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from icmh.codec.bitstream import LATENT_STRIDE
from icmh.errors import InvalidInputError

BLOCK = LATENT_STRIDE  # every supported codec reduces resolution by 64 (y by 16, z by 64)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # image files we read


def load_image(path: Path) -> Tensor:
    """Read an image file as a 3×H×W float tensor in [0, 1]; raises :class:`InvalidInputError`."""
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB")).float().div_(255)
    except FileNotFoundError:
        raise InvalidInputError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from None


def to_uint8(image: Tensor) -> Tensor:
    """A 3×H×W float image in [0, 1] as uint8 (rounded, clamped)."""
    return image.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def check_image_output(path: Path) -> None:
    """Raise :class:`InvalidInputError` unless ``path`` can take an image (checked before any work)."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"output {path} is a directory; give an image file name such as out.png")
    if path.suffix.lower() not in Image.registered_extensions():
        raise InvalidInputError(f"output {path} has no image suffix Pillow can write (use .png)")


def save_image(image: Tensor, path: Path) -> None:
    """Write a 3×H×W float image in [0, 1] (PNG or any format Pillow knows by suffix).

    Raises :class:`InvalidInputError` if the path cannot take an image or cannot be written.
    """
    check_image_output(path)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        to_pil_image(to_uint8(image)).save(path)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot write image {path}: {exc}") from None


def pad_to_block(x: Tensor, block: int = BLOCK) -> Tensor:
    """Pad N×C×H×W at the bottom/right by edge replication up to multiples of ``block``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % block, (-width) % block
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
