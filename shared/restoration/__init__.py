"""Low-level machine vision (LL-ICM): degradations and the small restoration networks of the
``denoise``, ``deblur``, ``super-resolution`` (×2) and ``low-light`` consumers.

* :mod:`~icmh.restoration.degradations`: the seeded degradation of each task
  (:func:`degrade`) and the clean image a restoration is scored against;
* :mod:`~icmh.restoration.networks`: the residual CNN of each task and its weight files
  (shipped in ``icmh/restoration/weights/``, made by ``icmh train-restoration``).

The networks serve as task models (``restore-denoise``, ``restore-deblur``,
``restore-sr2``, ``restore-low-light``: :mod:`icmh.taskmodels.restoration`) whose result is
the restored image.
"""

from icmh.restoration.degradations import (
    DEGRADATIONS,
    Degradation,
    degradation_of,
    degradation_parameters,
    degrade,
    restoration_target,
)
from icmh.restoration.networks import (
    MODEL_NAMES,
    NetworkConfig,
    RestorationNet,
    build_network,
    bundled_weights_path,
    parameter_count,
    read_network,
    save_network,
)

__all__ = [
    "DEGRADATIONS", "MODEL_NAMES", "Degradation", "NetworkConfig", "RestorationNet", "build_network",
    "bundled_weights_path", "degradation_of", "degradation_parameters", "degrade", "parameter_count",
    "read_network", "restoration_target", "save_network",
]
