"""Registry of base codecs: architecture, qualities, adapter taps and wire ids.

A codec entry says how to build the CompressAI model for a quality, where the
encoder / decoder adapters attach (indices into ``g_a`` / ``g_s``), which latent coder
entropy-codes it and where its pretrained weights come from. Adding a codec is one
:func:`register_codec` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

from compressai.models import Cheng2020Anchor, MeanScaleHyperprior, ScaleHyperprior
from compressai.zoo.image import cfgs as ZOO_CONFIGS
from torch import nn

from icmh.errors import InvalidInputError

# latent coder kinds (see icmh.models.latent_coding)
SCALE_HYPERPRIOR = "scale-hyperprior"
MEAN_SCALE_HYPERPRIOR = "mean-scale-hyperprior"
AUTOREGRESSIVE = "autoregressive"


@dataclass(frozen=True)
class CodecSpec:
    """Everything the project needs to know about one base codec architecture."""

    name: str
    wire_id: int
    builder: Callable[..., nn.Module]
    configs: Mapping[int, Tuple[int, ...]]
    latent_coder: str
    encoder_taps: Tuple[int, ...]
    decoder_taps: Mapping[str, Tuple[int, ...]]
    zoo_name: Optional[str] = None
    bundled_weights: Mapping[int, str] = field(default_factory=dict)
    description: str = ""
    default_quality: int = 3  # the quality commands use when none is given
    rd_lambdas: Mapping[int, float] = field(default_factory=lambda: dict(ZOO_MSE_LAMBDAS))  # λ of λ·255²·MSE + R

    def rd_lambda(self, quality: int) -> float:
        """The λ (of ``λ·255²·MSE + bpp``) this codec was trained with at ``quality``."""
        self.check_quality(quality)
        return self.rd_lambdas[quality]

    @property
    def qualities(self) -> Tuple[int, ...]:
        """The quality levels this codec has, ascending."""
        return tuple(sorted(self.configs))

    @property
    def default_decoder_position(self) -> str:
        """The decoder adapter position used unless another is asked for."""
        return next(iter(self.decoder_taps))

    def check_quality(self, quality: int) -> None:
        """Raise :class:`InvalidInputError` unless ``quality`` is one of this codec's levels."""
        if quality not in self.configs:
            valid = ", ".join(str(q) for q in self.qualities)
            raise InvalidInputError(f"{self.name} has no quality {quality} (valid: {valid})")

    def adapter_channels(self, quality: int) -> int:
        """Channels (N) of the ``g_a`` / ``g_s`` stages where adapters attach."""
        self.check_quality(quality)
        return self.configs[quality][0]

    def build(self, quality: int) -> nn.Module:
        """Return a freshly initialised (untrained) base model for ``quality``."""
        self.check_quality(quality)
        return self.builder(*self.configs[quality])


CODECS: Dict[str, CodecSpec] = {}

#: CompressAI's MSE λ per zoo quality (its training recipe): loss = λ·255²·MSE + bpp.
ZOO_MSE_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}


def register_codec(spec: CodecSpec) -> CodecSpec:
    """Add ``spec`` to :data:`CODECS`; names and wire ids must be unique."""
    if spec.name in CODECS or any(s.wire_id == spec.wire_id for s in CODECS.values()):
        raise ValueError(f"codec {spec.name!r} or wire id {spec.wire_id} already registered")
    CODECS[spec.name] = spec
    return spec


def get_codec(name: str) -> CodecSpec:
    """Return the codec called ``name``; raise :class:`InvalidInputError` naming the valid ones."""
    try:
        return CODECS[name]
    except KeyError:
        raise InvalidInputError(f"unknown codec {name!r} (valid: {', '.join(CODECS)})") from None


def codec_by_wire_id(wire_id: int) -> CodecSpec:
    """Return the codec whose header id is ``wire_id``; raise :class:`InvalidInputError` if none."""
    for spec in CODECS.values():
        if spec.wire_id == wire_id:
            return spec
    raise InvalidInputError(f"unknown codec id {wire_id} in frame header")


# g_a = conv, GDN, conv, GDN, conv, GDN, conv ; g_s = deconv, IGDN, deconv, IGDN, deconv, IGDN, deconv
_HYPERPRIOR_ENCODER_TAPS = (1, 3, 5)  # after each GDN
_HYPERPRIOR_DECODER_TAPS = {"after_igdn": (1, 3, 5), "after_deconv": (0, 2, 4)}

register_codec(CodecSpec(
    name="bmshj2018-hyperprior",
    wire_id=1,
    builder=ScaleHyperprior,
    configs=ZOO_CONFIGS["bmshj2018-hyperprior"],
    latent_coder=SCALE_HYPERPRIOR,
    encoder_taps=_HYPERPRIOR_ENCODER_TAPS,
    decoder_taps=_HYPERPRIOR_DECODER_TAPS,
    zoo_name="bmshj2018-hyperprior",
    description="Ballé et al. 2018 scale hyperprior (CompressAI zoo, MSE)",
))

register_codec(CodecSpec(
    name="mbt2018-mean",
    wire_id=2,
    builder=MeanScaleHyperprior,
    configs=ZOO_CONFIGS["mbt2018-mean"],
    latent_coder=MEAN_SCALE_HYPERPRIOR,
    encoder_taps=_HYPERPRIOR_ENCODER_TAPS,
    decoder_taps=_HYPERPRIOR_DECODER_TAPS,
    zoo_name="mbt2018-mean",
    description="Minnen et al. 2018 mean-scale hyperprior (CompressAI zoo, MSE)",
))

# g_a = RBS, RB, RBS, RB, RBS, RB, conv ; g_s = RB, RBU, RB, RBU, RB, RBU, RB, subpel
register_codec(CodecSpec(
    name="cheng2020-anchor",
    wire_id=3,
    builder=Cheng2020Anchor,
    configs=ZOO_CONFIGS["cheng2020-anchor"],
    latent_coder=AUTOREGRESSIVE,
    encoder_taps=(1, 3, 5),
    decoder_taps={"after_upsample": (1, 3, 5)},
    zoo_name="cheng2020-anchor",
    description="Cheng et al. 2020 anchor, autoregressive context model (CompressAI zoo, MSE)",
))

TINY_LAMBDAS = {1: 0.0067, 2: 0.0130, 3: 0.0250, 4: 0.0483}  # q1 from scratch, the others fine-tuned from it
TINY_QUALITIES = tuple(TINY_LAMBDAS)

register_codec(CodecSpec(
    name="mbt2018-mean-tiny",
    wire_id=100,
    builder=MeanScaleHyperprior,
    configs={quality: (64, 96) for quality in TINY_QUALITIES},
    latent_coder=MEAN_SCALE_HYPERPRIOR,
    encoder_taps=_HYPERPRIOR_ENCODER_TAPS,
    decoder_taps=_HYPERPRIOR_DECODER_TAPS,
    bundled_weights={quality: f"mbt2018-mean-tiny-{quality}.safetensors" for quality in TINY_QUALITIES},
    default_quality=1,
    rd_lambdas=TINY_LAMBDAS,
    description=(
        "small mean-scale hyperprior (N=64, M=96) trained briefly by this project at four λ on the "
        "training images only (scripts/train_tiny_codec.sh); ships with the package, for tests, smoke runs "
        "and benchmarks"
    ),
))

# The project's own default codec where the CompressAI zoo weights are absent: the mbt2018-mean
# structure at N=96, M=128 (3.5 M parameters, 7 MB as float16), trained by ``icmh train-codec``
# on training images only (see shared/weights/README.md for each quality's recipe).
SMALL_LAMBDAS = {1: 0.0018, 2: 0.0067, 3: 0.0250, 4: 0.0483, 5: 0.0932}  # CompressAI's q1, q3, q5, q6, q7: about 0.1–1 bpp

register_codec(CodecSpec(
    name="mbt2018-mean-small",
    wire_id=101,
    builder=MeanScaleHyperprior,
    configs={quality: (96, 128) for quality in SMALL_LAMBDAS},
    latent_coder=MEAN_SCALE_HYPERPRIOR,
    encoder_taps=_HYPERPRIOR_ENCODER_TAPS,
    decoder_taps=_HYPERPRIOR_DECODER_TAPS,
    bundled_weights={quality: f"mbt2018-mean-small-{quality}.safetensors" for quality in SMALL_LAMBDAS},
    default_quality=2,  # λ = 0.0067, about 0.3 bpp on Kodak (the zoo codecs' quality 3)
    rd_lambdas=SMALL_LAMBDAS,
    description=(
        "mean-scale hyperprior (N=96, M=128) trained by this project on training images only "
        "(BSDS500, COCO-mini train and un-annotated val); the default where zoo weights are absent"
    ),
))
