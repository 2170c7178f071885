"""Adapter training: frozen base codec + frozen task model, only the task's adapters learn.

Loss ``bpp + λ·D`` with ``bpp = −Σ log2 likelihoods / pixels`` (noisy likelihoods of the
training forward, :func:`icmh.models.adapted.training_forward`) and ``D`` the task model's
feature distortion (:meth:`icmh.taskmodels.TaskModel.distortion`: the mean over its
feature levels of the MSE between the features of ``x̂`` and ``x``, each model in its own
input preparation; no labels). Adam on the adapter parameters only.

Runs are repeatable: step ``s`` (1-based) uses the crops ``RandomCrops.batch(s)`` and seeds
the torch RNG (quantisation noise) from ``(seed, s)``, and the learning-rate schedule is a
pure function of the step. A resumed run therefore ends with exactly the tensors of an
uninterrupted one.

Files next to ``out``: ``<out>.csv`` (step, loss, bpp, distortion, lr) and the resume
checkpoint ``<out>.ckpt.safetensors`` (adapter tensors and Adam state, see
:mod:`icmh.training.checkpoint`); the final adapters go to ``out`` through
:func:`icmh.codec.adapter_checkpoint.save_adapters`, with the task model and the list of
training images in their metadata. Safetensors only: nothing is pickled.

Universal coding (``heads``, :mod:`icmh.models.adapted`): one bitstream for several
consumers. The loss is ``bpp + Σ_t λ_t·D_t`` over the heads, each ``D_t`` on its own head's
``x̂_t`` (``human``: the pixel MSE, λ = the codec's own λ·255²; ``machine``: the
task-agnostic supervision of :mod:`icmh.training.supervision`). ``joint`` trains the shared
encoder adapters with the heads; otherwise only decoder heads learn, on a frozen encoder
(the base encoder, or the shared encoder of ``encoder_adapters``), and the rate is fixed.
``out`` is then a folder: ``<codec>-q<q>-universal-encoder.safetensors`` (joint) and one
``<codec>-q<q>-universal-head-<consumer>.safetensors`` per head, the names
``cloud-server --adapters`` and the bundled folder load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from icmh.codec.adapter_checkpoint import ROLE_HEAD, ROLE_SHARED_ENCODER, AdapterMetadata, save_adapters
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.loader import OWN_CODEC, CodecOptions, open_frame_codec
from icmh.data_splits import TRAINING_SETS, relative_names, training_images
from icmh.errors import InvalidInputError
from icmh.models.adapted import DECODER, ENCODER, AdaptedCodec, AdapterConfig
from icmh.models.registry import get_codec
from icmh.seeding import seeded
from icmh.taskmodels import ModelOptions, default_model_name, load_task_model
from icmh.tasks import Task
from icmh.training.checkpoint import RunFiles, TrainingRun, check_finite, set_learning_rate
from icmh.training.data import RandomCrops
from icmh.training.pairs import check_crop, coding_pair, pair_distortion
from icmh.training.rd import AMP_DTYPES
from icmh.training.supervision import EmbeddingRegularised, load_supervisor, supervisor_for

CHECKPOINT_FORMAT = "icmh-adapter-training/2"
CSV_FIELDS = ("step", "loss", "bpp", "distortion", "lr")
RESUME_KEYS = ("task", "model", "codec", "quality", "variant", "mid_dim", "init", "batch_size", "crop", "seed", "lmbda",
               "heads", "joint", "models", "lmbdas", "supervisor")
OPTION_KEYS = ("importance", "prompts", "embedding_weight")  # resume checks these too; older checkpoints: False
SCHEDULES = ("constant", "multistep")
MULTISTEP_MILESTONES = (0.6, 0.9)  # fractions of the total steps; lr × 0.1 at each

# λ per task model and quality. The paper's models keep the paper's values (METHOD.md); the real
# small models' feature scales differ, so theirs were re-calibrated (README, "Adapters").
LAMBDA_PRESETS: Dict[str, Dict[int, float]] = {
    "resnet50": {1: 1.8, 2: 3.5, 3: 6.7, 4: 13.0},
    "fasterrcnn_resnet50_fpn": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    "maskrcnn_resnet50_fpn": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    "faster_rcnn_R_50_FPN_3x": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    "mask_rcnn_R_50_FPN_3x": {1: 0.5, 2: 1.0, 3: 2.0, 4: 5.0},
    # the real small models on mbt2018-mean-small: `icmh train --calibrate` (k = 1) at quality 2, the
    # other qualities scaled by the codec's own λ ratio (SMALL_LAMBDAS[q] / SMALL_LAMBDAS[2]), see docs/method.md
    "yolox-nano": {1: 1.24, 2: 4.61, 3: 17.2, 4: 33.2, 5: 64.1},
    "yolov5n-seg": {1: 0.075, 2: 0.28, 3: 1.04, 4: 2.02, 5: 3.90},
    "mobilenet-v2": {1: 0.0059, 2: 0.022, 3: 0.082, 4: 0.159, 5: 0.306},
}


def head_lambda(consumer: Task, model: str, codec: str, quality: int) -> float:
    """The default λ of one head of universal training: the codec's own for ``human`` (its ``λ·255²``
    weighs the pixel MSE as the codec's training did), 1 for ``machine`` (cosine distances), else
    the task model's preset."""
    if consumer is Task.HUMAN:
        return get_codec(codec).rd_lambda(quality) * 255 ** 2
    if consumer is Task.MACHINE:
        return MACHINE_LAMBDA
    return preset_lambda(model, quality)


MACHINE_LAMBDA = 1.0


def preset_lambda(model: str, quality: int) -> float:
    """The λ preset of task model ``model`` at ``quality`` (the nearest preset quality outside the table).

    Raises :class:`InvalidInputError` when the model has no preset (pass ``--lmbda``)."""
    if model not in LAMBDA_PRESETS:
        raise InvalidInputError(f"no λ preset for task model {model}; pass --lmbda "
                                f"(presets: {', '.join(sorted(LAMBDA_PRESETS))})")
    presets = LAMBDA_PRESETS[model]
    return presets[min(presets, key=lambda q: (abs(q - quality), q))]


@dataclass
class AdapterTrainConfig(RunFiles):
    """Settings of one adapter training run (``icmh train --help`` explains each)."""

    task: str
    out: Path
    data: List[str] = field(default_factory=lambda: list(TRAINING_SETS))
    model: Optional[str] = None  # task model name; None: the task's default
    models_dir: Optional[Path] = None
    codec: str = OWN_CODEC
    quality: Optional[int] = None  # None: the codec's default quality
    steps: int = 1000
    crop: int = 256
    batch_size: int = 8
    lr: float = 1e-4
    lmbda: Optional[float] = None  # None: the preset of the task model and quality
    schedule: str = "constant"
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"
    checkpoint_every: int = 0  # 0: only at the end
    resume: bool = False
    random_task_model: bool = False  # seeded random task model (smoke runs)
    codec_weights: Optional[Path] = None
    random_codec: bool = False  # seeded random base codec (smoke runs)
    variant: str = "sfma"
    mid_dim: int = 64
    init: str = "zero"
    # universal coding (see the module docstring); empty ``heads``: one task's adapters
    heads: List[str] = field(default_factory=list)
    joint: bool = True  # train the shared encoder adapters too (else decoder heads on a frozen encoder)
    encoder_adapters: Optional[Path] = None  # heads only: the shared-encoder file they decode (None: base encoder)
    models: Dict[str, str] = field(default_factory=dict)  # consumer -> task model (default: the task's default)
    lmbdas: Dict[str, float] = field(default_factory=dict)  # consumer -> λ (default: head_lambda)
    supervisor: str = "standin"  # what trains the machine head (icmh.training.supervision)
    importance: bool = False  # learn an importance-map selector with the adapters (icmh.models.importance)
    prompts: bool = False  # learn a decoder-side task prompt with the adapters
    # restoration tasks (LL-ICM): β of the supervisor's embedding distance between restored and clean image
    embedding_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.heads:
            if self.importance or self.prompts:
                raise InvalidInputError("--importance and --prompts train one task's adapters: give --task")
            self._check_heads()
        else:
            task = Task.parse(self.task)
            self.task = task.value
            if not task.uses_adapters:
                raise InvalidInputError("task 'human' has no adapters to train")
            check_crop(task, self.crop)
            if self.embedding_weight and not task.is_restoration:
                raise InvalidInputError("--embedding-weight is for the restoration tasks (denoise, deblur, "
                                        "super-resolution, low-light)")
        if self.embedding_weight < 0 or (self.heads and self.embedding_weight):
            raise InvalidInputError("--embedding-weight must be positive, and is for one restoration task's adapters")
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"unknown schedule {self.schedule!r} (valid: {', '.join(SCHEDULES)})")
        if self.amp not in AMP_DTYPES:
            raise InvalidInputError(f"unknown --amp {self.amp!r} (valid: {', '.join(AMP_DTYPES)})")
        if self.steps < 1 or self.batch_size < 1 or self.crop < 64 or self.crop % 64:
            raise InvalidInputError("steps and batch size must be >= 1 and the crop a multiple of 64")
        self.out = Path(self.out)
        self.data = [str(p) for p in self.data]
        self.quality = self.quality or get_codec(self.codec).default_quality
        if self.heads:
            for consumer in self.consumers:
                if consumer is not Task.MACHINE:
                    self.models.setdefault(consumer.value, default_model_name(consumer, self.models_dir))
                self.lmbdas.setdefault(consumer.value, head_lambda(consumer, self.models.get(consumer.value, ""),
                                                                    self.codec, self.quality))
            return
        self.model = self.model or default_model_name(task, self.models_dir)
        if self.lmbda is None:
            self.lmbda = preset_lambda(self.model, self.quality)

    def _check_heads(self) -> None:
        consumers = [Task.parse(name) for name in self.heads]
        if len(set(consumers)) != len(consumers):
            raise InvalidInputError(f"a head is named twice: {', '.join(self.heads)}")
        if self.joint and self.encoder_adapters is not None:
            raise InvalidInputError("--encoder-adapters trains heads for a given shared encoder: use it with "
                                    "--decoder-only")
        self.heads = [c.value for c in consumers]
        self.task = ""

    @property
    def consumers(self) -> List[Task]:
        """The heads of universal training, as tasks (empty for one task's adapters)."""
        return [Task(name) for name in self.heads]

    def output_files(self) -> Dict[str, Path]:
        """Universal training: role-and-consumer -> file in the ``out`` folder."""
        prefix = f"{self.codec}-q{self.quality}-universal"
        files = {f"head-{name}": self.out / f"{prefix}-head-{name}.safetensors" for name in self.heads}
        if self.joint:
            files["encoder"] = self.out / f"{prefix}-encoder.safetensors"
        return files

    @property
    def csv_fields(self) -> tuple:
        """The columns of the per-step log (universal training adds each head's distortion)."""
        return CSV_FIELDS + tuple(f"distortion_{name}" for name in self.heads)


def learning_rate(config: AdapterTrainConfig, step: int) -> float:
    """Learning rate of (1-based) ``step``."""
    if config.schedule == "constant":
        return config.lr
    drops = sum(step > int(f * config.steps) for f in MULTISTEP_MILESTONES)
    return config.lr * 0.1 ** drops


class TrainHistory(list):
    """The per-step records (dicts); also carries the trained codec, optimizer, metadata and step times."""

    codec = None
    step_seconds: List[float]
    optimizer = None
    metadata: Optional[AdapterMetadata] = None
    start_step: int = 0
    task_model_label: str = ""


@dataclass
class Objective:
    """What one run trains and against what: the adapter sets that learn (checkpoint group name ->
    set), the forward pass (``x -> (likelihoods, {consumer: x̂})``) and one ``(consumer, model, λ)``
    term per head."""

    groups: Dict[str, nn.Module]
    forward: Callable[[Tensor, Optional[torch.dtype]], Tuple[Dict[str, Tensor], Dict[Task, Tensor]]]
    terms: List[Tuple[Task, nn.Module, float]]

    @property
    def label(self) -> str:
        """The models the heads are trained against, with where their weights came from."""
        return ", ".join(f"{model.name} ({model.weights_label})" for _, model, _ in self.terms)


def task_objective(config: AdapterTrainConfig, codec: AdaptedCodec, options: ModelOptions) -> Objective:
    """One task's encoder and decoder adapters against its task model."""
    task = Task(config.task)
    adapter_set = seeded(config.seed, lambda: codec.add_adapters(
        task, AdapterConfig(config.variant, config.mid_dim, config.init, importance=config.importance,
                            prompts=config.prompts)))
    codec.set_task(task)

    def forward(x: Tensor, amp: Optional[torch.dtype]) -> Tuple[Dict[str, Tensor], Dict[Task, Tensor]]:
        out = codec(x, amp)
        return out["likelihoods"], {task: out["x_hat"]}

    model = load_task_model(task, config.model, options)
    if config.embedding_weight:  # LL-ICM: the restoration also held close to the clean image in embedding space
        model = EmbeddingRegularised(model, load_supervisor(config.supervisor, options=options), config.embedding_weight)
    return Objective({"adapter": adapter_set}, forward, [(task, model, config.lmbda)])


def universal_objective(config: AdapterTrainConfig, codec: AdaptedCodec, frame_codec: FrameCodec,
                        options: ModelOptions) -> Objective:
    """Universal coding: decoder heads (and, jointly, the shared encoder) against every head's model."""
    adapter_config = AdapterConfig(config.variant, config.mid_dim, config.init)
    groups: Dict[str, nn.Module] = {}
    if config.joint:
        groups["encoder"] = seeded(config.seed, lambda: codec.add_shared_encoder(replace(adapter_config, sides=ENCODER)))
    elif config.encoder_adapters is not None:
        meta = frame_codec.load_adapters(config.encoder_adapters)
        if meta.role != ROLE_SHARED_ENCODER:
            raise InvalidInputError(f"{config.encoder_adapters} holds {meta.role} adapters, not a shared encoder")
    terms = []
    for consumer in config.consumers:
        groups[f"head-{consumer.value}"] = seeded(config.seed + consumer.wire_id, lambda: codec.add_head(
            consumer, replace(adapter_config, sides=DECODER)))
        model = supervisor_for(consumer, config.supervisor, config.models.get(consumer.value), options)
        terms.append((consumer, model, config.lmbdas[consumer.value]))

    def forward(x: Tensor, amp: Optional[torch.dtype]) -> Tuple[Dict[str, Tensor], Dict[Task, Tensor]]:
        out = codec.universal_forward(x, config.consumers, amp)
        return out["likelihoods"], out["x_hats"]

    return Objective(groups, forward, terms)


def train_adapters(config: AdapterTrainConfig, progress: bool = True) -> TrainHistory:
    """Train the adapters of ``config.task`` (or the heads of universal coding); writes ``config.out``
    and returns the history.

    Raises :class:`InvalidInputError` (bad data, evaluation images, a checkpoint of other
    settings, a diverging loss) or :class:`~icmh.errors.WeightsMissingError`.
    """
    files = training_images(config.data)
    frame_codec = open_frame_codec(CodecOptions(
        codec=config.codec, quality=config.quality, codec_weights=config.codec_weights,
        random_codec=config.random_codec, seed=config.seed, device=config.device,
    ))
    codec = frame_codec.codec
    options = ModelOptions(device=config.device, random_weights=config.random_task_model, seed=config.seed,
                           models_dir=config.models_dir)
    objective = (universal_objective(config, codec, frame_codec, options) if config.heads
                 else task_objective(config, codec, options))
    codec.train()
    dataset = RandomCrops(files, crop=config.crop, seed=config.seed, length=config.steps * config.batch_size)
    optimizer = torch.optim.Adam([p for group in objective.groups.values() for p in group.parameters()], lr=config.lr)
    amp = AMP_DTYPES[config.amp]

    history = TrainHistory()
    history.step_seconds = []
    history.task_model_label = objective.label
    run = TrainingRun(config, CHECKPOINT_FORMAT, RESUME_KEYS, objective.groups, {"adam": optimizer},
                      config.csv_fields, OPTION_KEYS)
    history.start_step = run.start
    what = f"universal heads {','.join(config.heads)}" if config.heads else f"{config.task} adapters"
    device = torch.device(config.device)
    for step in run.steps(f"train {what} {config.codec} q{config.quality}", progress):
        began = time.perf_counter()
        lr = learning_rate(config, step)
        set_learning_rate(optimizer, lr)
        x, target = coding_pair(config.task, dataset.batch(step, config.batch_size), config.seed * 1_000_003 + step)
        x = x.to(device)  # restoration tasks: the degraded crop, scored against the clean ``target``
        torch.manual_seed(config.seed * 1_000_003 + step)
        optimizer.zero_grad(set_to_none=True)
        likelihoods, x_hats = objective.forward(x, amp)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = sum(-torch.log2(l).sum() for l in likelihoods.values()) / pixels
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            dists = {consumer: pair_distortion(model, x, target, x_hats[consumer]).float()
                     for consumer, model, _ in objective.terms}
        weighted = sum(lmbda * dists[consumer] for consumer, _, lmbda in objective.terms)
        loss = bpp + weighted
        value = check_finite(loss, step)
        loss.backward()
        optimizer.step()
        history.step_seconds.append(time.perf_counter() - began)
        record = {"step": step, "loss": value, "bpp": bpp.item(), "distortion": weighted.item(), "lr": lr}
        if config.heads:
            record.update({f"distortion_{consumer.value}": d.item() for consumer, d in dists.items()})
        else:
            record["distortion"] = dists[Task(config.task)].item()
        run.record(record, loss=f"{value:.4f}", bpp=f"{record['bpp']:.4f}", distortion=f"{record['distortion']:.4f}")
    history.extend(run.history)
    codec.eval()
    provenance = dict(training_data="\n".join(relative_names(files)), steps=config.steps,
                      random_weights=config.random_task_model or config.random_codec)
    if config.heads:
        history.metadata = save_universal(config, frame_codec, objective, provenance)
    else:
        history.metadata = save_adapters(config.out, codec, Task(config.task), frame_codec.loaded.fingerprint,
                                         lmbda=config.lmbda, task_model=objective.terms[0][1].name, **provenance)
    history.codec, history.optimizer = codec, optimizer
    return history


def save_universal(config: AdapterTrainConfig, frame_codec: FrameCodec, objective: Objective,
                   provenance: Dict[str, object]) -> AdapterMetadata:
    """Write the shared encoder (joint training) and every head into ``config.out``; returns the
    metadata of the last head written."""
    files = config.output_files()
    fingerprint = frame_codec.loaded.fingerprint
    if config.joint:
        save_adapters(files["encoder"], frame_codec.codec, None, fingerprint, role=ROLE_SHARED_ENCODER,
                      task_model=objective.label, **provenance)
    meta = None
    for consumer, model, lmbda in objective.terms:
        meta = save_adapters(files[f"head-{consumer.value}"], frame_codec.codec, consumer, fingerprint,
                             role=ROLE_HEAD, lmbda=lmbda, task_model=model.name, **provenance)
    return meta
