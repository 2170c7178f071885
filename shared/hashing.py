"""Content hashes of tensor collections (adapter ids, base-codec fingerprints) and their sizes on the wire."""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch
from torch import Tensor

ADAPTER_ID_BYTES = 8  # the adapter hash in every frame header: the first bytes of the adapters' SHA-256
FINGERPRINT_BYTES = 4  # the base-weights fingerprint in every frame header


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) over names, dtypes, shapes and raw bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def short_digest(tensors: Mapping[str, Tensor], size: int) -> bytes:
    """The first ``size`` bytes of :func:`tensors_digest` (frame-header ids)."""
    return bytes.fromhex(tensors_digest(tensors))[:size]
