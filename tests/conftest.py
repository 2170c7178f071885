"""Shared fixtures: the real data folders (plain helpers are in ``support.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist (`make test`: two workers on two cores) each worker, and every process it
# starts, runs one OpenMP thread unless told otherwise: two workers of two spinning threads
# each oversubscribed the cores and made the suite 1.7x slower (559 s against 323 s here).
# Tests that compare thread counts set them explicitly.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent

from icmh.paths import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real test images (``$ICMH_DATA_DIR`` or ``../shared/data``)."""
    return default_data_dir()


@pytest.fixture(scope="session")
def kodak_dir(data_dir: Path) -> Path:
    """The Kodak folder; tests that need it skip with a message when it is absent."""
    folder = data_dir / "kodak"
    if not folder.is_dir():
        pytest.skip(f"Kodak images not found in {folder} (set ICMH_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def training_dir(data_dir: Path) -> Path:
    """The BSDS500 training photos (never evaluation images); skips with a message when absent."""
    folder = data_dir / "bsds500-train"
    if not folder.is_dir():
        pytest.skip(f"training images not found in {folder} (set ICMH_DATA_DIR)")
    return folder


@pytest.fixture()
def few_training_images(training_dir: Path, tmp_path: Path) -> Path:
    """A folder with links to 6 training photos (fast training runs)."""
    folder = tmp_path / "train"
    folder.mkdir()
    for path in sorted(training_dir.glob("*.jpg"))[:6]:
        (folder / path.name).symlink_to(path)
    return folder


# The suite's longest files (about 30-140 s each on 2 cores), longest first. `make test` runs
# files on two xdist workers (--dist loadfile), which take files in collection order: starting
# with the long ones keeps one long file from running alone at the end.
LONG_FILES = ("test_cli.py", "test_serving_load.py", "test_edge_streaming.py", "test_encoder_paths.py",
              "test_exact_decoding.py", "test_benchmarks.py", "test_packaging.py", "test_universal.py",
              "test_serving_faults.py", "test_taskmodel_yolov5seg.py", "test_security.py",
              "test_eval_real_models.py", "test_train_adapters.py", "test_evaluation.py", "test_importance.py",
              "test_round_robin.py", "test_service.py")


def pytest_collection_modifyitems(items: list) -> None:
    """Run :data:`LONG_FILES` first, longest first; every file keeps its own order of tests."""
    rank = {name: index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))
