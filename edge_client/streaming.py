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
  one result per frame. Frames the server answers with a per-frame RESOURCE_EXHAUSTED
  (busy) or UNAVAILABLE (draining) go back too, after a backoff. Every other answer is
  final: a frame the server could not process (a poison frame) is reported with its
  error and counted, and the stream goes on. A frame that keeps breaking its stream
  (:data:`MAX_ATTEMPTS` times) is given up with an error; a server that fails
  :data:`FAILING_RUN` frames in a row ends the run with :class:`ServerFailingError`.
* Frames the server's capabilities say it would refuse (too many bytes or pixels) are not
  sent: they get a local RESOURCE_EXHAUSTED result. A task the server does not serve ends
  the run before any frame is sent; so do, for universal frames (``consumers``), a
  consumer without a decoder head there or a shared encoder other than the server's.
* A server away (or busy) for longer than ``reconnect_budget`` seconds ends the run with
  :class:`ServerUnreachableError`; a refusal that retrying cannot fix (UNAUTHENTICATED,
  PERMISSION_DENIED, a failed TLS handshake, ...) ends it at once with
  :class:`AccessRefusedError`.
* State is bounded: no per-frame history is kept beyond the frames in flight.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterator, Optional, Sequence, Set

import grpc

from icmh.errors import IcmhError
from icmh.codec.frame_codec import EncodedFrame
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc

from icmh.edge.connection import ClientSecurity, open_channel
from icmh.edge.metrics import EdgeMetrics

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
RESEND = {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], grpc.StatusCode.UNAVAILABLE.value[0]}  # per-frame, not final
MAX_ATTEMPTS = 3  # streams a frame may break before it is given up
FAILING_RUN = 20  # consecutive frames failed by the server (INTERNAL) that end the run
# what the channel reports when a TLS connection fails in the handshake: words of the TLS library, or
# "socket closed" (TLS 1.3: a server that wants a client certificate closes the connection after it)
TLS_FAILURE = ("handshake", "ssl", "tls", "certificate", "socket closed")
CREDENTIAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
FIRST_BACKOFF, MAX_BACKOFF = 0.2, 5.0
_CALL_ENDED = (grpc.aio.AioRpcError, asyncio.InvalidStateError)  # what writing to a finished call raises


class ServerUnreachableError(IcmhError):
    """The server could not be reached (at start, or for longer than the reconnect budget)."""


class AccessRefusedError(IcmhError):
    """The server refused this client (bad token, missing rights, a call it does not serve): no retry helps."""


class ServerFailingError(IcmhError):
    """The server failed every recent frame (INTERNAL): something is wrong with it, not with one frame."""


@dataclass
class PendingFrame:
    """A frame encoded at the edge, waiting to be sent or answered."""

    frame_id: int
    encoded: EncodedFrame
    sent_at: float = 0.0
    attempts: int = 0  # streams that broke while this frame was in flight


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
    resent: int = 0
    not_sent: int = 0


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
                 security: Optional[ClientSecurity] = None, consumers: Sequence[str] = (),
                 universal_id: Optional[bytes] = None) -> None:
        """``task``: the frames' task (the metrics label ``universal`` for universal frames);
        ``consumers``: for universal frames, what the server decodes each for; ``universal_id``:
        their shared encoder's id, checked against the server's."""
        if window < 1 or streams < 1:
            raise ValueError("window and streams must be >= 1")
        self.target = target
        self.window = window
        self.live = live
        self.metrics = metrics
        self.task = task
        self.consumers = list(consumers)
        self.universal_id = universal_id
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
        self._capabilities: Optional[pb.Capabilities] = None
        self._pause_until = 0.0  # no frame is sent before this time (the server said it is busy)
        self._busy_backoff = FIRST_BACKOFF
        self._failed_in_a_row = 0
        self._last_progress = time.monotonic()

    # -- producer -----------------------------------------------------------------------------
    async def _produce(self, frames: Iterator[EncodedFrame]) -> None:
        loop = asyncio.get_running_loop()
        frame_id = 0
        while True:
            encoded = await loop.run_in_executor(None, next, frames, None)
            if encoded is None:
                break
            refusal = self._over_limits(encoded)
            if refusal is not None:
                self.stats.not_sent += 1
                self._answer_locally(PendingFrame(frame_id, encoded), grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                frame_id += 1
                continue
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

    def _over_limits(self, encoded: EncodedFrame) -> Optional[str]:
        """Why the server would refuse ``encoded`` for its size (from its capabilities), or ``None``."""
        caps = self._capabilities
        if caps is None:
            return None
        if caps.max_frame_bytes and len(encoded.data) > caps.max_frame_bytes:
            return f"frame of {len(encoded.data)} bytes is over the server's limit of {caps.max_frame_bytes}: not sent"
        if caps.max_pixels and encoded.height * encoded.width > caps.max_pixels:
            return (f"frame of {encoded.width}×{encoded.height} pixels is over the server's limit of "
                    f"{caps.max_pixels} pixels: not sent")
        return None

    def _answer_locally(self, item: PendingFrame, code: grpc.StatusCode, message: str) -> None:
        """Settle ``item`` with an error result made here (the server never saw or finished it)."""
        response = pb.InferResponse(frame_id=item.frame_id)
        response.error.code, response.error.message = code.value[0], message
        self.stats.errors += 1
        self.metrics.count_dropped(self.task, "error")
        self._settle(item.frame_id, FrameOutcome(item.frame_id, item.encoded, response, 0.0))

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
            pause = self._pause_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            await call.write(pb.InferRequest(frame_id=item.frame_id, bitstream=item.encoded.data,
                                             consumers=self.consumers))
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
            if response.HasField("error") and response.error.code in RESEND:
                await self._resend_later(item, response.error.message)
                continue
            self._last_progress = time.monotonic()
            self._busy_backoff = FIRST_BACKOFF
            self.stats.answered += 1
            self.stats.errors += response.HasField("error")
            self.metrics.observe_round_trip(self.task, elapsed)
            self._check_failing(response)
            self._settle(item.frame_id, FrameOutcome(item.frame_id, item.encoded, response, elapsed))

    async def _resend_later(self, item: PendingFrame, reason: str) -> None:
        """Put a frame the server could not take now back in front, and hold all sending for a backoff."""
        if time.monotonic() - self._last_progress > self.reconnect_budget:
            raise ServerUnreachableError(f"the cloud server at {self.target} has answered no frame for over "
                                         f"{self.reconnect_budget:.0f} s ({reason})")
        self.stats.resent += 1
        self._pause_until = time.monotonic() + self._busy_backoff
        self._busy_backoff = min(2 * self._busy_backoff, MAX_BACKOFF)
        async with self._changed:
            self._unsent = collections.deque(sorted([item, *self._unsent], key=lambda pending: pending.frame_id))
            if self.live and len(self._unsent) > self.window:
                self._settle(self._unsent.popleft().frame_id, None)
                self.stats.dropped += 1
                self.metrics.count_dropped(self.task, "window_full")
            self._changed.notify_all()

    def _check_failing(self, response: pb.InferResponse) -> None:
        """Count frames the server failed in a row; raise :class:`ServerFailingError` after :data:`FAILING_RUN`."""
        failed = response.HasField("error") and response.error.code == grpc.StatusCode.INTERNAL.value[0]
        self._failed_in_a_row = self._failed_in_a_row + 1 if failed else 0
        if self._failed_in_a_row >= FAILING_RUN:
            raise ServerFailingError(f"the cloud server at {self.target} failed the last {FAILING_RUN} frames "
                                     f"({response.error.message}); stopping instead of sending more")

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
            for item in items:
                item.attempts += 1
            for item in [item for item in items if item.attempts >= MAX_ATTEMPTS]:
                items.remove(item)
                self._answer_locally(item, grpc.StatusCode.INTERNAL,
                                     f"the stream broke {item.attempts} times while this frame was in flight; "
                                     f"given up")
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
        await self._wait_ready(channel, stub, deadline)
        while True:
            try:
                self._capabilities = await stub.GetCapabilities(request, metadata=metadata,
                                                                timeout=max(deadline - time.monotonic(), 1.0))
                self._check_served(self._capabilities)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise _refusal(exc, self.target) from None
                if time.monotonic() >= deadline:
                    raise ServerUnreachableError(f"the cloud server at {self.target} did not answer: "
                                                 f"{exc.code().name}: {exc.details()}") from None
            await asyncio.sleep(FIRST_BACKOFF)

    def _check_served(self, caps: pb.Capabilities) -> None:
        """Raise :class:`AccessRefusedError` if the server cannot answer these frames."""
        if self.consumers:
            codec = caps.codecs[0] if caps.codecs else pb.CodecCapability()
            missing = [c for c in self.consumers if c not in codec.consumers]
            if missing:
                raise AccessRefusedError(
                    f"the cloud server at {self.target} has no decoder head for {', '.join(missing)} (universal "
                    f"frames there decode for: {', '.join(codec.consumers) or 'nothing'})")
            if self.universal_id is not None and codec.universal_encoder_hash != self.universal_id:
                raise AccessRefusedError(
                    f"the cloud server at {self.target} decodes universal frames of shared encoder "
                    f"{codec.universal_encoder_hash.hex()}, this client encodes with {self.universal_id.hex()} "
                    f"(load the same shared-encoder adapters on both sides)")
        elif caps.tasks and self.task not in caps.tasks:
            raise AccessRefusedError(f"the cloud server at {self.target} does not serve task {self.task!r} "
                                     f"(it serves {', '.join(caps.tasks)})")

    async def _wait_ready(self, channel: grpc.aio.Channel, stub: pb_grpc.InferenceServiceStub, deadline: float) -> None:
        """Wait until the channel is ready; a TLS handshake that fails is reported at once.

        Raises :class:`AccessRefusedError` (TLS handshake failed) or :class:`ServerUnreachableError`
        (nothing answered before ``deadline``).
        """
        reason = ""
        while time.monotonic() < deadline:
            state = channel.get_state(try_to_connect=True)
            if state is grpc.ChannelConnectivity.READY:
                return
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                try:  # fails fast, with the channel's last error (refused connection, TLS handshake, ...)
                    await stub.GetCapabilities(pb.GetCapabilitiesRequest(), metadata=self.security.metadata(),
                                               timeout=1)
                    return
                except grpc.aio.AioRpcError as exc:
                    reason = f": {exc.details()}"
                    if self.security.tls and any(word in exc.details().lower() for word in TLS_FAILURE):
                        raise AccessRefusedError(
                            f"the TLS handshake with the cloud server at {self.target} failed{reason} (check "
                            f"--tls-ca, --tls-cert/--tls-key for a server that wants client certificates, and "
                            f"--tls-server-name)") from None
            try:
                await asyncio.wait_for(channel.wait_for_state_change(state), max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        hint = " (check --tls-ca, --tls-cert/--tls-key and --tls-server-name)" if self.security.tls else ""
        raise ServerUnreachableError(f"cannot reach the cloud server at {self.target} "
                                     f"(waited {self.connect_timeout:.0f} s){reason}{hint}")

    # -- public -------------------------------------------------------------------------------
    async def run(self, frames: Iterator[EncodedFrame]) -> StreamStats:
        """Stream every frame of ``frames``; returns the counts when all are answered.

        Raises :class:`ServerUnreachableError` if the server cannot be reached at the start
        or stays away (or busy) longer than the reconnect budget, :class:`AccessRefusedError`
        if it refuses this client (token, certificate, a task it does not serve), and
        :class:`ServerFailingError` if it fails :data:`FAILING_RUN` frames in a row.
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
