"""Task backends: one interface (:class:`TaskBackend`), one registry (:data:`BACKENDS`).

``build_backend("detection", random_weights=False, device="cuda")`` gives torchvision's
Faster R-CNN R50-FPN; ``prefer="detectron2"`` the paper's detectron2 config where
detectron2 is importable. Importing this package registers every family.
"""

from . import detectron2_backend, torchvision_backends  # noqa: F401  (they register their backends)
from .base import (
    BACKENDS,
    DEFAULT_FAMILY,
    RANDOM_WEIGHTS_LABEL,
    BackendOptions,
    BackendUnavailableError,
    TaskBackend,
    build_backend,
    families,
)

__all__ = [
    "BACKENDS", "DEFAULT_FAMILY", "RANDOM_WEIGHTS_LABEL", "BackendOptions", "BackendUnavailableError",
    "TaskBackend", "build_backend", "families",
]
