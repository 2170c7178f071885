"""Evaluation image sets: COCO (images + instances json), ImageNet-style (labels.csv), plain folders.

:func:`open_eval_set` finds what a folder holds for a task:

* detection / segmentation: ``DIR`` with ``annotations/instances_*.json`` and the image
  folder of the same split (``val2017/`` for ``instances_val2017.json``), or an explicit
  ``annotations`` file whose ``file_name`` entries are found under ``DIR``. Only images
  that have annotations are evaluated, in increasing image id;
* classification: ``DIR`` with ``labels.csv`` (columns ``file, wnid, class index``, the
  index in torchvision's sorted-wnid order) or an explicit ``labels`` file;
* any task: a plain folder of images, with no labels (``labels`` stays ``None``); for the
  restoration tasks its sub-folders too (``sr-bench/`` holds ``set5/``, ``set14/``, ...).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from icmh.errors import InvalidInputError
from icmh.images import IMAGE_SUFFIXES
from icmh.tasks import Task



@dataclass(frozen=True)
class EvalImage:
    """One image of a set: its file, a stable id (COCO image id, or its index) and its class label if known."""

    path: Path
    image_id: int
    label: Optional[int] = None


@dataclass
class EvalSet:
    """The images to evaluate and where their labels came from.

    ``coco`` is the pycocotools ground truth (detection / segmentation), ``labels_source``
    the file the labels were read from (``None``: no labels).
    """

    images: List[EvalImage]
    labels_source: Optional[Path] = None
    coco: Any = None

    @property
    def has_labels(self) -> bool:
        """Whether the set carries ground truth for its task."""
        return self.labels_source is not None


def open_eval_set(
    task: Task, data: Path, *, annotations: Optional[Path] = None, labels: Optional[Path] = None,
    limit: Optional[int] = None,
) -> EvalSet:
    """The evaluation set of ``task`` in ``data`` (first ``limit`` images); see the module docstring.

    Raises :class:`InvalidInputError` for a missing folder, unreadable label files, or a
    set with no images.
    """
    data = Path(data)
    if not data.is_dir():
        raise InvalidInputError(f"evaluation data {data} is not a folder")
    if task in (Task.DETECTION, Task.SEGMENTATION):
        annotations = annotations or _find_annotations(data)
        found = _coco_set(data, annotations, limit) if annotations else _folder_set(data, limit)
    elif task is Task.CLASSIFICATION:
        labels = labels or (data / "labels.csv" if (data / "labels.csv").is_file() else None)
        found = _imagenet_set(data, labels, limit) if labels else _folder_set(data, limit)
    else:
        found = _folder_set(data, limit, recursive=task.is_restoration)
    if not found.images:
        raise InvalidInputError(f"no images to evaluate in {data}")
    return found


def _find_annotations(data: Path) -> Optional[Path]:
    candidates = sorted((data / "annotations").glob("instances_*.json"))
    for candidate in candidates:  # prefer the val split, as the paper's protocol
        if "val" in candidate.stem:
            return candidate
    return candidates[0] if candidates else None


def _folder_set(data: Path, limit: Optional[int], recursive: bool = False) -> EvalSet:
    found = data.rglob("*") if recursive else data.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return EvalSet([EvalImage(path, i) for i, path in enumerate(files[:limit])])


def coco_index(dataset: Dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` ground truth over ``dataset`` (a COCO instances dict), built quietly."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def _coco_set(data: Path, annotations: Path, limit: Optional[int]) -> EvalSet:
    if not Path(annotations).is_file():
        raise InvalidInputError(f"annotations file {annotations} does not exist")
    try:
        coco = coco_index(json.loads(Path(annotations).read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{annotations} is not a COCO instances file: {exc}") from None
    split = annotations.stem.split("_", 1)[-1]  # instances_val2017 -> val2017
    folders = [data / split, data]
    images = []
    for image_id in sorted(coco.getImgIds()):
        if not coco.getAnnIds(imgIds=[image_id], iscrowd=None):
            continue
        name = coco.imgs[image_id]["file_name"]
        path = next((folder / name for folder in folders if (folder / name).is_file()), None)
        if path is None:
            raise InvalidInputError(f"image {name} of {annotations} is in neither {folders[0]} nor {data}")
        images.append(EvalImage(path, image_id))
    return EvalSet(images[:limit], Path(annotations), coco)


def _imagenet_set(data: Path, labels: Path, limit: Optional[int]) -> EvalSet:
    if not Path(labels).is_file():
        raise InvalidInputError(f"labels file {labels} does not exist")
    images = []
    with open(labels, newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or (line == 1 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # blank line or header
            images.append(_labelled_image(data, labels, line, row, len(images)))
    return EvalSet(images[:limit], Path(labels))


def _labelled_image(data: Path, labels: Path, line: int, row: Sequence[str], index: int) -> EvalImage:
    try:
        label = int(row[-1])
    except ValueError:
        raise InvalidInputError(f"{labels}:{line}: class index {row[-1]!r} is not an integer") from None
    if not 0 <= label < 1000:
        raise InvalidInputError(f"{labels}:{line}: class index {label} is outside 0–999")
    path = data / row[0]
    if not path.is_file():
        raise InvalidInputError(f"{labels}:{line}: image {path} does not exist")
    return EvalImage(path, index, label)
