"""``edge-client``: capture frames, encode them for a task, stream them to the cloud server.

With ``--server`` frames go over ``--streams`` gRPC ``StreamInfer`` calls (TLS and a
bearer token where configured) and the results come back in frame order (``--output
results.jsonl``, one JSON object per frame); with ``--save-dir`` each frame is written to
a file instead (offline).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from shared.cli_common import (add_codec_options, codec_options, positive_int, run_cli, warn_random_weights,
                               write_output)
from shared.codec_loader import open_frame_codec
from shared.errors import InvalidInputError
from shared.frame_codec import EncodedFrame, FrameCodec
from shared.metrics_common import start_metrics_server, stop_metrics_server
from shared.result_proto import result_from_proto
from shared.tasks import Task

from .connection import TOKEN_ENV, ClientSecurity, load_client_security
from .metrics import EdgeMetrics
from .sources import open_source
from .streaming import FrameOutcome, FrameStreamer, StreamStats


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-client`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="edge-client",
        description="Encode camera, video, image-folder or demo frames with a task's SFMA encoder adapters and "
                    "stream them to the cloud server (--server), or write one bitstream file per frame (--save-dir).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=int, metavar="INDEX", help="live camera (OpenCV index)")
    source.add_argument("--video", type=Path, metavar="FILE", help="video file")
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of images")
    source.add_argument("--demo", action="store_true", help="built-in moving scene (default; needs nothing)")
    parser.add_argument("--task", default=Task.DETECTION.value, help="human, detection, segmentation or "
                        "classification (default: detection)")
    parser.add_argument("--frames", type=positive_int, default=None, help="stop after N frames (demo default: 16)")
    parser.add_argument("--server", metavar="TARGET",
                        help="cloud server: HOST:PORT, or dns:///NAME:PORT or ipv4:A:PORT,B:PORT to balance "
                             "streams round-robin over every address")
    parser.add_argument("--window", type=positive_int, default=4, help="frames in flight per stream (default: 4)")
    parser.add_argument("--streams", type=positive_int, default=1,
                        help="concurrent StreamInfer calls; each stays on one server, so N streams spread over up "
                             "to N servers; results still come in frame order (default: 1)")
    parser.add_argument("--output", type=Path, help="results as JSON lines, one per frame (with --server)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (0: pick a free one)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address the metrics port listens on (default: 127.0.0.1; 0.0.0.0 for a Prometheus "
                             "on another host or container; it serves numbers only, never frame content)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach the server")
    parser.add_argument("--reconnect-budget", type=float, default=60.0,
                        help="seconds the server may stay away before the client gives up (default 60)")
    parser.add_argument("--save-dir", type=Path, help="offline: folder for frame_NNNNNN.icmh files")
    add_security_options(parser)
    add_codec_options(parser)
    return parser


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """Add the TLS and token options (plaintext without a token unless given)."""
    group = parser.add_argument_group("security (off unless given)")
    group.add_argument("--tls-ca", type=Path, metavar="FILE",
                       help="CA certificate(s) that signed the server's certificate (PEM); turns on TLS")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate chain for mutual TLS (PEM)")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of --tls-cert (PEM, unencrypted)")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="name to check the server certificate against instead of the target's host")
    group.add_argument("--token-file", type=Path, metavar="FILE",
                       help=f"bearer token to send (one line); default: ${TOKEN_ENV}")


def client_security(args: argparse.Namespace) -> ClientSecurity:
    """Read the TLS files and the token of ``args``; warns when a token would travel without TLS."""
    security = load_client_security(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name, args.token_file)
    if security.token and not security.tls:
        print("warning: sending the bearer token without TLS (no --tls-ca): only for loopback or a trusted "
              "network", file=sys.stderr, flush=True)
    return security


def _source(args: argparse.Namespace):
    if args.camera is not None:
        return open_source("camera", args.camera, args.frames)
    if args.video is not None:
        return open_source("video", args.video, args.frames)
    if args.images is not None:
        return open_source("images", args.images, args.frames)
    return open_source("demo", None, args.frames or 16)


class LiveLine:
    """The compact live status line (stderr) and the end-of-run summary."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.bpps: List[float] = []
        self.round_trips: List[float] = []
        self.last_print = 0.0

    def add(self, bpp: float, round_trip: Optional[float] = None) -> None:
        self.bpps.append(bpp)
        if round_trip is not None:
            self.round_trips.append(round_trip)
        now = time.perf_counter()
        if now - self.last_print > 0.5:
            self.last_print = now
            print(f"\r{self.text()}", end="", file=sys.stderr, flush=True)

    def text(self) -> str:
        fps = len(self.bpps) / max(time.perf_counter() - self.start, 1e-9)
        line = f"frames {len(self.bpps)}  {fps:.2f} fps  mean bpp {statistics.mean(self.bpps):.4f}"
        if len(self.round_trips) >= 2:
            cuts = statistics.quantiles(self.round_trips, n=20)
            line += f"  round trip p50 {1e3 * statistics.median(self.round_trips):.0f} ms p95 {1e3 * cuts[18]:.0f} ms"
        return line


def _encoded(frames: Iterator, frame_codec: FrameCodec, task: Task, metrics: EdgeMetrics) -> Iterator[EncodedFrame]:
    spec, quality = frame_codec.loaded.spec.name, frame_codec.loaded.quality
    for image in frames:
        with metrics.time_encode(task):
            encoded = frame_codec.encode([image], task)[0]
        metrics.observe_encoded(task, spec, quality, encoded.bpp)
        yield encoded


def _outcome_json(outcome: FrameOutcome) -> dict:
    response = outcome.response
    record = {"frame_id": outcome.frame_id, "bytes": len(outcome.encoded.data), "bpp": round(outcome.encoded.bpp, 6),
              "round_trip_ms": round(1e3 * outcome.round_trip_seconds, 2)}
    if response.HasField("error"):
        record["error"] = {"code": response.error.code, "message": response.error.message}
    else:
        record["result"] = result_from_proto(response).to_json()
        record["server_ms"] = round(1e3 * response.times.total_seconds, 2)
    return record


def stream(args: argparse.Namespace, frames: Iterator, frame_codec: FrameCodec, task: Task,
           metrics: EdgeMetrics, security: Optional[ClientSecurity] = None) -> int:
    """Stream ``frames`` to ``args.server``; returns the exit status.

    Raises:
        ServerUnreachableError, AccessRefusedError: see :meth:`FrameStreamer.run`.
    """
    live = LiveLine()
    output = open(args.output, "w", encoding="utf-8") if args.output else None

    def on_result(outcome: FrameOutcome) -> None:
        live.add(outcome.encoded.bpp, outcome.round_trip_seconds)
        line = json.dumps(_outcome_json(outcome))
        if output:
            output.write(line + "\n")
            output.flush()
        else:
            print(line)

    streamer = FrameStreamer(args.server, window=args.window, live=args.camera is not None, metrics=metrics,
                             task=task.value, connect_timeout=args.connect_timeout,
                             reconnect_budget=args.reconnect_budget, on_result=on_result, streams=args.streams,
                             security=security)
    try:
        stats: StreamStats = asyncio.run(streamer.run(_encoded(frames, frame_codec, task, metrics)))
    finally:
        if output:
            output.close()
    print(file=sys.stderr)
    if not live.bpps:
        print("no frames were answered", file=sys.stderr)
        return 1
    print(f"{live.text()}; {stats.answered} answered, {stats.errors} with errors, {stats.dropped} dropped, "
          f"{stats.reconnects} reconnects ({task.value}, {frame_codec.loaded.label})", file=sys.stderr)
    return 0


def save(args: argparse.Namespace, frames: Iterator, frame_codec: FrameCodec, task: Task,
         metrics: EdgeMetrics) -> int:
    """Offline: write each encoded frame to ``args.save_dir``; returns the exit status."""
    live = LiveLine()
    for index, encoded in enumerate(_encoded(frames, frame_codec, task, metrics)):
        write_output(args.save_dir / f"frame_{index:06d}.icmh", encoded.data)
        live.add(encoded.bpp)
    print(file=sys.stderr)
    print(f"{live.text()} ({task.value}, {frame_codec.loaded.label}) -> {args.save_dir}")
    return 0


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    task = Task.parse(args.task)
    if (args.server is None) == (args.save_dir is None):
        raise InvalidInputError("give exactly one of --server HOST:PORT (stream) or --save-dir DIR (offline)")
    security = client_security(args) if args.server else None  # bad files fail before any work
    if args.random_weights:
        warn_random_weights("edge-client")
    frames = iter(_source(args))
    first = next(frames, None)  # opens the source (and reports a bad one) before the codec loads
    if first is None:
        print("no frames were captured", file=sys.stderr)
        return 1
    frames = itertools.chain([first], frames)
    frame_codec = open_frame_codec(codec_options(args), [task])
    metrics = EdgeMetrics()
    metrics_server = start_metrics_server(args.metrics_port, metrics.registry, args.metrics_host) if args.metrics_port is not None else None
    try:
        if args.server:
            return stream(args, frames, frame_codec, task, metrics, security)
        return save(args, frames, frame_codec, task, metrics)
    finally:
        if metrics_server:
            stop_metrics_server(*metrics_server)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``edge-client`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
