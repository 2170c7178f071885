"""Dynamic batching: frames that arrive together run through the pipeline together.

The event loop admits each frame (:meth:`Pipeline.admit`: parse and checks) and puts it in
one queue; ``workers`` threads take the oldest frame, wait up to ``max_wait`` seconds for
more frames of the same task and size (up to ``max_batch``), and run them as one batch
(:meth:`Pipeline.run_batch`). Frames of another key keep their place in the queue. Every
task model batches exactly (fixed-size inputs: the YOLO letterbox canvases and the
classifiers' crops; the R-CNNs loop over images), so a frame's result does not depend on
its batch.

At most ``max_pending`` frames wait or run at once; :meth:`FrameBatcher.submit` refuses
more (:class:`Overloaded`), so overload never grows memory. :meth:`FrameBatcher.drain`
answers every frame that has not started with UNAVAILABLE (the client resends it to
another server) and lets the running batches finish.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Deque, List, Optional, Tuple

import grpc

from icmh.v1 import icmh_pb2 as pb

from icmh.cloud.pipeline import Job, Pipeline, error_response


class Overloaded(Exception):
    """The queue is full: the frame was not accepted."""


class FrameBatcher:
    """A bounded queue of admitted frames and the worker threads that run them in batches."""

    def __init__(self, pipeline: Pipeline, *, max_pending: int = 32, max_batch: int = 1, max_wait: float = 0.0,
                 workers: int = 1) -> None:
        if max_pending < 1 or max_batch < 1 or workers < 1 or max_wait < 0:
            raise ValueError("max_pending, max_batch and workers must be >= 1 and max_wait >= 0")
        self.pipeline = pipeline
        self.max_pending, self.max_batch, self.max_wait = max_pending, max_batch, max_wait
        self._queue: Deque[Tuple[Job, asyncio.Future, asyncio.AbstractEventLoop]] = collections.deque()
        self._lock = threading.Condition()
        self._running = 0
        self._draining = False
        self._threads = [threading.Thread(target=self._work, name=f"icmh-worker-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Frames queued or running."""
        with self._lock:
            return len(self._queue) + self._running

    async def submit(self, job: Job) -> pb.InferResponse:
        """Queue an admitted ``job`` and wait for its response.

        Raises :class:`Overloaded` when ``max_pending`` frames are already queued or running.
        Cancelling the wait marks the frame as gone (it is skipped if it has not started).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._lock:
            if self._draining:
                return error_response(job.frame_id, grpc.StatusCode.UNAVAILABLE,
                                      "server draining: send the frame to another server")
            if len(self._queue) + self._running >= self.max_pending:
                raise Overloaded(f"server busy: {len(self._queue) + self._running} frames pending "
                                 f"(limit {self.max_pending})")
            cancelled = job.cancelled
            job.cancelled = lambda: future.cancelled() or cancelled()
            self._queue.append((job, future, loop))
            self._lock.notify()
        self._publish()
        return await future

    def _publish(self) -> None:
        """Set the pending-frames gauge to the frames queued or running now."""
        self.pipeline.metrics.set_pending(self.pending)

    def _take(self) -> Optional[List[Tuple[Job, asyncio.Future, asyncio.AbstractEventLoop]]]:
        """The next batch (waiting up to ``max_wait`` for it to fill), or ``None`` when stopping."""
        with self._lock:
            while not self._queue:
                if self._draining:
                    return None
                self._lock.wait()
            batch = [self._queue.popleft()]
            self._running += 1  # counted at once: submit() must see it while this batch fills
            key = batch[0][0].key
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                same = [entry for entry in self._queue if entry[0].key == key][: self.max_batch - len(batch)]
                for entry in same:
                    self._queue.remove(entry)
                batch += same
                self._running += len(same)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._draining:
                    break
                self._lock.wait(remaining)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            for job, _, _ in batch:
                self.pipeline.metrics.observe_queue(time.perf_counter() - job.queued_at)
            try:
                responses = self.pipeline.run_batch([job for job, _, _ in batch])
            finally:
                with self._lock:
                    self._running -= len(batch)
                self._publish()
            for (_, future, loop), response in zip(batch, responses):
                loop.call_soon_threadsafe(_resolve, future, response)

    def drain(self) -> int:
        """Answer every frame that has not started with UNAVAILABLE and stop taking new ones;
        the running batches finish. Returns the number of frames answered so."""
        with self._lock:
            self._draining = True
            waiting = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        self._publish()
        for job, future, loop in waiting:
            response = error_response(job.frame_id, grpc.StatusCode.UNAVAILABLE,
                                      "server draining: send the frame to another server")
            loop.call_soon_threadsafe(_resolve, future, response)
        return len(waiting)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the workers to finish their batches; whether they did."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)


def _resolve(future: asyncio.Future, response: pb.InferResponse) -> None:
    if not future.done():
        future.set_result(response)
