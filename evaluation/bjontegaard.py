"""Bjøntegaard delta metrics between two rate–quality curves.

Two codecs (an *anchor* and a *test*) are each measured at a few operating points:
a rate (bits per pixel, or any positive rate) and a quality metric (PSNR, accuracy,
mAP, ...). Bjøntegaard's method (VCEG-M33, 2001) interpolates both curves with
log-rate and metric as the axes and averages their gap over the range they share:

* **BD-rate**: the average rate difference at equal metric, in percent
  (negative: the test codec needs fewer bits for the same metric);
* **BD-metric**: the average metric difference at equal rate, test minus anchor,
  in the metric's own unit (BD-PSNR in dB, BD-accuracy, BD-mAP, ...).

Two interpolations are offered:

``"cubic"``
    The original VCEG-M33 method: one cubic polynomial per curve, fitted by least
    squares (``np.polyfit``, degree 3; exact through 4 points), integrated exactly.
    Needs at least 4 points per curve.
``"pchip"``
    Piecewise cubic Hermite interpolation (``scipy.interpolate.PchipInterpolator``)
    through the sorted points, integrated exactly: the method of the JCT-VC / JVET
    common-test-condition Excel sheets (JCTVC-E137, JVET CTC), which avoids the
    overshoot of a single cubic. Needs at least 2 points per curve.

Rates are logged with the natural logarithm; BD-rate is ``(exp(mean gap) - 1) * 100``.
The base of the logarithm cancels: ``10 ** mean`` over ``log10`` rates gives the same
number. A metric that *falls* with the rate (a distortion such as MSE or LPIPS) works
too, as long as both curves run the same way.

Every problem with the input raises :class:`icmh.errors.InvalidInputError` with a
one-line message.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Sequence, Tuple, Union

import numpy as np
from scipy.interpolate import PchipInterpolator

from icmh.errors import InvalidInputError

METHODS: Tuple[str, ...] = ("cubic", "pchip")
DEFAULT_METHOD = "cubic"
MIN_POINTS = {"cubic": 4, "pchip": 2}
CSV_COLUMNS = ("bpp", "metric")

ArrayLike = Union[Sequence[float], np.ndarray]
Curve = Tuple[np.ndarray, np.ndarray]


def _checked_curves(anchor_rate: ArrayLike, anchor_metric: ArrayLike, test_rate: ArrayLike,
                    test_metric: ArrayLike, method: str):
    """Validate the method and both curves; returns ``(method, a_rate, a_metric, t_rate, t_metric)``."""
    method = _check_method(method)
    a_rate, a_metric = _curve(anchor_rate, anchor_metric, "anchor", method)
    t_rate, t_metric = _curve(test_rate, test_metric, "test", method)
    _check_same_direction(a_metric, t_metric)
    return method, a_rate, a_metric, t_rate, t_metric


def bd_rate(anchor_rate: ArrayLike, anchor_metric: ArrayLike, test_rate: ArrayLike, test_metric: ArrayLike,
            method: str = DEFAULT_METHOD) -> float:
    """BD-rate of the test curve against the anchor curve.

    Log-rate is interpolated as a function of the metric (``method``: ``"cubic"`` or
    ``"pchip"``) and the gap is averaged over the metric range both curves cover.

    Returns:
        The average rate difference at equal metric in percent: negative when the test
        codec saves bits (``-50.0`` means half the rate), positive when it needs more.

    Raises:
        InvalidInputError: unknown method; lengths that differ; too few points (4 for
            cubic, 2 for pchip); values that are not finite numbers; a rate <= 0; a
            repeated rate or metric value; a curve that is not strictly monotonic; or
            curves whose metric ranges do not overlap.
    """
    method, a_rate, a_metric, t_rate, t_metric = _checked_curves(anchor_rate, anchor_metric, test_rate,
                                                                 test_metric, method)
    mean_gap = _mean_gap(a_metric, np.log(a_rate), t_metric, np.log(t_rate), method,
                         axis="metric", show=lambda v: f"{v:.6g}")
    return math.expm1(mean_gap) * 100.0


def bd_metric(anchor_rate: ArrayLike, anchor_metric: ArrayLike, test_rate: ArrayLike, test_metric: ArrayLike,
              method: str = DEFAULT_METHOD) -> float:
    """BD-metric (BD-PSNR, BD-accuracy, BD-mAP, ...) of the test curve against the anchor.

    The metric is interpolated as a function of log-rate (``method``: ``"cubic"`` or
    ``"pchip"``) and the gap is averaged over the log-rate range both curves cover.

    Returns:
        The average metric difference at equal rate, test minus anchor, in the metric's
        unit (positive: the test codec is better for a metric where higher is better).

    Raises:
        InvalidInputError: unknown method; lengths that differ; too few points (4 for
            cubic, 2 for pchip); values that are not finite numbers; a rate <= 0; a
            repeated rate or metric value; a curve that is not strictly monotonic; or
            curves whose rate ranges do not overlap.
    """
    method, a_rate, a_metric, t_rate, t_metric = _checked_curves(anchor_rate, anchor_metric, test_rate,
                                                                 test_metric, method)
    return _mean_gap(np.log(a_rate), a_metric, np.log(t_rate), t_metric, method,
                     axis="rate", show=lambda v: f"{math.exp(v):.6g}")


def read_curve_csv(path: Union[str, Path]) -> Curve:
    """Read one rate–metric curve from a CSV file with a header line.

    The header must name the columns ``bpp`` and ``metric`` (any order, any case;
    other columns are ignored); each further non-blank line is one point.

    Returns:
        ``(rates, metrics)``: two float arrays in file order (the BD functions sort them).

    Raises:
        InvalidInputError: the file is missing or unreadable, not UTF-8 text, empty,
            lacks a ``bpp`` or ``metric`` column, has no data lines, or has a value in
            those columns that is not a finite number.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInputError(f"curve file {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInputError(f"curve file {path} is a directory; give a CSV file") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"curve file {path} is not UTF-8 text; give a CSV file") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read curve file {path}: {exc.strerror}") from None

    reader = csv.reader(text.splitlines())
    header = None
    columns = ()
    rates, metrics = [], []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                missing = [name for name in CSV_COLUMNS if name not in header]
                if missing:
                    raise InvalidInputError(
                        f"curve file {path} has no {' or '.join(repr(name) for name in missing)} column "
                        f"(header: {','.join(cell.strip() for cell in row)}); expected a header 'bpp,metric'")
                columns = tuple(header.index(name) for name in CSV_COLUMNS)
                continue
            values = []
            for name, index in zip(CSV_COLUMNS, columns):
                cell = row[index].strip() if index < len(row) else ""
                values.append(_csv_number(cell, name, path, reader.line_num))
            rates.append(values[0])
            metrics.append(values[1])
    except csv.Error as exc:
        raise InvalidInputError(f"curve file {path} line {reader.line_num}: not valid CSV ({exc})") from None
    if header is None:
        raise InvalidInputError(f"curve file {path} is empty; expected a header 'bpp,metric' and one line per point")
    if not rates:
        raise InvalidInputError(f"curve file {path} has a header but no data lines")
    return np.asarray(rates, dtype=float), np.asarray(metrics, dtype=float)


def _csv_number(cell: str, column: str, path: Path, line: int) -> float:
    """``cell`` as a finite float; raises :class:`InvalidInputError` naming the line and column."""
    if not cell:
        raise InvalidInputError(f"curve file {path} line {line}: no {column} value")
    try:
        value = float(cell)
    except ValueError:
        raise InvalidInputError(f"curve file {path} line {line}: {column} value {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"curve file {path} line {line}: {column} value {cell!r} is not a finite number")
    return value


def _check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`; raises :class:`InvalidInputError` otherwise."""
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidInputError(f"unknown BD method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def _curve(rates: ArrayLike, metrics: ArrayLike, name: str, method: str) -> Curve:
    """One curve as float arrays sorted by rate, after every check; raises :class:`InvalidInputError`."""
    try:
        rate = np.asarray(rates, dtype=float)
        metric = np.asarray(metrics, dtype=float)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} curve: rates and metric values must be numbers") from None
    if rate.ndim != 1 or metric.ndim != 1:
        raise InvalidInputError(f"{name} curve: rates and metric values must be flat sequences of numbers")
    if rate.size != metric.size:
        raise InvalidInputError(f"{name} curve has {rate.size} rates but {metric.size} metric values")
    need = MIN_POINTS[method]
    if rate.size < need:
        raise InvalidInputError(f"{name} curve has {rate.size} point{'s' * (rate.size != 1)}; "
                                f"method {method!r} needs at least {need}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(metric))):
        raise InvalidInputError(f"{name} curve has a value that is not finite (nan or inf)")
    if np.any(rate <= 0):
        raise InvalidInputError(f"{name} curve has the rate {rate[rate <= 0][0]:g}; rates must be positive")
    order = np.argsort(rate, kind="stable")
    rate, metric = rate[order], metric[order]
    for values, what in ((rate, "rate"), (metric, "metric value")):
        unique, counts = np.unique(values, return_counts=True)
        if np.any(counts > 1):
            raise InvalidInputError(f"{name} curve has the {what} {unique[counts > 1][0]:g} more than once; "
                                    "each point needs its own rate and metric value")
    step = np.diff(metric)
    if not (np.all(step > 0) or np.all(step < 0)):
        raise InvalidInputError(f"{name} curve is not monotonic: sorted by rate, its metric must rise "
                                "(or fall) at every point")
    return rate, metric


def _check_same_direction(anchor_metric: np.ndarray, test_metric: np.ndarray) -> None:
    """Raise :class:`InvalidInputError` if one curve's metric rises with rate and the other's falls."""
    anchor_rises = anchor_metric[-1] > anchor_metric[0]
    test_rises = test_metric[-1] > test_metric[0]
    if anchor_rises != test_rises:
        raise InvalidInputError(f"the anchor metric {'rises' if anchor_rises else 'falls'} with the rate but the "
                                f"test metric {'rises' if test_rises else 'falls'}; compare curves of the same metric")


def _mean_gap(anchor_x: np.ndarray, anchor_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, method: str,
              axis: str, show: Callable[[float], str]) -> float:
    """Mean of ``y_test(x) - y_anchor(x)`` over the x range both curves cover.

    Raises :class:`InvalidInputError` if the ranges do not overlap (``axis`` names the
    x axis and ``show`` formats x values in the message).
    """
    low = max(anchor_x.min(), test_x.min())
    high = min(anchor_x.max(), test_x.max())
    if not high > low:
        raise InvalidInputError(
            f"the curves share no {axis} range (anchor {show(anchor_x.min())}–{show(anchor_x.max())}, "
            f"test {show(test_x.min())}–{show(test_x.max())}); BD needs overlapping curves")
    origin = 0.5 * (low + high)  # fit around the middle of the range: better conditioned, same polynomial
    gap = _integral(test_x, test_y, low, high, method, origin) \
        - _integral(anchor_x, anchor_y, low, high, method, origin)
    return float(gap / (high - low))


def _integral(x: np.ndarray, y: np.ndarray, low: float, high: float, method: str, origin: float) -> float:
    """Integral over ``[low, high]`` of the interpolant of ``y`` as a function of ``x``."""
    if method == "cubic":
        primitive = np.polyint(np.polyfit(x - origin, y, 3))
        return float(np.polyval(primitive, high - origin) - np.polyval(primitive, low - origin))
    order = np.argsort(x)
    return float(PchipInterpolator(x[order], y[order]).integrate(low, high))
