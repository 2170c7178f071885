"""Shared fixtures: the real data folders (plain helpers are in ``support.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
