"""Bjøntegaard metrics (``icmh.evaluation.bjontegaard``) and the ``icmh bd`` command.

Besides exact identities (equal curves, half the rate, +1 dB), both interpolations are
checked against published worked examples with their published results (sources at
each data set).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

from icmh.evaluation import bjontegaard
from icmh.evaluation.bjontegaard import bd_metric, bd_rate, read_curve_csv
from icmh.errors import InvalidInputError

METHODS = ("cubic", "pchip")
Points = List[Tuple[float, float]]

# A learned-codec-like curve: bpp and PSNR (dB), 5 points, not in rate order.
RATES = [0.42, 0.12, 0.21, 0.65, 0.95]
PSNRS = [32.1, 27.9, 29.8, 33.9, 35.6]


def split(points: Points) -> Tuple[List[float], List[float]]:
    """``[(rate, metric), ...]`` as ``(rates, metrics)``."""
    return [p[0] for p in points], [p[1] for p in points]


# --- Published worked examples -------------------------------------------------------
#
# Classic cubic (VCEG-M33). The two curves of the VCEG-M33 example and the published
# result, as used in the test program of BDcpp (Tim Bruylants, github.com/tbr/bjontegaard_cpp,
# example.cpp, "VCEG-M33 numbers"; a port of the ETRO Excel implementation that "complies
# with VCEG-M33 when using 4 data points"): BD-PSNR 0.800713 dB, BD-rate -13.261773 %.
VCEG_M33_ANCHOR: Points = [(90.33, 27.95), (181.03, 31.17), (332.99, 34.44), (547.79, 38.11)]
VCEG_M33_TEST: Points = [(127.1719, 29.9286), (186.14, 32.4165), (307.2924, 34.7013), (481.5588, 37.4561)]
VCEG_M33_BD_PSNR, VCEG_M33_BD_RATE = 0.800713, -13.261773

# Same source, "ETRO barb512 numbers": 9 points per curve, so the cubic is a least-squares
# fit, not an interpolation. Published: BD-PSNR 0.072297 dB, BD-rate -0.903450 %.
ETRO_ANCHOR: Points = [(2.99899, 48.6681), (1.99884, 43.8357), (1.49673, 41.3982), (0.99707, 38.0124),
                       (0.745941, 35.5122), (0.596436, 33.8673), (0.495148, 32.6658), (0.29425, 29.4505),
                       (0.244049, 28.484)]
ETRO_TEST: Points = [(2.997253, 48.5637), (1.968292, 43.7318), (1.472565, 41.2727), (0.994965, 38.0001),
                     (0.748871, 35.6375), (0.58902, 33.9057), (0.499176, 32.8318), (0.296753, 29.6851),
                     (0.249634, 28.8244)]
ETRO_BD_PSNR, ETRO_BD_RATE = 0.072297, -0.903450

# Piecewise cubic (PCHIP). Data and results of JCTVC-E137 ("Excel template for BD-rate
# calculation based on piece-wise cubic interpolation"), as published in the test suite
# of Netflix VMAF (github.com/Netflix/vmaf, python/test/bd_rate_calculator_test.py,
# BDrateCalculatorJCTVCTest; results there are fractions: -0.00465215420752807 and
# -0.018779823450567612).
JCTVC_E137_CASES = [
    ([(108048.8736, 43.6471), (61279.976, 40.3953), (33905.6656, 37.247), (18883.6928, 34.2911)],
     [(108061.2784, 43.6768), (61299.9936, 40.4232), (33928.7472, 37.2761), (18910.912, 34.3147)],
     -0.465215420752807),
    ([(40433.8848, 37.5761), (7622.7456, 35.3756), (2394.488, 33.8977), (1017.6184, 32.0603)],
     [(40370.12, 37.5982), (7587.0024, 35.4025), (2390.0944, 33.9194), (1017.0984, 32.0822)],
     -1.8779823450567612),
]


@pytest.mark.parametrize("anchor, test, bd_psnr, bd_rate_percent", [
    (VCEG_M33_ANCHOR, VCEG_M33_TEST, VCEG_M33_BD_PSNR, VCEG_M33_BD_RATE),
    (ETRO_ANCHOR, ETRO_TEST, ETRO_BD_PSNR, ETRO_BD_RATE),
], ids=["vceg-m33", "etro-barb512-9pts"])
def test_cubic_matches_published_examples(anchor: Points, test: Points, bd_psnr: float,
                                          bd_rate_percent: float) -> None:
    args = (*split(anchor), *split(test))
    # published to 6 decimals: agree to the last published digit (far inside 0.01 %)
    assert bd_rate(*args, method="cubic") == pytest.approx(bd_rate_percent, abs=1e-6)
    assert bd_metric(*args, method="cubic") == pytest.approx(bd_psnr, abs=1e-6)


@pytest.mark.parametrize("anchor, test, expected", JCTVC_E137_CASES, ids=["e137-1", "e137-2"])
def test_pchip_matches_jctvc_e137(anchor: Points, test: Points, expected: float) -> None:
    assert bd_rate(*split(anchor), *split(test), method="pchip") == pytest.approx(expected, abs=1e-8)


def test_default_method_is_cubic() -> None:
    args = (*split(VCEG_M33_ANCHOR), *split(VCEG_M33_TEST))
    assert bjontegaard.DEFAULT_METHOD == "cubic"
    assert bd_rate(*args) == bd_rate(*args, method="cubic")
    assert bd_metric(*args) == bd_metric(*args, method="cubic")


# --- Exact identities ----------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_identical_curves_give_zero(method: str) -> None:
    assert bd_rate(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-12)
    assert bd_metric(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_half_rate_everywhere_is_minus_50_percent(method: str) -> None:
    half = [r / 2 for r in RATES]
    assert bd_rate(RATES, PSNRS, half, PSNRS, method=method) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(half, PSNRS, RATES, PSNRS, method=method) == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_plus_one_db_everywhere(method: str) -> None:
    better = [p + 1.0 for p in PSNRS]
    assert bd_metric(RATES, PSNRS, RATES, better, method=method) == pytest.approx(1.0, abs=1e-9)
    assert bd_metric(RATES, better, RATES, PSNRS, method=method) == pytest.approx(-1.0, abs=1e-9)
    # better quality at the same rates also means fewer bits for the same quality
    assert bd_rate(RATES, PSNRS, RATES, better, method=method) < 0


@pytest.mark.parametrize("method", METHODS)
def test_point_order_does_not_matter(method: str) -> None:
    order = np.argsort(RATES)[::-1]
    rates, psnrs = np.asarray(RATES)[order], np.asarray(PSNRS)[order]
    other = [p + 0.3 for p in PSNRS]
    assert bd_rate(rates, psnrs, RATES, other, method=method) == pytest.approx(
        bd_rate(RATES, PSNRS, RATES, other, method=method), abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_falling_metric_works_like_a_distortion(method: str) -> None:
    """A metric that falls with the rate (MSE, LPIPS): half the rate is still -50 %."""
    mse = [100.0 * math.exp(-p / 5) for p in PSNRS]
    half = [r / 2 for r in RATES]
    assert bd_rate(RATES, mse, half, mse, method=method) == pytest.approx(-50.0, abs=1e-9)


def test_pchip_works_with_two_points() -> None:
    # two points: linear in (metric, ln rate); test at 80 % of the rate everywhere
    assert bd_rate([0.1, 0.4], [30.0, 36.0], [0.08, 0.32], [30.0, 36.0], method="pchip") == pytest.approx(-20.0)


# --- Validation ----------------------------------------------------------------------

GOOD_R, GOOD_M = [0.1, 0.2, 0.4, 0.8], [28.0, 31.0, 34.0, 37.0]


@pytest.mark.parametrize("anchor_r, anchor_m, test_r, test_m, method, message", [
    (GOOD_R, GOOD_M, GOOD_R, GOOD_M, "akima", "unknown BD method"),
    (GOOD_R, GOOD_M[:3], GOOD_R, GOOD_M, "cubic", "anchor curve has 4 rates but 3 metric values"),
    (GOOD_R[:3], GOOD_M[:3], GOOD_R[:3], GOOD_M[:3], "cubic", "needs at least 4"),
    ([0.1], [30.0], [0.1], [30.0], "pchip", "needs at least 2"),
    (GOOD_R, GOOD_M, [0.1, 0.2, float("nan"), 0.8], GOOD_M, "cubic", "not finite"),
    (GOOD_R, [28.0, 31.0, float("inf"), 37.0], GOOD_R, GOOD_M, "cubic", "not finite"),
    ([0.0, 0.2, 0.4, 0.8], GOOD_M, GOOD_R, GOOD_M, "cubic", "rates must be positive"),
    (GOOD_R, GOOD_M, [-0.1, 0.2, 0.4, 0.8], GOOD_M, "pchip", "rates must be positive"),
    ([0.1, 0.2, 0.2, 0.8], GOOD_M, GOOD_R, GOOD_M, "cubic", "the rate 0.2 more than once"),
    (GOOD_R, [28.0, 31.0, 31.0, 37.0], GOOD_R, GOOD_M, "pchip", "the metric value 31 more than once"),
    (GOOD_R, GOOD_M, GOOD_R, [28.0, 33.0, 32.0, 37.0], "cubic", "test curve is not monotonic"),
    (GOOD_R, GOOD_M, GOOD_R, [37.0, 34.0, 31.0, 28.0], "cubic", "anchor metric rises"),
    (GOOD_R, GOOD_M, GOOD_R, [40.0, 41.0, 42.0, 43.0], "cubic", "share no metric range"),
    (GOOD_R, GOOD_M, GOOD_R, ["a", "b", "c", "d"], "cubic", "must be numbers"),
    (GOOD_R, GOOD_M, [[0.1, 0.2], [0.4, 0.8]], GOOD_M, "cubic", "flat sequences"),
], ids=["method", "lengths", "too-few-cubic", "too-few-pchip", "nan", "inf", "zero-rate", "negative-rate",
        "duplicate-rate", "duplicate-metric", "non-monotonic", "opposite-directions", "no-metric-overlap",
        "not-numbers", "not-flat"])
def test_bd_rate_rejects_bad_input(anchor_r, anchor_m, test_r, test_m, method: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        bd_rate(anchor_r, anchor_m, test_r, test_m, method=method)
    assert "\n" not in str(info.value)


def test_bd_metric_rejects_curves_without_a_common_rate_range() -> None:
    far = [r * 100 for r in GOOD_R]
    with pytest.raises(InvalidInputError, match="share no rate range") as info:
        bd_metric(GOOD_R, GOOD_M, far, GOOD_M)
    assert "\n" not in str(info.value)
    assert bd_rate(GOOD_R, GOOD_M, far, GOOD_M) == pytest.approx(9900.0)  # the metric ranges do overlap


def test_bd_metric_validates_like_bd_rate() -> None:
    with pytest.raises(InvalidInputError, match="needs at least 4"):
        bd_metric(GOOD_R[:3], GOOD_M[:3], GOOD_R, GOOD_M, method="cubic")
    with pytest.raises(InvalidInputError, match="unknown BD method"):
        bd_metric(GOOD_R, GOOD_M, GOOD_R, GOOD_M, method="spline")


# --- CSV -----------------------------------------------------------------------------

def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def curve_csv(path: Path, points: Sequence[Tuple[float, float]], extra: bool = False) -> Path:
    header = "image,bpp,metric,notes" if extra else "bpp,metric"
    lines = [header] + [(f"kodim{i:02d},{r!r},{m!r},x" if extra else f"{r!r},{m!r}") for i, (r, m) in enumerate(points)]
    return write_csv(path, "\n".join(lines) + "\n")


def test_read_curve_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "\ufeffname, Metric ,BPP\nq1,30.5,0.125\n\nq2, 33.25 ,0.5\n")
    rates, metrics = read_curve_csv(path)
    assert rates.tolist() == [0.125, 0.5] and metrics.tolist() == [30.5, 33.25]
    assert rates.dtype == np.float64 and metrics.dtype == np.float64


def test_read_curve_csv_round_trips_published_example(tmp_path: Path) -> None:
    rates, metrics = read_curve_csv(curve_csv(tmp_path / "a.csv", VCEG_M33_ANCHOR, extra=True))
    assert list(zip(rates.tolist(), metrics.tolist())) == VCEG_M33_ANCHOR


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("\n  \n", "is empty"),
    ("bpp,psnr\n0.1,30\n", "no 'metric' column"),
    ("rate,quality\n0.1,30\n", "no 'bpp' or 'metric' column"),
    ("bpp,metric\n", "no data lines"),
    ("bpp,metric\n0.1,30\n0.2,abc\n", "line 3: metric value 'abc' is not a number"),
    ("bpp,metric\n0.1,30\n0.2\n", "line 3: no metric value"),
    ("bpp,metric\n0.1,30\n,31\n", "line 3: no bpp value"),
    ("bpp,metric\nnan,30\n", "line 2: bpp value 'nan' is not a finite number"),
], ids=["empty", "blank", "no-metric", "no-columns", "no-data", "not-a-number", "short-row", "empty-cell", "nan"])
def test_read_curve_csv_rejects_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(InvalidInputError, match=message) as info:
        read_curve_csv(path)
    assert "\n" not in str(info.value)


def test_read_curve_csv_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_curve_csv(tmp_path / "missing.csv")
    with pytest.raises(InvalidInputError, match="is a directory"):
        read_curve_csv(tmp_path)
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"bpp,metric\n\xff\xfe\x00\x01\n")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        read_curve_csv(binary)


# --- icmh bd -------------------------------------------------------------------------

def test_cli_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from icmh.cli.main import main

    anchor = curve_csv(tmp_path / "anchor.csv", VCEG_M33_ANCHOR)
    test = curve_csv(tmp_path / "test.csv", VCEG_M33_TEST, extra=True)
    assert main(["bd", str(anchor), str(test)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "method     cubic" in out
    assert "BD-rate    -13.2618 %" in out
    assert "BD-metric  +0.8007" in out


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from icmh.cli.main import main

    anchor = curve_csv(tmp_path / "anchor.csv", JCTVC_E137_CASES[1][0])
    test = curve_csv(tmp_path / "test.csv", JCTVC_E137_CASES[1][1])
    assert main(["bd", str(anchor), str(test), "--method", "pchip", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    report = json.loads(out)
    assert report["method"] == "pchip"
    assert report["bd_rate"] == pytest.approx(JCTVC_E137_CASES[1][2], abs=1e-8)
    assert report["bd_metric"] == pytest.approx(
        bd_metric(*split(JCTVC_E137_CASES[1][0]), *split(JCTVC_E137_CASES[1][1]), method="pchip"))
    assert report["bd_metric"] > 0  # the test codec is slightly better


@pytest.mark.parametrize("bad, message", [
    ("bpp,psnr\n0.1,30\n", "no 'metric' column"),
    ("bpp,metric\n0.1,30\n0.2,31\n0.4,32\n", "test curve has 3 points; method 'cubic' needs at least 4"),
    (None, "does not exist"),
], ids=["bad-header", "too-few-points", "missing-file"])
def test_cli_bad_csv_exits_2_with_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 bad, message: str) -> None:
    from icmh.cli.main import main

    anchor = curve_csv(tmp_path / "anchor.csv", VCEG_M33_ANCHOR)
    test = tmp_path / "test.csv"
    if bad is not None:
        write_csv(test, bad)
    assert main(["bd", str(anchor), str(test)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_cli_help_describes_the_command(capsys: pytest.CaptureFixture) -> None:
    from icmh.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bd", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "BD-rate" in out and "pchip" in out and "bpp" in out
