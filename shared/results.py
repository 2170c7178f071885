"""What a task model returns for one frame: plain dataclasses, shared by edge and cloud.

* detection / segmentation: :class:`Detection` boxes in pixel coordinates of the
  original frame, COCO category ids and names, scores, and (segmentation) a mask as
  compressed COCO RLE (``{"size": [h, w], "counts": str}``, what
  ``pycocotools.mask.encode`` gives, counts decoded to text);
* classification: the top-k :class:`ClassScore` (ImageNet index 0–999, name, probability);
* human: the decoded image itself as PNG bytes.

:meth:`TaskResult.to_json` gives a JSON-serialisable dict (PNG bytes as base64) and
:meth:`TaskResult.from_json` reads it back exactly. This module imports neither torch
nor numpy.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from icmh.errors import InvalidInputError
from icmh.tasks import Task


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: ``(x0, y0)`` top-left, ``(x1, y1)`` bottom-right."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        """``x1 - x0``."""
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        """``y1 - y0``."""
        return self.y1 - self.y0

    def to_json(self) -> List[float]:
        """``[x0, y0, x1, y1]``."""
        return [self.x0, self.y0, self.x1, self.y1]

    @classmethod
    def from_json(cls, data: Any) -> "Box":
        """Read ``[x0, y0, x1, y1]``; raises :class:`InvalidInputError` if malformed."""
        if not isinstance(data, (list, tuple)) or len(data) != 4:
            raise InvalidInputError(f"a box must be [x0, y0, x1, y1], not {data!r}")
        return cls(*(_number(v, "box coordinate") for v in data))


@dataclass(frozen=True)
class Detection:
    """One detected object.

    ``label`` is the COCO category id (1–90, as in the COCO annotation files) and
    ``label_name`` its name; ``mask_rle`` (segmentation only) is compressed COCO RLE
    with ``size`` ``[height, width]`` of the frame and ``counts`` as text.
    """

    box: Box
    label: int
    label_name: str
    score: float
    mask_rle: Optional[Dict[str, Any]] = None

    def to_json(self) -> Dict[str, Any]:
        """A JSON-serialisable dict; ``mask_rle`` is left out when there is no mask."""
        data: Dict[str, Any] = {
            "box": self.box.to_json(), "label": self.label, "label_name": self.label_name, "score": self.score,
        }
        if self.mask_rle is not None:
            data["mask_rle"] = {"size": list(self.mask_rle["size"]), "counts": self.mask_rle["counts"]}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Detection":
        """Read :meth:`to_json`'s dict; raises :class:`InvalidInputError` if malformed."""
        try:
            mask = data.get("mask_rle")
            if mask is not None:
                size, counts = mask["size"], mask["counts"]
                if not isinstance(counts, str) or not isinstance(size, list) or len(size) != 2:
                    raise TypeError("mask_rle needs size [h, w] and counts as text")
                mask = {"size": [int(size[0]), int(size[1])], "counts": counts}
            return cls(Box.from_json(data["box"]), int(data["label"]), str(data["label_name"]),
                       _number(data["score"], "score"), mask)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(f"malformed detection {data!r}: {exc}") from None


@dataclass(frozen=True)
class ClassScore:
    """One class of a classification result: class index, its name, probability."""

    index: int
    name: str
    score: float

    def to_json(self) -> Dict[str, Any]:
        """``{"index", "name", "score"}``."""
        return {"index": self.index, "name": self.name, "score": self.score}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ClassScore":
        """Read :meth:`to_json`'s dict; raises :class:`InvalidInputError` if malformed."""
        try:
            return cls(int(data["index"]), str(data["name"]), _number(data["score"], "score"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(f"malformed class score {data!r}: {exc}") from None


@dataclass(frozen=True)
class TaskResult:
    """The result of one task model on one frame of ``width`` × ``height`` pixels.

    Detections are sorted by descending score; ``classes`` holds the top-k classes,
    best first; ``image_png`` is set for the ``human`` task only; ``model`` names the task
    model that produced the result (empty where unknown).
    """

    task: Task
    width: int
    height: int
    detections: List[Detection] = field(default_factory=list)
    classes: List[ClassScore] = field(default_factory=list)
    image_png: Optional[bytes] = None
    model: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task.parse(self.task.value if isinstance(self.task, Task) else self.task))

    def to_json(self) -> Dict[str, Any]:
        """A JSON-serialisable dict; the PNG (if any) as base64 text under ``image_png_base64``."""
        return {
            "task": self.task.value,
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "detections": [d.to_json() for d in self.detections],
            "classes": [c.to_json() for c in self.classes],
            "image_png_base64": None if self.image_png is None else base64.b64encode(self.image_png).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TaskResult":
        """Read :meth:`to_json`'s dict back; raises :class:`InvalidInputError` if malformed."""
        try:
            png = data.get("image_png_base64")
            return cls(
                task=Task.parse(str(data["task"])),
                width=int(data["width"]),
                height=int(data["height"]),
                detections=[Detection.from_json(d) for d in data.get("detections", [])],
                classes=[ClassScore.from_json(c) for c in data.get("classes", [])],
                image_png=None if png is None else base64.b64decode(png, validate=True),
                model=str(data.get("model", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise InvalidInputError(f"malformed task result: {type(exc).__name__}: {exc}") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{what} must be a number, not {value!r}")
    return float(value)
