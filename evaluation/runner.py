"""Rate–accuracy evaluation: every method at every quality on every image, scored (``icmh eval``).

Protocol (METHOD.md): each task model's own input geometry is what gets coded
(:meth:`~icmh.taskmodels.TaskModel.model_input`: YOLOX long side 416, YOLOv5 640,
SqueezeNet 227, MobileNetV2 its 224 centre crop, the R-CNNs short side 800 / long side
1333, ResNet-50 resize 256 + centre crop 224; the codec pads to 64 and crops back); the
model runs on the reconstruction and its results are mapped back to the original image
(COCO AP against the annotations). ``human`` codes the image as it is and scores PSNR and
MS-SSIM against it. The restoration tasks (``denoise``, ``deblur``, ``super-resolution``,
``low-light``) code the *degraded* image, restore the reconstruction and score it against
the clean image (:mod:`icmh.evaluation.restoration`). Rate is the real coded size in bits
per pixel of the coded image.

Each operating point (method, quality) becomes one row of metrics; the uncompressed
input is scored too, as the ceiling (``method`` ``uncompressed``, no rate), and for the
restoration tasks the degraded input without restoration (``degraded``, no rate).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from torch import Tensor
from tqdm import tqdm

from icmh.codec.adapter_checkpoint import ROLE_HEAD, ROLE_SHARED_ENCODER, read_adapters
from icmh.cli.common import adapter_files
from icmh.errors import AdapterMismatchError, InvalidInputError
from icmh.codec.frame_codec import FrameCodec
from icmh.images import load_image
from icmh.models.registry import get_codec
from icmh.results import TaskResult
from icmh.tasks import RESTORATION_TASKS, Task
from icmh.codec.loader import bundled_adapter_files, calibration_images, calibration_source, default_codec
from icmh.codec.weights import load_base_codec
from icmh.models.encoder_paths import EAGER, INT8, check_encoder_path
from icmh.taskmodels import EVAL_SCORE_THRESHOLD, ModelOptions, TaskModel, load_task_model

from icmh.evaluation.coders import PILLOW_FORMATS, ImageCoder, LearnedCoder, PillowCoder
from icmh.evaluation.datasets import EvalImage, EvalSet, open_eval_set
from icmh.evaluation.image_quality import RESTORATION_METRICS
from icmh.evaluation.restoration import degraded_inputs, degraded_label, degraded_scores, protocol_note
from icmh.evaluation.scoring import ClassificationScorer, make_scorer, pseudo_ground_truth

METHODS = ("base", "adapted", "universal", "jpeg", "webp")
DEFAULT_METHODS = ("base", "adapted", "jpeg", "webp")  # universal needs its heads: asked for by name
REFERENCES = ("auto", "labels", "predictions")
METRICS = {"detection": ("AP", "AP50"), "segmentation": ("mask_AP", "mask_AP50", "AP", "AP50"),
           "classification": ("top1", "top5"), "human": ("psnr", "ms_ssim"),
           **{task.value: RESTORATION_METRICS for task in RESTORATION_TASKS}}  # the first is the primary metric
CHUNK = 16  # images coded before the task model runs on them as one batch


@dataclass
class EvalConfig:
    """Everything an evaluation run needs (see ``icmh eval --help`` for each field)."""

    task: str
    data: Path
    model: Optional[str] = None  # task model name (None: the task's default)
    models_dir: Optional[Path] = None
    codec: str = field(default_factory=default_codec)
    qualities: Sequence[int] = ()  # empty: default_qualities(codec)
    methods: Sequence[str] = DEFAULT_METHODS
    jpeg_qualities: Sequence[int] = (5, 10, 20, 40)
    webp_qualities: Sequence[int] = (5, 10, 20, 40)
    adapters: Sequence[Path] = ()
    codec_weights: Optional[Path] = None
    annotations: Optional[Path] = None
    labels: Optional[Path] = None
    images: Optional[int] = None
    reference: str = "auto"
    short_side: Optional[int] = None  # R-CNN detectors (None: the paper's 800)
    max_side: Optional[int] = None  # R-CNN detectors (None: the paper's 1333)
    max_proposals: Optional[int] = None
    device: str = "cpu"
    encoder_path: str = EAGER  # how the learned methods' analysis transform runs (icmh.models.encoder_paths)
    calibration: Optional[str] = None  # int8 encoder: training set or folder to calibrate on (None: the default)
    random_task_model: bool = False
    random_codec: bool = False
    random_adapters: bool = False
    seed: int = 0  # random weights, and the degradations of the restoration tasks
    head: Optional[str] = None  # method universal: the consumer head decoding for the task (None: the task's own)

    def __post_init__(self) -> None:
        self.qualities = tuple(self.qualities) or default_qualities(self.codec)
        check_encoder_path(self.encoder_path)


def default_qualities(codec: str) -> Tuple[int, ...]:
    """The qualities evaluated unless told: every quality the project ships weights for (its own
    codecs), else the zoo codecs' 1–4."""
    return tuple(sorted(get_codec(codec).bundled_weights)) or (1, 2, 3, 4)


@dataclass
class EvalResult:
    """The outcome: one row per operating point plus what produced it."""

    task: str
    reference: str  # "labels (FILE)" or "predictions of the task model on the uncompressed images"
    task_model: str
    codec_label: str
    random_weights: bool
    rows: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def primary_metric(self) -> str:
        """The metric the BD table and the first plot use (AP, mask_AP, top1, psnr)."""
        return METRICS[self.task][0]

    @property
    def metrics(self) -> Sequence[str]:
        """The metric columns, primary first."""
        return METRICS[self.task]


def run_evaluation(config: EvalConfig, progress: bool = True) -> EvalResult:
    """Evaluate every method of ``config`` at every quality; see the module docstring.

    Raises :class:`InvalidInputError` / :class:`AdapterMismatchError` /
    :class:`~icmh.errors.WeightsMissingError` before any coding starts when the
    configuration cannot run.
    """
    task = Task.parse(config.task)
    methods = _checked_methods(config, task)
    eval_set = open_eval_set(task, config.data, annotations=config.annotations, labels=config.labels,
                             limit=config.images)
    reference = _reference_mode(config.reference, eval_set, task)
    coders = list(_coders(config, task, methods))  # loads every codec and adapter file up front
    model = _task_model(task, config)
    originals = [load_image(item.path) for item in eval_set.images]
    clean: Dict[int, Tensor] = {}
    if task.is_restoration:  # what gets coded is the degraded image; restorations are scored against the clean one
        originals, clean = degraded_inputs(task, eval_set.images, originals, config.seed)
    inputs = [(item, image if model is None else model.model_input(image)) for item, image in zip(eval_set.images, originals)]
    sizes = {item.image_id: tuple(image.shape[-2:]) for item, image in zip(eval_set.images, originals)}
    del originals

    images = [image for _, image in inputs]
    references = dict(zip((item.image_id for item, _ in inputs), _infer_all(task, model, inputs, images, sizes))) \
        if model else {}
    result = EvalResult(
        task=task.value, reference=_reference_text(reference, eval_set, task), task_model=_model_label(model),
        codec_label=_codec_label(coders),
        random_weights=config.random_task_model or any(c.random_weights for c in coders),
    )
    if task.is_restoration:
        result.notes.append(protocol_note(task, config.seed))
    if reference == "predictions":
        result.notes.append("no labels were used: accuracy is measured against the task model's own results on "
                            "the uncompressed images (fidelity), not against ground truth")
    scorer_args = _scorer_args(task, eval_set, reference, references, clean)
    uncompressed = make_scorer(task.value, **scorer_args)
    _add_scores(uncompressed, task, inputs, images, [references.get(item.image_id) for item, _ in inputs])
    result.rows.append(_row("uncompressed", 0, math.nan, len(inputs), uncompressed.compute(), "no coding", False))
    if task.is_restoration:
        result.rows.append(_row("degraded", 0, math.nan, len(inputs), degraded_scores(task, inputs, clean),
                                degraded_label(task), False))

    bar = tqdm(total=len(coders) * len(inputs), desc=f"eval {task.value}", unit="img", disable=not progress)
    for coder in coders:
        scorer, rates = make_scorer(task.value, **scorer_args), []
        for start in range(0, len(inputs), CHUNK):  # code a chunk, then run the task model on it as one batch
            chunk = inputs[start:start + CHUNK]
            decoded = []
            for _, image in chunk:
                coded = coder.code(image)
                decoded.append(coded.image)
                rates.append(coded.bpp)
                bar.update()
            _add_scores(scorer, task, chunk, decoded, _infer_all(task, model, chunk, decoded, sizes))
        bpp = sum(rates) / len(rates)
        result.rows.append(_row(coder.method, coder.quality, bpp, len(inputs), scorer.compute(), coder.label,
                                coder.random_weights))
        bar.set_postfix_str(f"{coder.method} q{coder.quality}: {bpp:.3f} bpp")
    bar.close()
    return result


def _checked_methods(config: EvalConfig, task: Task) -> List[str]:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise InvalidInputError(f"unknown method(s) {', '.join(unknown)} (valid: {', '.join(METHODS)})")
    if config.reference not in REFERENCES:
        raise InvalidInputError(f"unknown reference {config.reference!r} (valid: {', '.join(REFERENCES)})")
    spec = get_codec(config.codec)
    for quality in config.qualities:
        spec.check_quality(quality)
    for name, qualities in (("jpeg", config.jpeg_qualities), ("webp", config.webp_qualities)):
        if name in config.methods and any(not 0 <= q <= 100 for q in qualities):
            raise InvalidInputError(f"{name} qualities must be within 0–100, got {list(qualities)}")
    if config.codec_weights is not None and len(config.qualities) > 1:
        raise InvalidInputError("--codec-weights is one file for one quality; give a single --qualities value")
    methods = list(dict.fromkeys(config.methods))
    if task is Task.HUMAN and "adapted" in methods:
        methods.remove("adapted")  # human is the base codec itself
    if not methods:
        raise InvalidInputError("no method left to evaluate")
    return methods


def _reference_mode(asked: str, eval_set: EvalSet, task: Task) -> str:
    if task is Task.HUMAN:
        return "original"
    if task.is_restoration:
        return "clean"
    if asked == "labels" and not eval_set.has_labels:
        raise InvalidInputError(f"the images have no {task.value} labels here; pass --annotations/--labels, or "
                                f"--reference predictions to score against the task model's uncompressed results")
    if asked == "auto":
        return "labels" if eval_set.has_labels else "predictions"
    return asked


def _reference_text(reference: str, eval_set: EvalSet, task: Task) -> str:
    if reference == "labels":
        return f"labels ({eval_set.labels_source})"
    if reference == "original":
        return "the original images"
    if reference == "clean":
        return "the clean images (before degradation)"
    return f"predictions of the {task.value} model on the uncompressed images (fidelity, no labels)"


def _task_model(task: Task, config: EvalConfig) -> Optional[TaskModel]:
    if task is Task.HUMAN:
        return None
    options = ModelOptions(device=config.device, random_weights=config.random_task_model, seed=config.seed,
                           models_dir=config.models_dir, score_threshold=EVAL_SCORE_THRESHOLD, max_detections=100,
                           min_size=config.short_side, max_size=config.max_side, max_proposals=config.max_proposals)
    return load_task_model(task, config.model, options)


def _model_label(model: Optional[TaskModel]) -> str:
    if model is None:
        return "none (PSNR / MS-SSIM against the original)"
    return f"{model.name} ({model.weights_label})"


def _infer_all(task: Task, model: Optional[TaskModel], items: Sequence[Tuple[EvalImage, Tensor]],
               images: Sequence[Tensor], sizes: Dict[int, Tuple[int, int]]) -> List[Optional[TaskResult]]:
    """The task model's results for ``images`` (model inputs of ``items``), in the original images' pixels;
    ``None`` for each image when there is no model."""
    if model is None:
        return [None] * len(images)
    results = model.infer_prepared(images, task, [sizes[item.image_id] for item, _ in items])
    return [dataclasses.replace(result, model=model.name) for result in results]


def _scorer_args(task: Task, eval_set: EvalSet, reference: str, references: Dict[int, TaskResult],
                 clean: Dict[int, Tensor]) -> Dict[str, Any]:
    if task.is_restoration:
        return {"clean": clean}
    if task in (Task.DETECTION, Task.SEGMENTATION):
        truth = eval_set.coco if reference == "labels" else pseudo_ground_truth(references, task is Task.SEGMENTATION)
        return {"ground_truth": truth}
    if task is Task.CLASSIFICATION:
        if reference == "labels":
            return {"labels": {item.image_id: item.label for item in eval_set.images}}
        return {"labels": ClassificationScorer.from_reference(references).labels}
    return {}


def _add_scores(scorer: Any, task: Task, inputs: Sequence[Tuple[EvalImage, Tensor]], decoded: Sequence[Tensor],
                results: Sequence[Optional[TaskResult]]) -> None:
    """Add each image's reconstruction (``human``) or task result (other tasks) to ``scorer``."""
    for (item, image), reconstruction, task_result in zip(inputs, decoded, results):
        if task is Task.HUMAN:
            scorer.add(image, reconstruction)
        else:
            scorer.add(item.image_id, task_result)


def _row(method: str, quality: int, bpp: float, count: int, metrics: Dict[str, float], label: str,
         random_weights: bool) -> Dict[str, Any]:
    return {"method": method, "quality": quality, "bpp": bpp, "images": count, **metrics, "coder": label,
            "random_weights": random_weights}


def _encoder_label(config: EvalConfig) -> str:
    """What the codec label adds for a path other than eager: the path and, for int8, its calibration."""
    if config.encoder_path == EAGER:
        return ""
    source = calibration_source(config.encoder_path, config.calibration)
    calibrated = f", calibrated on {source or 'synthetic images'}" if config.encoder_path == INT8 else ""
    return f", {config.encoder_path} encoder{calibrated}"


def _coders(config: EvalConfig, task: Task, methods: Sequence[str]) -> Iterator[ImageCoder]:
    learned = [m for m in methods if m in ("base", "adapted", "universal")]
    adapter_files = _adapter_files_by_quality(config, task) if "adapted" in learned else {}
    head = Task.parse(config.head) if config.head else task
    universal_files = _universal_files_by_quality(config, head) if "universal" in learned else {}
    calibration = calibration_images(config.encoder_path, config.calibration) if learned else []
    for quality in config.qualities if learned else ():
        loaded = load_base_codec(config.codec, quality, weights=config.codec_weights,
                                 random_weights=config.random_codec, seed=config.seed)
        frame_codec = FrameCodec(loaded, device=config.device, encoder_path=config.encoder_path,
                                 calibration=calibration)
        codec_random = not loaded.pretrained
        codec_label = loaded.label + _encoder_label(config)
        if "base" in learned:
            yield LearnedCoder(frame_codec, Task.HUMAN, "base", codec_label, codec_random)
        if "adapted" in learned:
            if quality in adapter_files:
                meta = frame_codec.load_adapters(adapter_files[quality], task)
                label, random_adapters = f"{codec_label} + {task.value} adapters ({adapter_files[quality].name})", \
                    meta.random_weights
            else:
                frame_codec.add_random_adapters(task, config.seed)
                label, random_adapters = f"{codec_label} + RANDOM {task.value} adapters (seed {config.seed})", True
            yield LearnedCoder(frame_codec, task, "adapted", label, codec_random or random_adapters)
        if "universal" in learned:
            universal_codec = FrameCodec(loaded, device=config.device, encoder_path=config.encoder_path,
                                         calibration=calibration)
            yield _universal_coder(config, universal_codec, head, universal_files.get(quality, []), codec_random)
    for method in (m for m in methods if m in PILLOW_FORMATS):
        for quality in (config.jpeg_qualities if method == "jpeg" else config.webp_qualities):
            yield PillowCoder(method, quality)


def _adapter_files_by_quality(config: EvalConfig, task: Task) -> Dict[int, Path]:
    """The adapter file for each quality: from ``config.adapters`` (files or folders), else the trained
    adapters shipped with the package for this codec (:func:`~icmh.codec.loader.bundled_adapter_files`)."""
    candidates = adapter_files(config.adapters) if config.adapters else \
        [path for quality in config.qualities for path in bundled_adapter_files(config.codec, quality)]
    found: Dict[int, Path] = {}
    for path in candidates:
        meta, _ = read_adapters(path)
        if meta.codec == config.codec and meta.task == task.value and meta.quality in config.qualities:
            if meta.quality in found:
                raise AdapterMismatchError(f"two {task.value} adapter files for {config.codec} q{meta.quality}: "
                                           f"{found[meta.quality]} and {path}")
            found[meta.quality] = path
    missing = [q for q in config.qualities if q not in found]
    if missing and not config.random_adapters:
        raise AdapterMismatchError(
            f"no {task.value} adapters for {config.codec} at quality {', '.join(map(str, missing))}: pass --adapters "
            f"FILE|DIR (made by 'icmh train'), --random-adapters for a smoke run, or leave 'adapted' out of --methods"
        )
    return found


def _universal_coder(config: EvalConfig, frame_codec: FrameCodec, head: Task, files: Sequence[Path],
                     codec_random: bool) -> LearnedCoder:
    """Universal frames of ``frame_codec`` (shared encoder and heads from ``files``) decoded by ``head``."""
    for path in files:
        frame_codec.load_adapters(path)
    frame_codec.check_heads()
    loaded = frame_codec.loaded
    if head is Task.HUMAN and head not in frame_codec.head_metadata:
        label, random_adapters = f"{loaded.label}, universal frames, base decoder", False
    elif head in frame_codec.head_metadata:
        meta = frame_codec.head_metadata[head]
        encoder = frame_codec.shared_encoder_metadata
        trained = encoder.task_model if encoder else f"base encoder; head against {meta.task_model}"
        label = f"{loaded.label}, universal frames ({trained}), {head.value} head"
        random_adapters = meta.random_weights or bool(encoder and encoder.random_weights)
    else:
        frame_codec.add_random_head(head, config.seed)
        label, random_adapters = f"{loaded.label}, universal frames, RANDOM {head.value} head (seed {config.seed})", True
    return LearnedCoder(frame_codec, head, "universal", label, codec_random or random_adapters, consumer=head)


def _universal_files_by_quality(config: EvalConfig, head: Task) -> Dict[int, List[Path]]:
    """Per quality, the shared-encoder file (if any) and ``head``'s head file: from ``config.adapters``,
    else the package's bundled adapters. Raises :class:`AdapterMismatchError` when a quality has no
    such head and random adapters are not allowed (``human`` needs none)."""
    candidates = adapter_files(config.adapters) if config.adapters else \
        [path for quality in config.qualities for path in bundled_adapter_files(config.codec, quality)]
    found: Dict[int, List[Path]] = {}
    heads: Dict[int, Path] = {}
    for path in candidates:
        meta, _ = read_adapters(path)
        if meta.codec != config.codec or meta.quality not in config.qualities:
            continue
        if meta.role == ROLE_SHARED_ENCODER or (meta.role == ROLE_HEAD and meta.task == head.value):
            found.setdefault(meta.quality, []).append(path)
            if meta.role == ROLE_HEAD:
                heads[meta.quality] = path
    missing = [q for q in config.qualities if q not in heads]
    if missing and head is not Task.HUMAN and not config.random_adapters:
        raise AdapterMismatchError(
            f"no universal {head.value} head for {config.codec} at quality {', '.join(map(str, missing))}: pass "
            f"--adapters DIR (made by 'icmh train --heads ...'), --random-adapters for a smoke run, or leave "
            f"'universal' out of --methods")
    return found


def _codec_label(coders: Sequence[ImageCoder]) -> str:
    """One line for all learned qualities, e.g. ``mbt2018-mean q1,2,3,4 (pretrained; first: ...)``."""
    loaded = list({c.frame_codec.loaded.quality: c.frame_codec.loaded for c in coders
                   if isinstance(c, LearnedCoder)}.values())
    if not loaded:
        return "none (JPEG / WebP only)"
    qualities = ",".join(str(item.quality) for item in loaded)
    kind = "pretrained" if all(item.pretrained for item in loaded) else "RANDOM WEIGHTS"
    more = f"; q{loaded[0].quality}: {loaded[0].source}" + (" …" if len(loaded) > 1 else "")
    return f"{loaded[0].spec.name} q{qualities} ({kind}{more})"
