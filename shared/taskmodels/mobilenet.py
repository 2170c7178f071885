"""``mobilenet-v2``: MobileNetV2 1.0 224 (ImageNet), the uint8 TFLite model of ``../shared/models``.

The TensorFlow model (Apache-2.0), fully quantised to uint8, is read with
:mod:`~icmh.taskmodels.tflite` into a PyTorch module with dequantised weights. The file
is read only through :func:`~icmh.taskmodels.files.read_verified` (SHA-256 checked);
``--random-weights`` still reads it, for the architecture.

* Geometry (:meth:`MobileNetV2.model_input`): resize so the short side is 256 (bilinear
  without antialiasing, as TF's ``resize_bilinear``), then the centre 224×224. On
  imagenet-100 it gives top-1 88 % (TF's central 87.5 % crop resized to 224: 84 %).
* Input: RGB, the uint8 input's real value ``(255·x − 128) / 128`` (≈ ``2x − 1``).
* Output: 1001 classes, index 0 TF's "background", then the standard ImageNet-1k order;
  the logits are the softmax's input (times its ``beta``) without index 0.
* Classification (:meth:`MobileNetV2.logits`) emulates the uint8 activation quantisation
  (each tensor rounded to its own scale and zero point, as the runtime's kernels do): it
  agrees with the TFLite runtime on the top-1 class of 392 of 400 photos of
  ``../shared/data``, against 383 in float. Random weights run in float (the file's
  activation ranges belong to the trained weights).
* Training features (:meth:`MobileNetV2.features`, always in float, so that the distortion
  is smooth and its gradients exact): the last inverted-residual block output at each
  resolution — ``expanded_conv_2/add`` (stride 4, 24 channels), ``expanded_conv_5/add``
  (stride 8, 32), ``expanded_conv_12/add`` (stride 16, 96) and ``expanded_conv_16/project``
  (stride 32, 320; that block has no residual).
"""

from __future__ import annotations

from typing import List, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidInputError
from ..tasks import Task
from .base import ModelOptions, TaskModelSpec, randomize, register_task_model, weights_label
from .classifier import ImageClassifier
from .files import ModelFile, read_verified
from .imagenet import NUM_CLASSES
from .tflite import TfliteNetwork, load_network

NAME = "mobilenet-v2"
TFLITE_FILE = ModelFile("imagenet-mobilenet-v2/mobilenet_v2_1.0_224_quant.tflite",
                        "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776")
INPUT_SIZE = 224
RESIZE_SHORT_SIDE = 256
INPUT_SCALE, INPUT_ZERO_POINT = 1 / 128, 128  # the uint8 input's quantisation
BACKGROUND_CLASSES = 1  # output 0 is TF's "background"
FEATURE_TENSORS: Tuple[Tuple[str, str], ...] = (
    ("expanded_conv_2 (stride 4)", "MobilenetV2/expanded_conv_2/add"),
    ("expanded_conv_5 (stride 8)", "MobilenetV2/expanded_conv_5/add"),
    ("expanded_conv_12 (stride 16)", "MobilenetV2/expanded_conv_12/add"),
    ("expanded_conv_16 (stride 32)", "MobilenetV2/expanded_conv_16/project/add_fold"),
)
"""Feature name → the TFLite tensor (its name's first ``;`` part) that gives it."""


def resize_centre_crop(image: Tensor, short_side: int = RESIZE_SHORT_SIDE, size: int = INPUT_SIZE) -> Tensor:
    """``image`` (3×H×W in [0, 1]) resized (bilinear, no antialiasing) so its short side is ``short_side``
    (at least ``size``), then its centre ``size``×``size``; returns a 3×size×size tensor in [0, 1]."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    scale = max(short_side, size) / min(height, width)
    resized_h, resized_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = image if (resized_h, resized_w) == (height, width) else F.interpolate(
        image[None], size=(resized_h, resized_w), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    top, left = (resized_h - size) // 2, (resized_w - size) // 2
    return resized[:, top:top + size, left:left + size]


class MobileNetV2(ImageClassifier):
    """MobileNetV2 from the TFLite file; see the module docstring."""

    feature_names = tuple(name for name, _ in FEATURE_TENSORS)

    def __init__(self, network: TfliteNetwork, *, weights_label: str, pretrained: bool, top_k: int = 5) -> None:
        super().__init__(network, name=NAME, weights_label=weights_label, pretrained=pretrained, top_k=top_k)
        head = network.softmax_input()
        self.logits_tensor, self.softmax_beta = head if head is not None else (network.output_index, 1.0)
        self.feature_tensors = tuple(network.find_tensor(tensor) for _, tensor in FEATURE_TENSORS)

    def model_input(self, image: Tensor) -> Tensor:
        """``image`` resized (short side 256) and centre-cropped to 224×224 (:func:`resize_centre_crop`)."""
        return resize_centre_crop(image)

    def normalize(self, x: Tensor) -> Tensor:
        """RGB [0, 1] → the real value of the uint8 input ``255·x``: ``(255·x − 128) / 128``."""
        return (x * 255 - INPUT_ZERO_POINT) * INPUT_SCALE

    def logits(self, x: Tensor) -> Tensor:
        """N×1000 ImageNet logits: the softmax's input times its ``beta``, background removed (quantisation
        emulated for trained weights)."""
        (scores,) = self.network.run(self.normalize(x), (self.logits_tensor,))
        return self.logits_from(scores)

    def logits_from(self, scores: Tensor) -> Tensor:
        """N×1000 logits of the softmax's input ``scores`` (N×1001, or N×1001×1×1): times ``beta``, without
        the background."""
        return scores.flatten(1)[:, BACKGROUND_CLASSES:] * self.softmax_beta

    def features(self, x: Tensor) -> List[Tensor]:
        """The block outputs of :data:`FEATURE_TENSORS` (strides 4, 8, 16, 32), in float, differentiable in ``x``."""
        return self.network.run(self.normalize(x), self.feature_tensors, emulate_quantization=False)


def build(options: ModelOptions) -> MobileNetV2:
    """The ``mobilenet-v2`` model: the verified TFLite file, dequantised, or its architecture with seeded
    random weights. Raises :class:`~icmh.errors.WeightsMissingError` (file absent) or
    :class:`InvalidInputError` (damaged file, unsupported content, not 1001 outputs, no ``tflite`` package)."""
    network = load_network(read_verified(TFLITE_FILE, options.models_dir, NAME),
                           emulate_quantization=not options.random_weights, what=TFLITE_FILE.path)
    outputs = network.output_shape[-1] if network.output_shape else 0
    if outputs != NUM_CLASSES + BACKGROUND_CLASSES:
        raise InvalidInputError(f"{TFLITE_FILE.path} has {outputs} outputs, expected "
                                f"{NUM_CLASSES + BACKGROUND_CLASSES} (background + ImageNet-1k)")
    if options.random_weights:
        randomize(network, options.seed)
    label = weights_label(NAME, options, f"TensorFlow MobileNetV2 1.0 224, uint8 TFLite dequantised "
                                         f"({TFLITE_FILE.path})")
    return MobileNetV2(network, weights_label=label, pretrained=not options.random_weights, top_k=options.top_k)


register_task_model(TaskModelSpec(
    name=NAME, tasks=(Task.CLASSIFICATION,), family="shared-models", build=build, files=(TFLITE_FILE,),
    description="MobileNetV2 1.0 224 (TensorFlow, Apache-2.0), uint8 TFLite dequantised, from ../shared/models",
    stands_in_for="ResNet-50",
))
