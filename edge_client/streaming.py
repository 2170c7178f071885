"""Stream encoded frames to the cloud server over ``streams`` concurrent ``StreamInfer`` calls.

* All calls share one channel (:mod:`.connection`), which balances them round-robin over
  the target's addresses; a call stays on one server, so N streams spread over up to N
  servers. Each stream takes the next unsent frame, so frames of one stream go out in
  order, and results are handed to ``on_result`` in frame order whatever stream carried them.
* At most ``window`` frames are in flight (sent, unanswered) per stream.
* File sources (``live=False``) never drop: the producer waits when the unsent buffer
  (``window`` frames) is full. Live sources drop the oldest unsent frame instead (counted
  in the metrics).
* When a stream breaks (server gone, draining, GOAWAY after its maximum connection age)
  its unanswered frames go back to the front of the unsent buffer and the stream
  reconnects with exponential backoff, so a file source loses no frame and gets exactly
  one result per frame. A server away for longer than ``reconnect_budget`` seconds ends
  the run with :class:`ServerUnreachableError`; a refusal that retrying cannot fix
  (UNAUTHENTICATED, PERMISSION_DENIED, ...) ends it at once with :class:`AccessRefusedError`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterator, List, Optional, Set

import grpc

from icmh.errors import IcmhError
from icmh.codec.frame_codec import EncodedFrame
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc

from icmh.edge.connection import ClientSecurity, open_channel
from icmh.edge.metrics import EdgeMetrics

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
CREDENTIAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
FIRST_BACKOFF, MAX_BACKOFF = 0.2, 5.0
_CALL_ENDED = (grpc.aio.AioRpcError, asyncio.InvalidStateError)  # what writing to a finished call raises


class ServerUnreachableError(IcmhError):
    """The server could not be reached (at start, or for longer than the reconnect budget)."""


class AccessRefusedError(IcmhError):
    """The server refused this client (bad token, missing rights, a call it does not serve): no retry helps."""


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


@dataclass
class _Lane:
    """The frames one ``StreamInfer`` call has in flight, and how many it got answered."""

    frame_ids: Set[int] = field(default_factory=set)
    answered: int = 0


class FrameStreamer:
    """Runs one camera session against ``target`` (``host:port``, ``dns:///name:port``, ``ipv4:a:p,b:p``)."""

    def __init__(self, target: str, *, window: int, live: bool, metrics: EdgeMetrics, task: str,
                 connect_timeout: float = 10.0, reconnect_budget: float = 60.0, max_message_bytes: int = 17 << 20,
                 on_result: Optional[Callable[[FrameOutcome], None]] = None, streams: int = 1,
                 security: Optional[ClientSecurity] = None) -> None:
        if window < 1 or streams < 1:
            raise ValueError("window and streams must be >= 1")
        self.target = target
        self.window = window
        self.live = live
        self.metrics = metrics
        self.task = task
        self.connect_timeout = connect_timeout
        self.reconnect_budget = reconnect_budget
        self.max_message_bytes = max_message_bytes
        self.streams = streams
        self.security = security or ClientSecurity()
        self.on_result = on_result or (lambda outcome: None)
        self.stats = StreamStats()
        self._unsent: Deque[PendingFrame] = collections.deque()
        self._in_flight: Dict[int, PendingFrame] = {}
        self._changed = asyncio.Condition()
        self._source_done = False
        self._settled: Dict[int, Optional[FrameOutcome]] = {}  # answered (or dropped: None), not yet handed on
        self._next_result = 0

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
                    self._settle(self._unsent.popleft().frame_id, None)
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

    def _settle(self, frame_id: int, outcome: Optional[FrameOutcome]) -> None:
        """Record the answer to (or the drop of) ``frame_id``; hand on every result now due, in frame order."""
        self._settled[frame_id] = outcome
        while self._next_result in self._settled:
            ready = self._settled.pop(self._next_result)
            self._next_result += 1
            if ready is not None:
                self.on_result(ready)

    # -- one call -----------------------------------------------------------------------------
    async def _write(self, call: grpc.aio.StreamStreamCall, lane: _Lane) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (self._unsent and len(lane.frame_ids) < self.window)
                    or (self._source_done and not self._unsent))
                if not self._unsent:
                    break
                item = self._unsent.popleft()
                item.sent_at = time.perf_counter()
                self._in_flight[item.frame_id] = item
                lane.frame_ids.add(item.frame_id)
                self.metrics.set_in_flight(len(self._in_flight))
                self._changed.notify_all()
            await call.write(pb.InferRequest(frame_id=item.frame_id, bitstream=item.encoded.data))
            self.stats.sent += 1
            self.metrics.count_sent(self.task, len(item.encoded.data))
        await call.done_writing()

    async def _read(self, call: grpc.aio.StreamStreamCall, lane: _Lane) -> None:
        async for response in call:
            if response.frame_id not in lane.frame_ids:
                continue  # not a frame of this call (a misbehaving server): nothing to match it to
            async with self._changed:
                lane.frame_ids.discard(response.frame_id)
                item = self._in_flight.pop(response.frame_id)
                self.metrics.set_in_flight(len(self._in_flight))
                self._changed.notify_all()
            elapsed = time.perf_counter() - item.sent_at
            lane.answered += 1
            self.stats.answered += 1
            self.stats.errors += response.HasField("error")
            self.stats.round_trips.append(elapsed)
            self.metrics.observe_round_trip(self.task, elapsed)
            self._settle(item.frame_id, FrameOutcome(item.frame_id, item.encoded, response, elapsed))

    async def _call(self, channel: grpc.aio.Channel, lane: _Lane) -> None:
        """One ``StreamInfer`` call until it ends; raises its ``AioRpcError`` if it fails."""
        call = pb_grpc.InferenceServiceStub(channel).StreamInfer(metadata=self.security.metadata())
        writer = asyncio.create_task(self._write(call, lane))
        writer.add_done_callback(lambda task: _is_bug(task) and call.cancel())
        try:
            await self._read(call, lane)
        finally:
            writer.cancel()  # a no-op when it is done; the server may end a call before the writer did
            (outcome,) = await asyncio.gather(writer, return_exceptions=True)
            if isinstance(outcome, Exception) and not isinstance(outcome, _CALL_ENDED):
                raise outcome

    async def _requeue(self, lane: _Lane) -> None:
        """Put the unanswered frames of ``lane`` back into the unsent buffer, in frame order."""
        async with self._changed:
            items = [self._in_flight.pop(frame_id) for frame_id in lane.frame_ids if frame_id in self._in_flight]
            lane.frame_ids.clear()
            if items:
                self._unsent = collections.deque(sorted([*items, *self._unsent], key=lambda item: item.frame_id))
            self.metrics.set_in_flight(len(self._in_flight))
            self._changed.notify_all()

    async def _work_left(self) -> bool:
        """Wait until there is a frame to send (True) or every frame is answered (False)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._unsent or self._finished())
            return not self._finished()

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        """Keep one stream going while frames are left; reconnect after a break, with backoff."""
        backoff, away_since = FIRST_BACKOFF, None
        while await self._work_left():
            lane = _Lane()
            try:
                await self._call(channel, lane)
                if not lane.frame_ids:
                    backoff, away_since = FIRST_BACKOFF, None
                    continue
                problem = "the server ended the stream early"  # e.g. draining
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise _refusal(exc, self.target) from None
                problem = f"{exc.code().name}: {exc.details()}"
            finally:
                await self._requeue(lane)
            if lane.answered:  # the stream worked for a while: a fresh break, not a server still away
                backoff, away_since = FIRST_BACKOFF, None
            away_since = away_since or time.monotonic()
            if time.monotonic() - away_since > self.reconnect_budget:
                raise ServerUnreachableError(
                    f"lost the cloud server at {self.target} for over {self.reconnect_budget:.0f} s ({problem}); "
                    f"{len(self._unsent)} frames unanswered")
            self.stats.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        """Wait for the server, then check with a ``GetCapabilities`` call that it accepts this client.

        A server that is reachable but not answering yet (UNAVAILABLE, e.g. draining) is asked
        again until ``connect_timeout`` has passed. Raises :class:`ServerUnreachableError` or
        :class:`AccessRefusedError`.
        """
        stub = pb_grpc.InferenceServiceStub(channel)
        request, metadata = pb.GetCapabilitiesRequest(), self.security.metadata()
        deadline = time.monotonic() + self.connect_timeout
        try:
            await asyncio.wait_for(channel.channel_ready(), self.connect_timeout)
        except asyncio.TimeoutError:
            reason = ""
            try:  # fails fast, with the channel's last error (refused connection, TLS handshake, ...)
                await stub.GetCapabilities(request, metadata=metadata, timeout=1)
            except grpc.aio.AioRpcError as exc:
                reason = f": {exc.details()}"
            hint = " (check --tls-ca, --tls-cert/--tls-key and --tls-server-name)" if self.security.tls else ""
            raise ServerUnreachableError(f"cannot reach the cloud server at {self.target} "
                                         f"(waited {self.connect_timeout:.0f} s){reason}{hint}") from None
        while True:
            try:
                await stub.GetCapabilities(request, metadata=metadata, timeout=max(deadline - time.monotonic(), 1.0))
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise _refusal(exc, self.target) from None
                if time.monotonic() >= deadline:
                    raise ServerUnreachableError(f"the cloud server at {self.target} did not answer: "
                                                 f"{exc.code().name}: {exc.details()}") from None
            await asyncio.sleep(FIRST_BACKOFF)

    # -- public -------------------------------------------------------------------------------
    async def run(self, frames: Iterator[EncodedFrame]) -> StreamStats:
        """Stream every frame of ``frames``; returns the counts when all are answered.

        Raises :class:`ServerUnreachableError` if the server cannot be reached at the start
        or stays away longer than the reconnect budget, and :class:`AccessRefusedError` if
        it refuses this client (token, certificate rights).
        """
        async with open_channel(self.target, self.security, self.max_message_bytes) as channel:
            await self._connect(channel)
            tasks = [asyncio.create_task(self._produce(frames))]
            tasks += [asyncio.create_task(self._stream(channel)) for _ in range(self.streams)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.stats


def _is_bug(task: asyncio.Task) -> bool:
    """Whether ``task`` ended with an exception other than the call having ended."""
    return not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), _CALL_ENDED)


def _refusal(exc: grpc.aio.AioRpcError, target: str) -> IcmhError:
    """The error for a status that retrying cannot fix."""
    if exc.code() in CREDENTIAL_CODES:
        return AccessRefusedError(f"the cloud server at {target} refused this client: {exc.code().name}: "
                                  f"{exc.details()} (check --token-file / $ICMH_TOKEN and the client certificate)")
    return AccessRefusedError(f"the cloud server at {target} refused the stream: {exc.code().name}: {exc.details()}")
