"""What ``pip install .`` puts into site-packages: one import name, ``icmh``, and working console scripts.

The package is built and installed (not editable) into a fresh virtual environment whose
third-party packages come from the test environment (a ``.pth`` file; ``.pth`` files of that
folder, such as the editable install's finder, are not processed there). Everything then
runs from a folder outside the checkout, so nothing resolves to the repository's folders.
"""

from __future__ import annotations

import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

from icmh.errors import InvalidInputError
from icmh.extras import optional_import

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with ``pip install --no-deps .`` of this checkout; returns its bin folder."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    build = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--ignore-installed",  # never touch the test environment's own (editable) install
                            "--no-warn-script-location", str(ROOT)], capture_output=True, text=True, timeout=600,
                           cwd=home)
    assert build.returncode == 0, build.stderr
    return home / "bin"


def _run(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_only_icmh_is_importable_and_it_comes_from_site_packages(installed, tmp_path):
    found = _run(installed, "python", "-c", "import icmh, icmh.edge.cli, icmh.cloud.cli, icmh.v1.icmh_pb2_grpc; "
                                            "print(icmh.__file__)", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert "site-packages" in found.stdout and str(ROOT) not in found.stdout
    for name in ("shared", "training", "evaluation", "cloud_server", "edge_client", "cli"):
        result = _run(installed, "python", "-c", f"import {name}", cwd=tmp_path)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, name


def test_every_console_script_runs(installed, tmp_path):
    for script in ("icmh", "edge-client", "cloud-server"):
        result = _run(installed, script, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "usage:" in result.stdout, (script, result.stderr)
    info = _run(installed, "icmh", "info", "--codec", "mbt2018-mean", "--quality", "3", cwd=tmp_path)
    assert info.returncode == 0 and "287,232" in info.stdout, info.stderr  # the METHOD.md table, from the wheel


def test_the_installed_package_carries_its_trained_codecs_and_restoration_networks(installed, tmp_path):
    found = _run(installed, "python", "-c", "from icmh.codec.weights import BUNDLED_DIR; "
                                            "print(sorted(p.name for p in BUNDLED_DIR.glob('*.safetensors')))",
                 cwd=tmp_path)
    assert "mbt2018-mean-tiny-1.safetensors" in found.stdout, found.stderr
    restoration = _run(installed, "python", "-c", "from icmh.restoration import bundled_weights_path; "
                                                  "from icmh.tasks import RESTORATION_TASKS; "
                                                  "print([bundled_weights_path(t).is_file() for t in RESTORATION_TASKS])",
                       cwd=tmp_path)
    assert restoration.stdout.strip() == "[True, True, True, True]", restoration.stderr


def test_a_missing_extra_is_one_error_naming_it():
    with pytest.raises(InvalidInputError, match=r"needs the 'server' extra: pip install \"icmh\[server\]\""):
        optional_import("no_such_package_here", "server", "this model")
