"""``cloud-server``: the gRPC inference service, or an offline decode of a frame folder."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from icmh.cli.common import (add_codec_options, add_task_model_options, codec_options, model_choices, model_options,
                             positive_int, run_cli, warn_random_weights)
from icmh.codec.loader import open_frame_codec
from icmh.errors import IcmhError, InvalidInputError
from icmh.images import save_image
from icmh.tasks import DEFAULT_SERVED_TASKS, Task

from icmh.cloud.auth import TOKENS_ENV, load_tokens
from icmh.cloud.server import SERVER_LIMITS, ServerConfig, serve
from icmh.cloud.tls import load_server_tls


def build_parser() -> argparse.ArgumentParser:
    """The ``cloud-server`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="cloud-server",
        description="Serve icmh.v1.InferenceService over gRPC: decode each frame with the decoder adapters of its "
                    "task, run the task model (detection, segmentation, classification; human returns the image) "
                    "and answer; Prometheus metrics on --metrics-port. With --input-dir, decode a folder of "
                    "frames offline instead (PNG + results.jsonl).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; "
                        "use 0.0.0.0 only with TLS and tokens, see the deployment section of the README)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (0: pick a free one; default 50051)")
    parser.add_argument("--metrics-port", type=int, default=9100,
                        help="Prometheus port (0: pick a free one; -1: off; default 9100)")
    parser.add_argument("--tasks", default=",".join(t.value for t in DEFAULT_SERVED_TASKS),
                        help="comma-separated tasks to serve (default: %(default)s)")
    limits = parser.add_argument_group("limits and batching (bounded cost and memory per frame)")
    limits.add_argument("--max-pending", type=positive_int, default=32,
                        help="frames waiting or running at once before RESOURCE_EXHAUSTED (default 32)")
    limits.add_argument("--max-pixels", type=positive_int, default=SERVER_LIMITS.max_pixels,
                        help=f"largest frame accepted, in pixels (default {SERVER_LIMITS.max_pixels}: 1920×1080; "
                             f"larger frames get RESOURCE_EXHAUSTED before any decoding)")
    limits.add_argument("--max-batch", type=positive_int, default=4,
                        help="frames of the same task and size run through the models together (default 4)")
    limits.add_argument("--max-batch-wait-ms", type=float, default=5.0,
                        help="how long a worker waits for a batch to fill, in ms (default 5)")
    limits.add_argument("--workers", type=positive_int, default=1,
                        help="threads that run batches in parallel (default 1; see --threads)")
    limits.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads shared by the workers (default: CPU cores / workers, at least 1)")
    limits.add_argument("--max-calls", type=positive_int, default=32,
                        help="concurrent calls of all clients before RESOURCE_EXHAUSTED (default 32)")
    limits.add_argument("--max-streams-per-connection", type=positive_int, default=16,
                        help="concurrent streams one connection may open (HTTP/2 limit; default 16)")
    limits.add_argument("--stream-idle-timeout", type=float, default=300.0,
                        help="seconds a stream may send nothing before it is ended (default 300)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight frames get on SIGTERM")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="detections scoring below this are not returned (default 0.5)")
    parser.add_argument("--detector-min-size", type=positive_int, default=None,
                        help="R-CNN detectors' input short side (default: their 800; the YOLO models have fixed sizes)")
    parser.add_argument("--log-frames", action="store_true", help="log one line per frame (default: per stream)")
    parser.add_argument("--input-dir", type=Path, help="offline mode: folder of .icmh frames to decode")
    parser.add_argument("--output-dir", type=Path, help="offline mode: folder for PNGs and results.jsonl")
    add_task_model_options(parser, several=True)
    add_security_options(parser)
    add_codec_options(parser, task_models=True, encoder=False)
    return parser


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """Add TLS, token and connection-age options (all off by default)."""
    group = parser.add_argument_group("security and load balancing (all off by default)")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate chain (PEM); turns on TLS")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of --tls-cert (PEM, unencrypted)")
    group.add_argument("--tls-client-ca", type=Path, metavar="FILE",
                       help="CA of the client certificates (PEM): clients must present one (mutual TLS)")
    group.add_argument("--auth-tokens-file", type=Path, metavar="FILE",
                       help=f"accepted bearer tokens, one per line (# comments); default: ${TOKENS_ENV} "
                            "(comma-separated). Health checks and reflection need no token")
    group.add_argument("--max-connection-age", type=_non_negative_seconds, default=0.0, metavar="SECONDS",
                       help="send GOAWAY to connections older than this, so long streams rebalance behind a "
                            "load balancer (default 0: off)")
    group.add_argument("--max-connection-age-grace", type=_non_negative_seconds, default=0.0, metavar="SECONDS",
                       help="then close them after this many seconds; the edge client resends unanswered frames "
                            "(default 0: wait for the calls to end)")


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def decode_folder(args: argparse.Namespace) -> int:
    """Offline mode: every .icmh file of ``--input-dir`` becomes a PNG and a line of results.jsonl."""
    if args.output_dir is None:
        raise InvalidInputError("--input-dir needs --output-dir")
    files = sorted(args.input_dir.glob("*.icmh")) if args.input_dir.is_dir() else []
    if not files:
        raise InvalidInputError(f"no .icmh frames in {args.input_dir}")
    # with --random-weights every task gets seeded adapters; otherwise the tasks of the --adapters files
    options = codec_options(args)
    frame_codec = open_frame_codec(options, list(DEFAULT_SERVED_TASKS) if options.random_adapters else [])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    with open(args.output_dir / "results.jsonl", "w", encoding="utf-8") as results:
        for path in files:
            start = time.perf_counter()
            try:
                decoded = frame_codec.decode([path.read_bytes()])[0]
            except IcmhError as exc:
                failures += 1
                results.write(json.dumps({"frame": path.name, "error": type(exc).__name__, "message": str(exc)}) + "\n")
                continue
            elapsed = time.perf_counter() - start
            save_image(decoded.image, args.output_dir / f"{path.stem}.png")
            results.write(json.dumps({
                "frame": path.name, "task": decoded.task.value, "width": decoded.header.width,
                "height": decoded.header.height, "bytes": decoded.size_bytes, "bpp": round(decoded.bpp, 6),
                "decode_ms": round(1e3 * elapsed, 2),
            }) + "\n")
    print(f"decoded {len(files) - failures} of {len(files)} frames ({frame_codec.loaded.label}) -> "
          f"{args.output_dir} (results.jsonl)")
    return 1 if failures else 0


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warn_random_weights("cloud-server", args)
    if args.input_dir is not None:
        return decode_folder(args)
    tls = load_server_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
    tokens = load_tokens(args.auth_tokens_file)
    missing = [name for name, on in (("TLS", tls is not None), ("bearer tokens", bool(tokens))) if not on]
    if missing and not _is_loopback(args.host):
        print(f"warning: cloud-server on {args.host} without {' and '.join(missing)}: whoever reaches the port "
              "can read or send frames (see the README's security section)", file=sys.stderr, flush=True)
    tasks = [Task.parse(name.strip()) for name in args.tasks.split(",") if name.strip()]
    codec = codec_options(args)
    codec.limits = dataclasses.replace(codec.limits, max_pixels=args.max_pixels)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.workers))
    config = ServerConfig(
        codec=codec, host=args.host, port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port, tasks=tasks,
        max_pending=args.max_pending, max_batch=args.max_batch, max_batch_wait=args.max_batch_wait_ms / 1e3,
        workers=args.workers, max_calls=args.max_calls, max_streams_per_connection=args.max_streams_per_connection,
        stream_idle_timeout=args.stream_idle_timeout, grace_seconds=args.grace, models=model_choices(args.model, tasks),
        model_options=model_options(args, score_threshold=args.score_threshold, min_size=args.detector_min_size),
        log_frames=args.log_frames,
        tls=tls, auth_tokens=tokens, max_connection_age=args.max_connection_age,
        max_connection_age_grace=args.max_connection_age_grace,
    )
    return asyncio.run(serve(config))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``cloud-server`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
