"""What the edge and cloud Prometheus metrics share: buckets, bounded label values, the HTTP endpoint.

The metrics themselves are defined once per side, in :mod:`icmh.cloud.metrics` and
:mod:`icmh.edge.metrics`. Rules both follow (SYSTEM.md, "Metrics"): base units in the
names (seconds, bytes), help text on every metric, a dedicated
:class:`~prometheus_client.CollectorRegistry`, and label values from small fixed sets
(task, codec, quality, stage, status code, drop reason), never frame or camera ids. A
value outside its set is recorded under the set's fallback (``unknown`` / ``other`` /
``UNKNOWN``) and logged once per label, so a bug can never grow the number of series.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, FrozenSet, Optional, Tuple

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from icmh.service.status import STATUS_BY_NUMBER
from icmh.errors import InvalidInputError
from icmh.tasks import Task

log = logging.getLogger(__name__)

# Bits per pixel, 0.005 .. 2, about log-spaced (1, 1.5, 2, 3, 5, 7.5 per decade): ICM
# operating points sit around 0.02-0.5 bpp, where the resolution matters most.
BPP_BUCKETS: Tuple[float, ...] = (
    0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
)
# Bytes of one frame, 64 B .. 1 MiB in powers of two.
BYTES_BUCKETS: Tuple[float, ...] = tuple(float(2 ** k) for k in range(6, 21))
# Durations in seconds, 1 ms .. 10 s (1, 2, 5 per decade).
SECONDS_BUCKETS: Tuple[float, ...] = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)
# Frames per batch on the server.
BATCH_SIZE_BUCKETS: Tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


_warned_labels: set = set()
_warned_lock = threading.Lock()


def _warn_once(label: str, value: object, fallback: str) -> None:
    """Log the first unexpected value of each label at WARNING (bounded: one per label name)."""
    with _warned_lock:
        first = label not in _warned_labels
        _warned_labels.add(label)
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    log.log(logging.WARNING if first else logging.DEBUG,
            "metrics: unexpected %s label value %s recorded as %r", label, shown, fallback)


def _plain(value: object) -> object:
    """Enums by their string value (``Task``) or their name (``grpc.StatusCode``); other values as they are."""
    if isinstance(value, Enum):
        return value.value if isinstance(value.value, str) else value.name
    return value


@dataclass(frozen=True)
class LabelValues:
    """The allowed values of one label and the fallback that any other value becomes.

    Call it on a value to get the label string: ``TASK_LABEL(Task.DETECTION) == "detection"``,
    ``TASK_LABEL("frame-17") == "unknown"``. Strings, ints (``quality``) and enums are
    accepted; anything else, ``bool`` included, becomes the fallback.
    """

    name: str
    values: Tuple[str, ...]
    fallback: str
    normalize: Optional[Callable[[object], object]] = None
    _allowed: FrozenSet[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.fallback not in self.values:
            raise ValueError(f"label {self.name!r}: fallback {self.fallback!r} is not one of its values")
        object.__setattr__(self, "_allowed", frozenset(self.values))

    def __call__(self, value: object) -> str:
        """Return ``value`` as an allowed label string, or the fallback (logged once per label)."""
        plain = _plain(value)
        if self.normalize is not None:
            plain = self.normalize(plain)
        if isinstance(plain, int) and not isinstance(plain, bool):
            plain = str(plain)
        if isinstance(plain, str) and plain in self._allowed:
            return plain
        _warn_once(self.name, value, self.fallback)
        return self.fallback


def _status_name(value: object) -> object:
    """A numeric gRPC code (``FrameError.code``) as its name; names pass through upper-cased."""
    if isinstance(value, int) and not isinstance(value, bool):
        return STATUS_BY_NUMBER[value].name if value in STATUS_BY_NUMBER else value
    if isinstance(value, str):
        return value.upper()
    return value


UNIVERSAL = "universal"  # the task label of a universal frame's own figures (bpp, entropy decoding)
TASK_LABEL = LabelValues("task", tuple(t.value for t in Task) + (UNIVERSAL, "unknown"), "unknown")
STATUS_CODE_LABEL = LabelValues("code", tuple(c.name for c in grpc.StatusCode), "UNKNOWN",
                                normalize=_status_name)


@functools.lru_cache(maxsize=1)
def codec_labels() -> Tuple[LabelValues, LabelValues]:
    """The ``codec`` and ``quality`` label sets: the registered codecs and their quality levels.

    Read from :data:`icmh.models.registry.CODECS` on first use (that import brings in
    torch and CompressAI, which both sides load anyway); a codec registered later is
    recorded as ``other``.
    """
    from icmh.models.registry import CODECS

    codec = LabelValues("codec", tuple(CODECS) + ("other",), "other")
    levels = sorted({q for spec in CODECS.values() for q in spec.qualities})
    quality = LabelValues("quality", tuple(str(q) for q in levels) + ("other",), "other")
    return codec, quality


def check_amount(name: str, value: float) -> float:
    """Return ``value`` as a float if it is finite and non-negative.

    Raises:
        ValueError: ``value`` is negative, NaN or infinite (a bug in the caller).
    """
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return number


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "127.0.0.1"):
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread.

    ``port`` 0 picks a free port: read it back from ``server.server_port``. The default
    address is loopback; pass ``"0.0.0.0"`` (or ``"::"``) to let a Prometheus on another
    host scrape it.

    Returns:
        ``(server, thread)``: the WSGI server (stop it with :func:`stop_metrics_server`)
        and its serving thread.

    Raises:
        ValueError: ``port`` is not an int in 0..65535.
        InvalidInputError: the address cannot be bound (port in use, no such interface).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be an int in 0..65535, got {port!r}")
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise InvalidInputError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc} "
                                f"(another process uses the port? pick another --metrics-port)") from None
    return server, thread


def stop_metrics_server(server, thread: Optional[threading.Thread] = None, timeout: float = 5.0) -> None:
    """Stop a server from :func:`start_metrics_server`, close its socket and join its thread."""
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join(timeout)
