"""Frame sources: the built-in demo scene, an image folder, a video file, a camera.

Each source is an iterator of 3×H×W float RGB tensors in [0, 1], registered in
:data:`SOURCES` by name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import torch
from torch import Tensor

from icmh.errors import InvalidInputError
from icmh.images import load_image

DEMO_SIZE = (360, 640)  # H, W


def demo_frames(limit: Optional[int] = None, size=DEMO_SIZE) -> Iterator[Tensor]:
    """A synthetic scene that needs no camera or file: coloured discs moving over a gradient."""
    height, width = size
    ys = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
    xs = torch.linspace(0, 1, width).view(1, width).expand(height, width)
    background = torch.stack([0.3 + 0.4 * xs, 0.35 + 0.3 * ys, 0.6 - 0.3 * xs])
    discs = [((1.0, 0.2, 0.1), 0.09, 0.0), ((0.1, 0.7, 0.2), 0.06, 2.1), ((0.95, 0.9, 0.2), 0.05, 4.2)]
    index = 0
    while limit is None or index < limit:
        frame = background.clone()
        for color, radius, phase in discs:
            cx = 0.5 + 0.35 * math.cos(0.15 * index + phase)
            cy = 0.5 + 0.3 * math.sin(0.11 * index + phase)
            inside = ((xs - cx) * width / height) ** 2 + (ys - cy) ** 2 < radius ** 2
            for channel in range(3):
                frame[channel][inside] = color[channel]
        yield frame
        index += 1


def image_folder_frames(folder: Path, limit: Optional[int] = None) -> Iterator[Tensor]:
    """Every image in ``folder`` (sorted by name), once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
    if not files:
        raise InvalidInputError(f"no images in {folder}")
    for path in files[:limit]:
        yield load_image(path)


def _cv2():
    """Import OpenCV with its own console logging off (failures are reported as one error line)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    import cv2

    return cv2


def _capture_frames(capture, what: str, limit: Optional[int]) -> Iterator[Tensor]:
    if not capture.isOpened():
        raise InvalidInputError(f"{what} could not be opened")
    count = 0
    try:
        while limit is None or count < limit:
            ok, bgr = capture.read()
            if not ok:
                return
            yield torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float().div_(255)
            count += 1
    finally:
        capture.release()


def video_frames(path: Path, limit: Optional[int] = None) -> Iterator[Tensor]:
    """The frames of a video file (OpenCV)."""
    cv2 = _cv2()
    if not Path(path).is_file():
        raise InvalidInputError(f"video file {path} does not exist")
    return _capture_frames(cv2.VideoCapture(str(path)), f"video {path}", limit)


def camera_frames(index: int, limit: Optional[int] = None) -> Iterator[Tensor]:
    """Live frames of camera ``index`` (OpenCV)."""
    cv2 = _cv2()
    return _capture_frames(cv2.VideoCapture(int(index)), f"camera {index}", limit)


SOURCES: Dict[str, Callable[..., Iterator[Tensor]]] = {
    "demo": lambda size, limit: demo_frames(limit, size or DEMO_SIZE),
    "images": image_folder_frames,
    "video": video_frames,
    "camera": camera_frames,
}


def open_source(kind: str, arg, limit: Optional[int] = None) -> Iterator[Tensor]:
    """Open source ``kind`` (a :data:`SOURCES` key) with its argument, yielding at most ``limit`` frames."""
    return SOURCES[kind](arg, limit)
