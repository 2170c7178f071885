"""The image coders an evaluation compares: the learned codec (base or with task adapters), JPEG, WebP.

Every coder turns a 3×H×W float image in [0, 1] into a :class:`CodedImage`: the image
the receiver reconstructs and the exact number of bytes sent. For the learned codec
those are the real frame bytes (container header and CRC included) and the real
decoder's output; for JPEG and WebP the bytes Pillow writes and the image it reads back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from icmh.codec.frame_codec import FrameCodec
from icmh.images import to_uint8
from icmh.tasks import Task

PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class CodedImage:
    """What the receiver gets: the reconstructed image and the bytes it cost."""

    image: Tensor
    nbytes: int

    @property
    def bpp(self) -> float:
        """Bits per pixel of the reconstructed image's size."""
        height, width = self.image.shape[-2:]
        return self.nbytes * 8.0 / (height * width)


class ImageCoder(Protocol):
    """One operating point of one method: ``method`` (base/adapted/jpeg/webp), ``quality``, ``label``."""

    method: str
    quality: int
    label: str
    random_weights: bool

    def code(self, image: Tensor) -> CodedImage:
        """Encode and decode ``image``."""


class LearnedCoder:
    """The learned codec at one quality: ``task`` selects the adapters (``human``: the base codec);
    ``consumer`` instead codes universal frames and decodes them with that consumer's head."""

    def __init__(self, frame_codec: FrameCodec, task: Task, method: str, label: str, random_weights: bool,
                 consumer: Optional[Task] = None) -> None:
        self.frame_codec = frame_codec
        self.task = task
        self.consumer = consumer
        self.method = method
        self.quality = frame_codec.loaded.quality
        self.label = label
        self.random_weights = random_weights

    def code(self, image: Tensor) -> CodedImage:
        """Encode ``image`` into a frame and decode it with the same codec (see :class:`FrameCodec`)."""
        if self.consumer is not None:
            frame = self.frame_codec.encode_universal([image])[0]
            parsed, _ = self.frame_codec.parse(frame.data)
            decoded = self.frame_codec.decode_consumers(parsed, None, [self.consumer])[self.consumer]
        else:
            frame = self.frame_codec.encode([image], self.task)[0]
            decoded = self.frame_codec.decode([frame.data])[0]
        return CodedImage(decoded.image.detach().float().cpu(), len(frame.data))


class PillowCoder:
    """JPEG or WebP through Pillow at one quality (8-bit RGB, Pillow's default settings otherwise)."""

    random_weights = False

    def __init__(self, method: str, quality: int) -> None:
        if method not in PILLOW_FORMATS:
            raise ValueError(f"unknown Pillow method {method!r}")
        self.method = method
        self.quality = quality
        self.label = f"Pillow {PILLOW_FORMATS[method]} quality {quality}"

    def code(self, image: Tensor) -> CodedImage:
        """Write ``image`` with Pillow and read it back."""
        buffer = io.BytesIO()
        to_pil_image(to_uint8(image)).save(buffer, format=PILLOW_FORMATS[self.method], quality=self.quality)
        data = buffer.getvalue()
        with Image.open(io.BytesIO(data)) as decoded:
            tensor = pil_to_tensor(decoded.convert("RGB")).to(torch.float32).div_(255)
        return CodedImage(tensor, len(data))
