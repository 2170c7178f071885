"""Which images may be trained on and which are kept for icmh.evaluation.

The real image folders (``$ICMH_DATA_DIR``, see :mod:`icmh.paths`) hold two kinds of
sets (``../shared/data/README.md``):

* **evaluation** — never trained on: ``kodak/`` (human vision), the *annotated*
  ``coco-mini/val2017`` images (detection, segmentation), ``imagenet-100/``
  (classification), ``sr-bench/`` (restoration);
* **training** — ``bsds500-train/`` (400 photos), ``coco-mini/train2017`` (80) and the
  80 *un-annotated* ``coco-mini/val2017`` images.

:func:`training_images` turns set names (or folders) into a file list and refuses any
file whose path or content belongs to an evaluation set, so a training run cannot use an
evaluation image even through a copy under another name. Weight files record the list
(:func:`image_list_digest`), and the tests check it against :func:`evaluation_images`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Sequence, Tuple, Union

from icmh.errors import InvalidInputError
from icmh.images import IMAGE_SUFFIXES
from icmh.paths import default_data_dir

COCO_VAL_ANNOTATIONS = Path("coco-mini/annotations/instances_val2017.json")


def _images_in(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise InvalidInputError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@lru_cache(maxsize=None)
def _annotated_coco_val(data_dir: Path) -> FrozenSet[str]:
    path = data_dir / COCO_VAL_ANNOTATIONS
    if not path.is_file():
        raise InvalidInputError(f"cannot tell annotated from un-annotated coco-mini val images: {path} is missing")
    with path.open() as handle:
        images = json.load(handle)["images"]
    return frozenset(entry["file_name"] for entry in images)


def _coco_val(data_dir: Path, annotated: bool) -> List[Path]:
    names = _annotated_coco_val(data_dir)
    return [p for p in _images_in(data_dir / "coco-mini/val2017") if (p.name in names) == annotated]


@dataclass(frozen=True)
class ImageSet:
    """A named set of images under the data folder and what it is for."""

    name: str
    role: str  # "training" or "evaluation"
    files: Callable[[Path], List[Path]]
    description: str


def _folder(relative: str) -> Callable[[Path], List[Path]]:
    return lambda data_dir: _images_in(data_dir / relative)


IMAGE_SETS: Dict[str, ImageSet] = {s.name: s for s in (
    ImageSet("bsds500-train", "training", _folder("bsds500-train"), "400 BSDS500 photos (train + test)"),
    ImageSet("coco-mini-train", "training", _folder("coco-mini/train2017"), "80 COCO train2017 images"),
    ImageSet("coco-mini-val-unannotated", "training", lambda d: _coco_val(d, annotated=False),
             "the 80 coco-mini val2017 images without annotations"),
    ImageSet("kodak", "evaluation", _folder("kodak"), "24 Kodak images (human vision)"),
    ImageSet("coco-mini-val", "evaluation", lambda d: _coco_val(d, annotated=True),
             "the 79 annotated coco-mini val2017 images (detection, segmentation)"),
    ImageSet("imagenet-100", "evaluation", _folder("imagenet-100"), "100 ImageNet val images (classification)"),
    ImageSet("sr-bench", "evaluation", _folder("sr-bench"), "Set5, Set14, McMaster, Sun-Hays80 (restoration)"),
)}
TRAINING_SETS: Tuple[str, ...] = tuple(n for n, s in IMAGE_SETS.items() if s.role == "training")
EVALUATION_SETS: Tuple[str, ...] = tuple(n for n, s in IMAGE_SETS.items() if s.role == "evaluation")


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def evaluation_images(data_dir: Path | None = None) -> Dict[str, List[Path]]:
    """The files of every evaluation set present under ``data_dir`` (absent sets are left out)."""
    data_dir = Path(data_dir or default_data_dir())
    found: Dict[str, List[Path]] = {}
    for name in EVALUATION_SETS:
        try:
            found[name] = IMAGE_SETS[name].files(data_dir)
        except InvalidInputError:
            continue
    return found


@lru_cache(maxsize=4)
def _evaluation_digests(data_dir: Path) -> Dict[str, str]:
    return {file_digest(p): f"{name}/{p.name}" for name, files in evaluation_images(data_dir).items() for p in files}


def training_images(sources: Sequence[Union[str, Path]], data_dir: Path | None = None) -> List[Path]:
    """The image files of ``sources`` (training-set names or folders), sorted and de-duplicated.

    Raises :class:`InvalidInputError` for an unknown name, a missing folder, no images, or
    any file that is an evaluation image (same path or same bytes).
    """
    data_dir = Path(data_dir or default_data_dir()).resolve()
    files: List[Path] = []
    for source in sources:
        name = str(source)
        if name in IMAGE_SETS:
            if IMAGE_SETS[name].role != "training":
                raise InvalidInputError(f"{name} is an evaluation set; training on it is refused "
                                        f"(training sets: {', '.join(TRAINING_SETS)})")
            files.extend(IMAGE_SETS[name].files(data_dir))
        elif Path(source).exists():
            files.extend([Path(source)] if Path(source).is_file() else _images_in(Path(source)))
        else:
            raise InvalidInputError(f"unknown training data {name!r}: not a folder and not one of "
                                    f"{', '.join(TRAINING_SETS)}")
    files = sorted({p.resolve() for p in files})
    if not files:
        raise InvalidInputError(f"no training images in {', '.join(map(str, sources))}")
    held_out = _evaluation_digests(data_dir)
    for path in files:
        clash = held_out.get(file_digest(path))
        if clash is not None:
            raise InvalidInputError(f"{path} is the evaluation image {clash}; training on it is refused")
    return files


def relative_names(files: Sequence[Path], data_dir: Path | None = None) -> List[str]:
    """``files`` as paths relative to the data folder where they lie under it (else absolute)."""
    root = Path(data_dir or default_data_dir()).resolve()
    names = []
    for path in files:
        path = Path(path).resolve()
        names.append(str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
    return names


def image_list_digest(names: Sequence[str]) -> str:
    """SHA-256 (hex) of a newline-joined list of image names (recorded beside the list)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()
