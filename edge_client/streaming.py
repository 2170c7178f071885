"""Stream encoded frames to the cloud server over one ``StreamInfer`` call per session.

* At most ``window`` frames are in flight (sent, unanswered).
* File sources (``live=False``) never drop: the producer waits when the window and the
  unsent buffer are full. Live sources keep at most ``window`` unsent frames and drop
  the oldest unsent one when a new frame arrives (counted in the metrics).
* When the server goes away (UNAVAILABLE, or the stream breaks) the client reconnects
  with exponential backoff and first resends, in order, every frame that had no answer,
  so a file source loses no frame and gets exactly one result per frame.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterator, List, Optional

import grpc

from shared.errors import IcmhError
from shared.frame_codec import EncodedFrame
from shared.proto.icmh.v1 import icmh_pb2 as pb
from shared.proto.icmh.v1 import icmh_pb2_grpc as pb_grpc

from .metrics import EdgeMetrics

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}


class ServerUnreachableError(IcmhError):
    """The server could not be reached (at start, or for longer than the reconnect budget)."""


@dataclass
class PendingFrame:
    """A frame encoded at the edge, waiting to be sent or answered."""

    frame_id: int
    encoded: EncodedFrame
    sent_at: float = 0.0


@dataclass
class FrameOutcome:
    """A frame and the server's answer to it."""

    frame_id: int
    encoded: EncodedFrame
    response: pb.InferResponse
    round_trip_seconds: float


@dataclass
class StreamStats:
    """Counts of one session."""

    sent: int = 0
    answered: int = 0
    dropped: int = 0
    reconnects: int = 0
    errors: int = 0
    round_trips: List[float] = field(default_factory=list)


class FrameStreamer:
    """Runs one camera session against ``target`` (``host:port`` or ``dns:///name:port``)."""

    def __init__(self, target: str, *, window: int, live: bool, metrics: EdgeMetrics, task: str,
                 connect_timeout: float = 10.0, reconnect_budget: float = 60.0, max_message_bytes: int = 17 << 20,
                 on_result: Optional[Callable[[FrameOutcome], None]] = None) -> None:
        self.target = target
        self.window = window
        self.live = live
        self.metrics = metrics
        self.task = task
        self.connect_timeout = connect_timeout
        self.reconnect_budget = reconnect_budget
        self.options = [("grpc.max_send_message_length", max_message_bytes),
                        ("grpc.max_receive_message_length", max_message_bytes),
                        ("grpc.lb_policy_name", "round_robin")]
        self.on_result = on_result or (lambda outcome: None)
        self.stats = StreamStats()
        self._unsent: Deque[PendingFrame] = collections.deque()
        self._in_flight: Dict[int, PendingFrame] = {}
        self._changed = asyncio.Condition()
        self._source_done = False

    # -- producer -----------------------------------------------------------------------------
    async def _produce(self, frames: Iterator[EncodedFrame]) -> None:
        loop = asyncio.get_running_loop()
        frame_id = 0
        while True:
            encoded = await loop.run_in_executor(None, next, frames, None)
            if encoded is None:
                break
            async with self._changed:
                if self.live and len(self._unsent) >= self.window:
                    self._unsent.popleft()
                    self.stats.dropped += 1
                    self.metrics.count_dropped(self.task, "window_full")
                while not self.live and len(self._unsent) >= self.window:
                    await self._changed.wait()
                self._unsent.append(PendingFrame(frame_id, encoded))
                self._changed.notify_all()
            frame_id += 1
        async with self._changed:
            self._source_done = True
            self._changed.notify_all()

    def _finished(self) -> bool:
        return self._source_done and not self._unsent and not self._in_flight

    # -- one connection -----------------------------------------------------------------------
    async def _write(self, call) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (self._unsent and len(self._in_flight) < self.window)
                    or (self._source_done and not self._unsent))
                if not self._unsent:
                    break
                item = self._unsent.popleft()
                item.sent_at = time.perf_counter()
                self._in_flight[item.frame_id] = item
                self.metrics.set_in_flight(len(self._in_flight))
                self._changed.notify_all()
            await call.write(pb.InferRequest(frame_id=item.frame_id, bitstream=item.encoded.data))
            self.stats.sent += 1
            self.metrics.count_sent(self.task, len(item.encoded.data))
        await call.done_writing()

    async def _read(self, call) -> None:
        async for response in call:
            async with self._changed:
                item = self._in_flight.pop(response.frame_id, None)
                self.metrics.set_in_flight(len(self._in_flight))
                self._changed.notify_all()
            if item is None:
                continue  # an answer to a frame already answered before a reconnect
            elapsed = time.perf_counter() - item.sent_at
            self.stats.answered += 1
            self.stats.errors += response.HasField("error")
            self.stats.round_trips.append(elapsed)
            self.metrics.observe_round_trip(self.task, elapsed)
            self.on_result(FrameOutcome(item.frame_id, item.encoded, response, elapsed))

    async def _session(self, channel: grpc.aio.Channel) -> None:
        call = pb_grpc.InferenceServiceStub(channel).StreamInfer()
        writer = asyncio.create_task(self._write(call))
        try:
            await self._read(call)
            await writer
        finally:
            writer.cancel()

    async def _requeue_in_flight(self) -> None:
        async with self._changed:
            for frame_id in sorted(self._in_flight, reverse=True):
                self._unsent.appendleft(self._in_flight.pop(frame_id))
            self.metrics.set_in_flight(0)
            self._changed.notify_all()

    # -- public -------------------------------------------------------------------------------
    async def run(self, frames: Iterator[EncodedFrame]) -> StreamStats:
        """Stream every frame of ``frames``; returns the counts when all are answered.

        Raises :class:`ServerUnreachableError` if the server cannot be reached at the start
        or stays away longer than the reconnect budget.
        """
        async with grpc.aio.insecure_channel(self.target, options=self.options) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), self.connect_timeout)
            except asyncio.TimeoutError:
                raise ServerUnreachableError(
                    f"cannot reach the cloud server at {self.target} (waited {self.connect_timeout:.0f} s)") from None
        producer = asyncio.create_task(self._produce(frames))
        backoff, away_since = 0.2, None
        try:
            while not self._finished():
                async with grpc.aio.insecure_channel(self.target, options=self.options) as channel:
                    try:
                        await self._session(channel)
                        away_since = None
                        if self._in_flight:  # the server ended the stream (e.g. draining) early
                            await self._requeue_in_flight()
                            self.stats.reconnects += 1
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE:
                            raise ServerUnreachableError(f"server refused the stream: {exc.code().name}: "
                                                         f"{exc.details()}") from None
                        await self._requeue_in_flight()
                        away_since = away_since or time.monotonic()
                        if time.monotonic() - away_since > self.reconnect_budget:
                            raise ServerUnreachableError(
                                f"lost the cloud server at {self.target} for over {self.reconnect_budget:.0f} s; "
                                f"{len(self._unsent)} frames unanswered") from None
                        self.stats.reconnects += 1
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    backoff = 0.2
            await producer
        finally:
            producer.cancel()
        return self.stats
