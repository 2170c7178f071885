"""Results drawn on a frame: boxes with class names and scores, masks, or the top classes.

What a person wants to look at after a run: the decoded frame (what the cloud's task model
saw) with its detections drawn on it (``--annotate DIR``). Masks (COCO RLE) are tinted in
the box colour where pycocotools is installed; classification draws the top classes in the
corner.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import to_pil_image

from icmh.images import to_uint8
from icmh.results import TaskResult

PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)
MASK_ALPHA = 0.45
MAX_DRAWN = 30


def colour(label: int) -> Tuple[int, int, int]:
    """A stable colour for a class label."""
    return PALETTE[label % len(PALETTE)]


def _tint_masks(picture: Image.Image, result: TaskResult) -> Image.Image:
    masked = [d for d in result.detections[:MAX_DRAWN] if d.mask_rle is not None]
    if not masked:
        return picture
    try:
        from pycocotools import mask as mask_utils
    except ImportError:  # the edge install need not carry pycocotools: boxes only
        return picture
    pixels = np.asarray(picture).astype(np.float32)
    for detection in reversed(masked):  # best on top
        rle = {"size": list(detection.mask_rle["size"]), "counts": detection.mask_rle["counts"].encode("ascii")}
        mask = mask_utils.decode(rle).astype(bool)
        if mask.shape != pixels.shape[:2]:
            continue
        pixels[mask] = (1 - MASK_ALPHA) * pixels[mask] + MASK_ALPHA * np.array(colour(detection.label))
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))


def annotate(image: Tensor, result: TaskResult) -> Image.Image:
    """``image`` (3×H×W in [0, 1]) with ``result`` drawn on it; returns an RGB PIL image."""
    picture = _tint_masks(to_pil_image(to_uint8(image)), result)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = max(2, round(min(picture.size) / 200))
    for detection in reversed(result.detections[:MAX_DRAWN]):
        box, fill = detection.box, colour(detection.label)
        draw.rectangle((box.x0, box.y0, box.x1, box.y1), outline=fill, width=width)
        text = f"{detection.label_name} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((box.x0, box.y0), text, font=font)
        top_y = max(0, box.y0 - (bottom - top) - 2)
        draw.rectangle((box.x0, top_y, box.x0 + (right - left) + 4, top_y + (bottom - top) + 2), fill=fill)
        draw.text((box.x0 + 2, top_y), text, fill=(0, 0, 0), font=font)
    for row, item in enumerate(result.classes[:3]):
        text = f"{item.name} {item.score:.2f}"
        left, top, right, bottom = draw.textbbox((4, 4 + 14 * row), text, font=font)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0))
        draw.text((4, 4 + 14 * row), text, fill=(255, 255, 255), font=font)
    return picture
