"""``squeezenet1_1``: SqueezeNet 1.1 (ImageNet) from ``../shared/models``.

The caffe model converted to a float16 torchvision state dict that loads strictly into
``torchvision.models.squeezenet1_1()``; read with ``torch.load(weights_only=True)`` from
bytes whose SHA-256 was checked. Input: the image resized to 227×227 (bilinear), BGR in
0–255 minus the caffe means (104, 117, 123), no scaling. Training features: the outputs of
the Fire modules that end each resolution (strides 4, 8, 16).
"""

from __future__ import annotations

import io
import pickle
import warnings
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models import squeezenet1_1

from ..errors import InvalidInputError
from ..hub import tensor_state
from ..seeding import seeded
from ..tasks import Task
from .base import ModelOptions, TaskModelSpec, register_task_model, weights_label
from .classifier import ImageClassifier
from .files import ModelFile, read_verified
from .torchvision_models import load_strictly

WEIGHTS = ModelFile("imagenet-squeezenet1_1/squeezenet1_1-torchvision-fp16.pt",
                    "353ae86ec7c216786376c7638092e1e04d0e857b23345926d1c8c7cf4a1e0d88")
INPUT_SIZE = 227
BGR_MEAN = (104.0, 117.0, 123.0)
STAGE_ENDS = {"fire3 (stride 4)": 4, "fire5 (stride 8)": 7, "fire9 (stride 16)": 12}  # indices in .features


def read_weights(options: ModelOptions) -> dict:
    """The verified state dict (float32); raises :class:`InvalidInputError` for a damaged or pickled file."""
    data = read_verified(WEIGHTS, options.models_dir, "squeezenet1_1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise InvalidInputError(f"{WEIGHTS.path} is not a plain tensor state dict ({type(exc).__name__})") from None
    return tensor_state(state, WEIGHTS.path)


class SqueezeNet(ImageClassifier):
    """SqueezeNet 1.1 with caffe preprocessing; see the module docstring."""

    feature_names = tuple(STAGE_ENDS)

    def __init__(self, options: ModelOptions) -> None:
        network = seeded(options.seed, squeezenet1_1)
        if options.random_weights:
            label = weights_label("squeezenet1_1", options, "")
        else:
            load_strictly(network, read_weights(options), f"{WEIGHTS.path} does not fit squeezenet1_1")
            label = f"SqueezeNet 1.1 ({WEIGHTS.path})"
        super().__init__(network, name="squeezenet1_1", weights_label=label, pretrained=not options.random_weights,
                         top_k=options.top_k)
        self.register_buffer("bgr_mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def model_input(self, image: Tensor) -> Tensor:
        """``image`` resized to 227×227 (bilinear)."""
        if tuple(image.shape[-2:]) == (INPUT_SIZE, INPUT_SIZE):
            return image
        return F.interpolate(image[None], size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                             align_corners=False)[0].clamp(0, 1)

    def normalize(self, x: Tensor) -> Tensor:
        """RGB [0, 1] → BGR 0–255 minus the caffe means."""
        return x.flip(1) * 255 - self.bgr_mean

    def features(self, x: Tensor) -> List[Tensor]:
        """The Fire outputs that end each resolution (see :data:`STAGE_ENDS`)."""
        out, h = [], self.normalize(x)
        ends = set(STAGE_ENDS.values())
        for index, layer in enumerate(self.network.features):
            h = layer(h)
            if index in ends:
                out.append(h)
        return out


register_task_model(TaskModelSpec(
    name="squeezenet1_1", tasks=(Task.CLASSIFICATION,), family="shared-models", build=SqueezeNet, files=(WEIGHTS,),
    description="SqueezeNet 1.1 (BSD-2-Clause), ImageNet at 227, from ../shared/models", stands_in_for="ResNet-50",
))
