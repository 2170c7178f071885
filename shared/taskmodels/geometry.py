"""Letterboxing for the YOLO detectors, and mapping their outputs back to the caller's pixels.

A letterbox scales an image by one factor so that it fits a ``height × width`` canvas,
then pads it with a constant (YOLO uses grey 114/255) either at the bottom/right (YOLOX)
or evenly on both sides (YOLOv5). :class:`Letterbox` records the scale and the padding so
that boxes and masks predicted on the canvas map back to the original image — or to any
other output size, e.g. the original image when the model saw a resized copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

YOLO_PAD = 114 / 255


@dataclass(frozen=True)
class Letterbox:
    """How an ``in_size`` image was put on a ``canvas`` (sizes are ``(height, width)``)."""

    in_size: Tuple[int, int]
    canvas: Tuple[int, int]
    scale: float
    pad_top: int
    pad_left: int

    @property
    def content(self) -> Tuple[int, int]:
        """``(height, width)`` of the scaled image on the canvas."""
        return (max(1, round(self.in_size[0] * self.scale)), max(1, round(self.in_size[1] * self.scale)))

    def boxes_to(self, boxes: Tensor, size: Tuple[int, int]) -> Tensor:
        """``boxes`` (N×4 x0, y0, x1, y1 on the canvas) in the pixels of an image of ``size``, clamped to it."""
        height, width = size
        out = boxes.clone()
        out[:, 0::2] = (out[:, 0::2] - self.pad_left) / self.scale * (width / self.in_size[1])
        out[:, 1::2] = (out[:, 1::2] - self.pad_top) / self.scale * (height / self.in_size[0])
        out[:, 0::2] = out[:, 0::2].clamp(0, width)
        out[:, 1::2] = out[:, 1::2].clamp(0, height)
        return out

    def masks_to(self, masks: Tensor, size: Tuple[int, int]) -> Tensor:
        """Soft masks ``N×h×w`` over the canvas at any resolution, cropped to the content and resized
        (bilinear) to ``size``; returns ``N×H×W`` floats."""
        if masks.shape[0] == 0:
            return masks.new_zeros((0, *size))
        fy, fx = masks.shape[-2] / self.canvas[0], masks.shape[-1] / self.canvas[1]
        content_h, content_w = self.content
        top, left = int(round(self.pad_top * fy)), int(round(self.pad_left * fx))
        bottom, right = top + max(1, int(round(content_h * fy))), left + max(1, int(round(content_w * fx)))
        cropped = masks[:, top:bottom, left:right]
        return F.interpolate(cropped[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def letterbox(image: Tensor, canvas: Tuple[int, int], *, center: bool, pad_value: float = YOLO_PAD,
              scale_up: bool = True) -> Tuple[Tensor, Letterbox]:
    """Put ``image`` (3×H×W in [0, 1]) on a ``canvas`` (height, width) by one scale factor (bilinear,
    as OpenCV's ``INTER_LINEAR``), padded with ``pad_value``; returns the canvas and its :class:`Letterbox`.

    ``center``: pad evenly on both sides (YOLOv5) instead of bottom/right (YOLOX).
    ``scale_up``: allow enlarging small images (otherwise they are only padded).
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    scale = min(canvas[0] / height, canvas[1] / width)
    if not scale_up:
        scale = min(scale, 1.0)
    box = Letterbox((height, width), canvas, scale, 0, 0)
    content_h, content_w = box.content
    resized = image if (content_h, content_w) == (height, width) else F.interpolate(
        image[None], size=(content_h, content_w), mode="bilinear", align_corners=False)[0]
    pad_h, pad_w = canvas[0] - content_h, canvas[1] - content_w
    top, left = (pad_h // 2, pad_w // 2) if center else (0, 0)
    out = torch.full((3, *canvas), pad_value, dtype=image.dtype, device=image.device)
    out[:, top:top + content_h, left:left + content_w] = resized
    return out, Letterbox((height, width), canvas, scale, top, left)


def fit_long_side(image: Tensor, long_side: int) -> Tensor:
    """``image`` scaled (bilinear) so that its long side is ``long_side``, clamped to [0, 1]."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    scale = long_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size == (height, width):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return int(math.ceil(value / multiple) * multiple)
