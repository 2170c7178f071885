"""Model code: SFMA adapters, the codec registry, deterministic latent coding and the
adapted codec that ties a frozen CompressAI base codec to per-task adapter sets."""

from icmh.models.adapters import ADAPTER_VARIANTS, build_adapter
from icmh.models.registry import CODECS, CodecSpec, codec_by_wire_id, get_codec, register_codec

__all__ = [
    "ADAPTER_VARIANTS",
    "CODECS",
    "CodecSpec",
    "build_adapter",
    "codec_by_wire_id",
    "get_codec",
    "register_codec",
]
