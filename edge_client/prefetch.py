"""Capture ahead of encoding: the next frame is read (camera, video or file decoding) in a
thread while the current one encodes, and encoding runs while earlier frames are in flight
(:class:`~icmh.edge.streaming.FrameStreamer` encodes in an executor thread and writes on the
event loop). Camera reads and image decoding release the GIL, as does the encoder's torch
work, so the three stages overlap."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a background thread reads up to ``depth`` of them ahead.

    An exception raised by ``items`` is raised here at the position it happened. Closing the
    returned generator (or dropping it) stops the reader at its next item; the source is
    not read further. ``depth`` must be at least 1.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be at least 1, got {depth}")
    ahead: "queue.Queue[object]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put(_Failure(error))
            return
        put(_DONE)

    reader = threading.Thread(target=read, name="icmh-capture", daemon=True)
    reader.start()
    try:
        while True:
            item = ahead.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
