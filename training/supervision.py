"""Task-agnostic supervision of the ``machine`` consumer (UG-ICM): global-to-instance agreement.

UG-ICM trains a codec without any task model of the deployment: a vision–language model
(CLIP) embeds the original and the decoded image, from the whole picture (global) down to
regions (instances), and the distortion is how far apart those embeddings are. Here
``D(x, x̂)`` is the mean of

* global: ``1 − cos(E(x̂), E(x))`` of the embeddings of the whole images, and
* instance: ``1 − cos`` of the embeddings of :data:`REGIONS` random boxes per image (the
  same boxes in ``x`` and ``x̂``; a quarter to two thirds of each side, drawn from the torch
  RNG, which the training loop seeds per step).

Supervisors (:func:`load_supervisor`):

* ``clip-vit-b-32`` / ``clip-vit-b-16``: OpenAI CLIP image towers through ``transformers``
  (``pip install "icmh[clip]"``), loaded from the Hugging Face cache as safetensors (nothing
  unpickled); downloaded there once where the network allows. Regions are cropped from the
  image and embedded at CLIP's input size.
* ``clip-random``: a small CLIP image tower with seeded random weights — the same code
  path, for tests; labelled RANDOM WEIGHTS.
* ``standin`` (default here, where no CLIP weights are reachable): the real small models of
  ``../shared/models`` together — their multi-scale features, global-average-pooled for the
  global term and RoI-aligned over the boxes for the instance term (``supervisor_models``;
  default: the two classifiers, so that the detectors stay unseen for the generalisation
  test of ``icmh eval``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.extras import optional_import
from icmh.seeding import seeded
from icmh.taskmodels import ModelOptions, TaskModel, load_task_model
from icmh.tasks import Task

REGIONS = 4  # random boxes per image for the instance term
BOX_SIDE = (0.25, 0.67)  # fraction of the image side a box side takes
CLIP_REPOS = {"clip-vit-b-32": "openai/clip-vit-base-patch32", "clip-vit-b-16": "openai/clip-vit-base-patch16"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
STANDIN = "standin"
STANDIN_MODELS = ("mobilenet-v2", "squeezenet1_1")
SUPERVISORS = (STANDIN, *CLIP_REPOS, "clip-random")


def random_boxes(count: int, height: int, width: int, regions: int = REGIONS) -> Tensor:
    """``count·regions`` boxes as RoI rows ``[image index, x0, y0, x1, y1]`` in pixels (torch RNG)."""
    low, high = BOX_SIDE
    sides = torch.empty(count * regions, 2).uniform_(low, high) * torch.tensor([width, height])
    corners = torch.rand(count * regions, 2) * (torch.tensor([width, height]) - sides)
    index = torch.arange(count).repeat_interleave(regions).unsqueeze(1).float()
    return torch.cat([index, corners, corners + sides], dim=1)


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean ``1 − cos`` between the rows of ``a`` and ``b`` (flattened per row)."""
    return (1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-6)).mean()


class Supervisor(nn.Module):
    """A frozen embedder whose global and regional agreement is the ``machine`` distortion."""

    name: str = ""
    weights_label: str = ""
    pretrained: bool = True

    def distortion(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """``D(x, x̂)``: the mean of the global and the instance cosine distances (targets carry no gradient)."""
        boxes = random_boxes(x.shape[0], x.shape[-2], x.shape[-1]).to(x.device)
        with torch.no_grad():
            targets = self.levels(x, boxes)
        terms = [cosine_distance(p, t) for p, t in zip(self.levels(x_hat, boxes), targets)]
        return torch.stack(terms).mean()

    def levels(self, x: Tensor, boxes: Tensor) -> List[Tensor]:
        """The embeddings compared, global ones then regional ones (one row per image or box)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Supervisor":
        """Always in eval mode: the supervisor is frozen."""
        return super().train(False)


class ClipSupervisor(Supervisor):
    """CLIP's image tower (``transformers.CLIPVisionModelWithProjection``): whole images and box crops."""

    def __init__(self, tower: nn.Module, name: str, weights_label: str, pretrained: bool) -> None:
        super().__init__()
        self.tower = tower.eval().requires_grad_(False)
        self.size = int(tower.config.image_size)
        self.name, self.weights_label, self.pretrained = name, weights_label, pretrained
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, images: Tensor) -> Tensor:
        """Image embeddings of N×3×size×size RGB images in [0, 1]."""
        return self.tower(pixel_values=(images - self.mean) / self.std).image_embeds

    def levels(self, x: Tensor, boxes: Tensor) -> List[Tensor]:
        whole = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        crops = roi_align(x, boxes, output_size=self.size, aligned=True)
        return [self.embed(whole), self.embed(crops)]


class FeatureStandIn(Supervisor):
    """The real small task models' multi-scale features together, in place of CLIP (see the module docstring)."""

    def __init__(self, models: Sequence[TaskModel]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.name = f"{STANDIN}({'+'.join(m.name for m in models)})"
        self.weights_label = "; ".join(f"{m.name}: {m.weights_label}" for m in models)
        self.pretrained = all(m.pretrained for m in models)

    def levels(self, x: Tensor, boxes: Tensor) -> List[Tensor]:
        pooled, regions = [], []
        for model in self.models:
            for feature in model.features(x):
                pooled.append(feature.mean(dim=(-2, -1)))
                scale = feature.shape[-1] / x.shape[-1]
                regions.append(roi_align(feature, boxes.to(feature.dtype), output_size=2, spatial_scale=scale,
                                         aligned=True))
        return pooled + regions


class EmbeddingRegularised(nn.Module):
    """A restoration consumer trained for robustness as LL-ICM does: its distortion is the pixel error
    of the restoration to the clean image plus ``weight`` times the supervisor's global-to-instance
    embedding distance between the two (:meth:`Supervisor.distortion`),
    ``MSE(R(x̂), x) + β · D_E(x, R(x̂))``. Used where a model's ``clean_distortion`` is."""

    def __init__(self, model: TaskModel, supervisor: Supervisor, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise InvalidInputError(f"the embedding weight must be positive, got {weight}")
        self.model, self.supervisor, self.weight = model, supervisor, float(weight)
        self.name = f"{model.name} + {weight:g}·{supervisor.name} embedding distance"
        self.weights_label = f"{model.weights_label}; {supervisor.name}: {supervisor.weights_label}"

    def clean_distortion(self, clean: Tensor, x_hat: Tensor) -> Tensor:
        """``MSE(R(x̂), clean) + β · D_E(clean, R(x̂))``; gradients flow to ``x_hat``."""
        restored = self.model.restore(x_hat)
        clean = clean.detach()
        return self.model.restoration_error(restored, clean) + self.weight * self.supervisor.distortion(clean, restored)

    def train(self, mode: bool = True) -> "EmbeddingRegularised":
        """Always in eval mode: both models are frozen."""
        return super().train(False)


def load_supervisor(name: str = STANDIN, *, models: Sequence[str] = STANDIN_MODELS,
                    options: ModelOptions = ModelOptions(), download: bool = True) -> Supervisor:
    """Build supervisor ``name`` (:data:`SUPERVISORS`), frozen, on ``options.device``.

    ``models``: the task models of the ``standin``. ``options.random_weights`` makes the
    stand-in's models random (labelled). Raises :class:`InvalidInputError` (unknown name,
    ``transformers`` missing) or :class:`WeightsMissingError` (CLIP weights not cached).
    """
    if name == STANDIN:
        built = [load_task_model(_task_of(model), model, options) for model in models]
        if not built:
            raise InvalidInputError("the stand-in supervisor needs at least one task model")
        return FeatureStandIn(built).to(options.device)
    if name == "clip-random":
        return _random_clip(options.seed).to(options.device)
    if name in CLIP_REPOS:
        return _pretrained_clip(name, download).to(options.device)
    raise InvalidInputError(f"unknown supervisor {name!r} (valid: {', '.join(SUPERVISORS)})")


def _task_of(model: str) -> Task:
    from icmh.taskmodels import get_task_model_spec

    return get_task_model_spec(model).tasks[0]


def _random_clip(seed: int) -> ClipSupervisor:
    """A small CLIP image tower (2 layers, 64 wide, 64×64 input) with seeded random weights."""
    transformers = optional_import("transformers", "clip", "the CLIP supervisor")
    config = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=64, patch_size=16, projection_dim=32)
    tower = seeded(seed, lambda: transformers.CLIPVisionModelWithProjection(config))
    return ClipSupervisor(tower, "clip-random", f"RANDOM WEIGHTS (seed {seed})", pretrained=False)


def _pretrained_clip(name: str, download: bool) -> ClipSupervisor:
    """OpenAI CLIP's image tower from the Hugging Face cache (safetensors only)."""
    transformers = optional_import("transformers", "clip", "the CLIP supervisor")
    repo = CLIP_REPOS[name]
    try:
        tower = transformers.CLIPVisionModelWithProjection.from_pretrained(
            repo, use_safetensors=True, local_files_only=not download)
    except (OSError, ValueError) as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise WeightsMissingError(
            f"CLIP weights {repo} (model.safetensors) are neither in the Hugging Face cache {HF_HUB_CACHE} nor "
            f"downloadable here ({str(exc).splitlines()[0]}); fetch them once where the network allows, or use "
            f"--supervisor {STANDIN}") from None
    return ClipSupervisor(tower, name, f"pretrained, {repo}", pretrained=True)


def supervisor_for(consumer: Task, name: Optional[str], model_name: Optional[str], options: ModelOptions,
                   standin_models: Sequence[str] = STANDIN_MODELS) -> nn.Module:
    """What trains ``consumer``'s head: the supervisor for ``machine``, else the consumer's task model."""
    if consumer is Task.MACHINE:
        return load_supervisor(name or STANDIN, models=standin_models, options=options)
    return load_task_model(consumer, model_name, options)
