"""``edge-client``: capture frames, encode them for a task, stream them to the cloud server.

Frames go over ``--streams`` gRPC ``StreamInfer`` calls to ``--server`` (default:
``$ICMH_SERVER``, else ``localhost:50051``, where ``cloud-server`` and compose listen; TLS
and a bearer token where configured) and the results come back in frame order: one line
per frame on stdout (``--json`` for JSON lines), ``--output results.jsonl`` for a file,
``--annotate DIR`` for the decoded frames with their results drawn on them. With
``--save-dir`` each frame is written to a file instead (offline).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

from icmh.cli.common import (add_codec_options, codec_options, positive_int, run_cli, warn_random_weights,
                               write_output)
from icmh.codec.loader import open_frame_codec
from icmh.errors import InvalidInputError
from icmh.codec.frame_codec import EncodedFrame, FrameCodec
from icmh.service.metrics import UNIVERSAL, start_metrics_server, stop_metrics_server
from icmh.service.result_proto import result_from_proto
from icmh.tasks import Task
from torch import Tensor

from icmh.edge.annotate import annotate
from icmh.edge.connection import TOKEN_ENV, ClientSecurity, load_client_security
from icmh.edge.metrics import EdgeMetrics
from icmh.edge.output import LiveLine, outcome_json, outcome_text
from icmh.edge.prefetch import Round, capture_rounds
from icmh.edge.sources import open_source
from icmh.edge.streaming import FrameOutcome, FrameStreamer, StreamStats


def frame_size(text: str) -> tuple:
    """argparse type: ``WxH`` (e.g. ``640x360``) as ``(height, width)``."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 640x360") from None
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise argparse.ArgumentTypeError(f"{text!r}: each side must be 16..4096 pixels")
    return height, width


BATCH_CAMERAS = ("auto", "on", "off")  # --batch-cameras: see batches_cameras
SERVER_ENV = "ICMH_SERVER"
DEFAULT_SERVER = "localhost:50051"


def default_server() -> str:
    """``$ICMH_SERVER``, else :data:`DEFAULT_SERVER` (the port ``cloud-server`` and compose use)."""
    return os.environ.get(SERVER_ENV) or DEFAULT_SERVER


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-client`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="edge-client",
        description="Encode camera, video, image-folder or demo frames with a task's SFMA encoder adapters and "
                    "stream them to the cloud server (--server), or write one bitstream file per frame (--save-dir). "
                    "Prints one line per frame: bytes, bits per pixel, round trip and the results.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=int, action="append", metavar="INDEX",
                        help="live camera (OpenCV index); repeat for several cameras (--camera 0 --camera 1): "
                             "they are read side by side, a frame of each per round (see --batch-cameras)")
    source.add_argument("--video", type=Path, action="append", metavar="FILE",
                        help="video file; repeat for several, read side by side like several cameras")
    parser.add_argument("--batch-cameras", choices=BATCH_CAMERAS, default="auto",
                        help="encode the same-size frames of several cameras as one batch: auto = on a GPU only "
                             "(on a CPU one after the other was faster, see docs/edge.md) (default: auto)")
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of images")
    source.add_argument("--demo", action="store_true", help="built-in moving scene (default; needs nothing)")
    parser.add_argument("--demo-size", type=frame_size, default=None, metavar="WxH",
                        help="size of the demo scene's frames (default 640x360)")
    parser.add_argument("--task", default=Task.DETECTION.value,
                        help="the task the frames are coded for: human, detection, segmentation, classification, "
                             "machine, denoise, deblur, super-resolution or low-light (default: detection)")
    parser.add_argument("--tasks", metavar="LIST",
                        help="universal frames instead of --task: one bitstream per frame, coded by the shared "
                             "encoder and decoded at the server for each of these consumers, e.g. "
                             "detection,classification,human (the server needs their decoder heads)")
    parser.add_argument("--frames", type=positive_int, default=None, help="stop after N frames (demo default: 16)")
    parser.add_argument("--server", metavar="TARGET",
                        help=f"cloud server: HOST:PORT, or dns:///NAME:PORT or ipv4:A:PORT,B:PORT to balance "
                             f"streams round-robin over every address (default: ${SERVER_ENV}, else {DEFAULT_SERVER})")
    parser.add_argument("--window", type=positive_int, default=4, help="frames in flight per stream (default: 4)")
    parser.add_argument("--streams", type=positive_int, default=1,
                        help="concurrent StreamInfer calls; each stays on one server, so N streams spread over up "
                             "to N servers; results still come in frame order (default: 1)")
    parser.add_argument("--output", type=Path, help="results as JSON lines, one per frame, to this file")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of one text line per frame")
    parser.add_argument("--annotate", type=Path, metavar="DIR",
                        help="write each decoded frame with its results drawn on it to DIR (decodes locally)")
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


CAPTURE_AHEAD = 2  # frames captured ahead of the encoder


@dataclass
class Capture:
    """The frame sources of a run: their names (``camera 0``, ``video clip.mp4``) and their frames,
    read side by side in rounds (:func:`~icmh.edge.prefetch.capture_rounds`). ``origins`` fills in
    as frames are encoded: the source index of frame 0, 1, 2, … in sending order."""

    names: List[str]
    rounds: Iterator[Round]
    origins: List[int] = field(default_factory=list)

    @classmethod
    def of(cls, sources: Sequence[Iterator[Tensor]], names: Optional[Sequence[str]] = None) -> "Capture":
        """Read ``sources`` (each captured ahead by its own thread)."""
        names = list(names) if names is not None else [f"source {k}" for k in range(len(sources))]
        return cls(names, capture_rounds(sources, CAPTURE_AHEAD))

    @property
    def several(self) -> bool:
        """Whether frames come from more than one source (records then name their source)."""
        return len(self.names) > 1

    def source_of(self, frame_index: int) -> str:
        """The name of the source of the ``frame_index``-th encoded frame."""
        return self.names[self.origins[frame_index]]


def _capture(args: argparse.Namespace) -> Capture:
    if args.camera:
        return Capture.of([open_source("camera", index, args.frames) for index in args.camera],
                          [f"camera {index}" for index in args.camera])
    if args.video:
        return Capture.of([open_source("video", path, args.frames) for path in args.video],
                          [f"video {path.name}" for path in args.video])
    if args.images is not None:
        return Capture.of([open_source("images", args.images, args.frames)], [f"images {args.images.name}"])
    return Capture.of([open_source("demo", args.demo_size, args.frames or 16)], ["demo"])


def batches_cameras(choice: str, frame_codec: FrameCodec) -> bool:
    """Whether a round of camera frames is encoded as one batch: ``auto`` batches on a GPU only (on a CPU
    two 640×480 frames took 1.4× longer as one batch than one after the other, ``icmh bench codec``)."""
    return choice == "on" or (choice == "auto" and frame_codec.device.type == "cuda")


def encode_capture(capture: Capture, frame_codec: FrameCodec, task: Optional[Task], metrics: EdgeMetrics,
                   on_encode: Optional[Callable[[float], None]] = None, batch: bool = True) -> Iterator[EncodedFrame]:
    """Encode the captured frames for ``task`` (``None``: universal frames), a round of frames (one
    per source) at a time: with ``batch`` in one call, where same-size frames form one batch, else
    one frame after the other. The next round is captured while one encodes. ``on_encode`` gets
    each frame's encoding seconds (its share of its round's)."""
    spec, quality = frame_codec.loaded.spec.name, frame_codec.loaded.quality
    label = task or UNIVERSAL

    def encode(images: List[Tensor]) -> List[EncodedFrame]:
        return frame_codec.encode(images, task) if task else frame_codec.encode_universal(images)

    for round_ in capture.rounds:
        images = [image for _, image in round_]
        started = time.perf_counter()
        frames = encode(images) if batch else [frame for image in images for frame in encode([image])]
        share = (time.perf_counter() - started) / len(frames)
        for (source, _), encoded in zip(round_, frames):
            metrics.observe_encode(label, share)
            if on_encode is not None:
                on_encode(share)
            metrics.observe_encoded(label, spec, quality, encoded.bpp)
            capture.origins.append(source)
            yield encoded


def parse_consumers(text: str) -> List[Task]:
    """``--tasks``: comma-separated consumers, each once; raises :class:`InvalidInputError`."""
    consumers = [Task.parse(name.strip()) for name in text.split(",") if name.strip()]
    if not consumers:
        raise InvalidInputError("--tasks needs at least one consumer, e.g. detection,classification,human")
    if len(set(consumers)) != len(consumers):
        raise InvalidInputError(f"--tasks names a consumer twice: {text}")
    return consumers


def stream(args: argparse.Namespace, capture: Capture, frame_codec: FrameCodec, task: Optional[Task],
           metrics: EdgeMetrics, security: Optional[ClientSecurity] = None,
           consumers: Sequence[Task] = ()) -> int:
    """Stream the frames of ``capture`` to ``args.server`` (coded for ``task``, or universal frames decoded for
    ``consumers`` when ``task`` is ``None``); returns the exit status.

    Raises:
        ServerUnreachableError, AccessRefusedError: see :meth:`FrameStreamer.run`.
    """
    live = LiveLine()
    output = open(args.output, "w", encoding="utf-8") if args.output else None

    def on_result(outcome: FrameOutcome) -> None:
        live.add(outcome.encoded.bpp, outcome.round_trip_seconds or None)
        record = outcome_json(outcome)
        if capture.several:
            record["source"] = capture.source_of(outcome.frame_id)
        if output:
            output.write(json.dumps(record) + "\n")
            output.flush()
        print(live.clear + (json.dumps(record) if args.json else outcome_text(record)), flush=True)
        if args.annotate is not None and not outcome.response.HasField("error"):
            write_annotated(args.annotate, outcome, frame_codec)

    streamer = FrameStreamer(args.server, window=args.window, live=bool(args.camera), metrics=metrics,
                             task=task.value if task else UNIVERSAL, connect_timeout=args.connect_timeout,
                             reconnect_budget=args.reconnect_budget, on_result=on_result, streams=args.streams,
                             security=security, consumers=[c.value for c in consumers],
                             universal_id=None if task else frame_codec.codec.universal_hash())
    try:
        stats: StreamStats = asyncio.run(streamer.run(encode_capture(
            capture, frame_codec, task, metrics, live.add_encode, batches_cameras(args.batch_cameras, frame_codec))))
    finally:
        if output:
            output.close()
    if live.interactive:
        print(file=sys.stderr)  # end the live line
    if not live.frames:
        print("no frames were answered", file=sys.stderr)
        return 1
    print(f"{live.text()}; {stats.answered} answered, {stats.errors} with errors, {stats.dropped} dropped, "
          f"{stats.not_sent} over the server's limits, {stats.resent} resent after busy, {stats.reconnects} "
          f"reconnects ({_coding_label(task, consumers)}, {frame_codec.loaded.label})", file=sys.stderr)
    return 0


def _coding_label(task: Optional[Task], consumers: Sequence[Task]) -> str:
    return task.value if task else f"universal: {', '.join(c.value for c in consumers)}"


def write_annotated(folder: Path, outcome: FrameOutcome, frame_codec: FrameCodec) -> None:
    """Draw the frame's results on the locally decoded picture: ``frame_NNNNNN.png``, or for a universal
    frame one ``frame_NNNNNN-<consumer>.png`` per consumer with detections or classes. A restoration
    consumer's answer is a picture: the server's restored image is written as it came."""
    name = f"frame_{outcome.frame_id:06d}"
    entries = list(outcome.response.results) or [outcome.response]
    decoded = None
    for entry in entries:
        suffix = f"-{entry.task}" if outcome.response.results else ""
        if Task.parse(entry.task).is_restoration and entry.image_png:
            (folder / f"{name}{suffix}.png").write_bytes(entry.image_png)
        elif entry.detections or entry.classes or not outcome.response.results:
            decoded = decoded if decoded is not None else frame_codec.decode([outcome.encoded.data])[0]
            annotate(decoded.image, result_from_proto(entry)).save(folder / f"{name}{suffix}.png")


def save(args: argparse.Namespace, capture: Capture, frame_codec: FrameCodec, task: Optional[Task],
         metrics: EdgeMetrics) -> int:
    """Offline: write each encoded frame (for ``task``; ``None``: universal) to ``args.save_dir`` as
    ``frame_NNNNNN.icmh``, or with several sources to ``source-K/frame_NNNNNN.icmh`` (K: the
    source's place on the command line, N: its frame count); returns the exit status."""
    live = LiveLine()
    counts = [0] * len(capture.names)
    batch = batches_cameras(args.batch_cameras, frame_codec)
    for index, encoded in enumerate(encode_capture(capture, frame_codec, task, metrics, batch=batch)):
        source = capture.origins[index]
        folder = args.save_dir / f"source-{source}" if capture.several else args.save_dir
        write_output(folder / f"frame_{counts[source]:06d}.icmh", encoded.data)
        counts[source] += 1
        live.add(encoded.bpp)
    print(file=sys.stderr)
    print(f"{live.text()} ({task.value if task else 'universal'}, {frame_codec.loaded.label}) -> {args.save_dir}")
    return 0


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    consumers = parse_consumers(args.tasks) if args.tasks is not None else []
    task = None if consumers else Task.parse(args.task)
    if args.server is not None and args.save_dir is not None:
        raise InvalidInputError("give either --server TARGET (stream) or --save-dir DIR (offline), not both")
    if args.save_dir is None:
        args.server = args.server or default_server()
    if args.annotate is not None:
        if args.save_dir is not None:
            raise InvalidInputError("--annotate draws the server's results: it needs streaming, not --save-dir")
        args.annotate.mkdir(parents=True, exist_ok=True)
    security = client_security(args) if args.server else None  # bad files fail before any work
    warn_random_weights("edge-client", args)
    capture = _capture(args)
    first = next(capture.rounds, None)  # opens the sources (and reports a bad one) before the codec loads
    if first is None:
        print("no frames were captured", file=sys.stderr)
        return 1
    capture.rounds = itertools.chain([first], capture.rounds)
    frame_codec = open_frame_codec(codec_options(args), [task] if task else [])  # universal: the shared encoder
    metrics = EdgeMetrics()
    metrics_server = start_metrics_server(args.metrics_port, metrics.registry, args.metrics_host) if args.metrics_port is not None else None
    try:
        if args.server:
            return stream(args, capture, frame_codec, task, metrics, security, consumers)
        return save(args, capture, frame_codec, task, metrics)
    finally:
        if metrics_server:
            stop_metrics_server(*metrics_server)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``edge-client`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
