"""Capture ahead of encoding: the next frame is read (camera, video or file decoding) in a
thread while the current one encodes, and encoding runs while earlier frames are in flight
(:class:`~icmh.edge.streaming.FrameStreamer` encodes in an executor thread and writes on the
event loop). Camera reads and image decoding release the GIL, as does the encoder's torch
work, so the three stages overlap.

Several sources (``edge-client --camera 0 --camera 1``) are read side by side, each by its own
capture thread, and handed on in rounds (:func:`capture_rounds`): one frame of every source
that still has one, which the encoder codes together (one batch where sizes match, on a GPU)."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, List, Sequence, Tuple, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Iterator[T]):
    """Yield ``items`` in order while a background thread reads up to ``depth`` of them ahead.

    The thread starts at once (so several sources start reading together). An exception raised
    by ``items`` is raised here at the position it happened. Closing the iterator (or dropping
    it) stops the reader at its next item; the source is not read further. ``depth`` must be at
    least 1.
    """

    def __init__(self, items: Iterator[T], depth: int = 2) -> None:
        self._stop = threading.Event()
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._ahead: "queue.Queue[object]" = queue.Queue(maxsize=depth)
        self._done = False
        self._reader = threading.Thread(target=self._read, args=(items,), name="icmh-capture", daemon=True)
        self._reader.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failure(error))
            return
        self._put(_DONE)

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._ahead.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the reader (at its next item) and end the iteration."""
        self._done = True
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


Round = List[Tuple[int, T]]  # (source index, frame) pairs, in source order


def capture_rounds(sources: Sequence[Iterator[T]], depth: int = 2) -> Iterator[Round]:
    """Yield rounds of frames from several sources: each round holds the next frame of every
    source that still has one, as ``(source index, frame)`` pairs in source order.

    Every source is read ahead by its own thread (:class:`Prefetcher`, ``depth`` frames), so slow
    cameras are read concurrently and a round waits for the slowest one only. A source that ends
    leaves the later rounds; the rounds end when every source has ended. An error of a source is
    raised here; closing the returned generator stops every reader.
    """
    readers = [Prefetcher(iter(source), depth) for source in sources]
    live = list(range(len(readers)))
    try:
        while live:
            round_: Round = []
            for index in list(live):
                frame = next(readers[index], _DONE)
                if frame is _DONE:
                    live.remove(index)
                else:
                    round_.append((index, frame))  # type: ignore[arg-type]
            if round_:
                yield round_
    finally:
        for reader in readers:
            reader.close()
