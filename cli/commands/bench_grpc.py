"""``icmh bench grpc``: per-frame latency through gRPC on loopback vs the same pipeline in process."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from typing import List

import grpc

from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.server import ServerConfig, build_pipeline
from icmh.cli.common import (add_codec_options, add_task_model_options, codec_options, model_choices, model_options,
                             positive_int, warn_random_weights)
from icmh.codec.loader import open_frame_codec
from icmh.errors import IcmhError
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc
from icmh.tasks import Task

from icmh.edge.sources import demo_frames


def register(benches: argparse._SubParsersAction) -> None:
    """Add the ``bench grpc`` parser."""
    parser = benches.add_parser(
        "grpc", help="gRPC loopback latency vs in-process, and fps with 1 and 4 streams",
        description="Encodes demo frames, runs them through the cloud pipeline in this process, then through a "
                    "cloud-server process on loopback (unary Infer, one at a time), and prints the latency ratio "
                    "(target <= 1.10) and the frames per second with 1 and 4 concurrent streams.",
    )
    parser.add_argument("--task", default="human", help="task to serve (default: human)")
    parser.add_argument("--frames", type=positive_int, default=12, help="frames per measurement (default 12)")
    parser.add_argument("--detector-min-size", type=positive_int, default=320)
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_task_model_options(parser)
    add_codec_options(parser, task_models=True)
    parser.set_defaults(func=run, codec="mbt2018-mean-tiny", quality=1)


def _start_server(args: argparse.Namespace, task: Task) -> tuple:
    cmd = [sys.executable, "-m", "icmh.cloud.cli", "--port", "0", "--metrics-port", "-1", "--tasks", task.value,
           "--codec", args.codec, "--quality", str(args.quality), "--detector-min-size", str(args.detector_min_size)]
    cmd += [f"--{flag.replace('_', '-')}" for flag in ("random_weights", "random_codec", "random_adapters",
                                                        "random_task_model") if getattr(args, flag)]
    cmd += [a for name in args.model for a in ("--model", name)]
    cmd += ["--models-dir", str(args.models_dir)] if args.models_dir else []
    cmd += [a for path in args.adapters for a in ("--adapters", str(path))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    raise IcmhError("cloud-server did not start for the benchmark")


async def _streams_fps(port: int, frames: List[bytes], streams: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        async def one_stream() -> int:
            requests = (pb.InferRequest(frame_id=i, bitstream=data) for i, data in enumerate(frames))
            return sum([1 async for _ in stub.StreamInfer(requests)])

        start = time.perf_counter()
        answered = sum(await asyncio.gather(*(one_stream() for _ in range(streams))))
        return answered / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures; returns 0."""
    task = Task.parse(args.task)
    warn_random_weights("bench grpc", args)
    options = codec_options(args)
    frames = [f.data for f in open_frame_codec(options, [task]).encode(list(demo_frames(args.frames)), task)]
    config = ServerConfig(codec=options, tasks=[task], models=model_choices(args.model, [task]),
                          model_options=model_options(args, score_threshold=0.5, min_size=args.detector_min_size))
    pipeline = build_pipeline(config, CloudMetrics())
    pipeline.run(0, frames[0])  # warm-up
    in_process = []
    for i, data in enumerate(frames):
        start = time.perf_counter()
        pipeline.run(i, data)
        in_process.append(time.perf_counter() - start)
    proc, port = _start_server(args, task)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            stub.Infer(pb.InferRequest(frame_id=0, bitstream=frames[0]))  # warm-up
            over_grpc = []
            for i, data in enumerate(frames):
                start = time.perf_counter()
                stub.Infer(pb.InferRequest(frame_id=i, bitstream=data))
                over_grpc.append(time.perf_counter() - start)
        fps = {n: asyncio.run(_streams_fps(port, frames, n)) for n in (1, 4)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    report = {"task": task.value, "codec": pipeline.frame_codec.loaded.label, "frames": len(frames),
              "frame_size": "640x360", "in_process_ms_p50": 1e3 * statistics.median(in_process),
              "grpc_ms_p50": 1e3 * statistics.median(over_grpc),
              "latency_ratio": statistics.median(over_grpc) / statistics.median(in_process),
              "fps_1_stream": fps[1], "fps_4_streams": fps[4]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['codec']}, task {task.value}, {len(frames)} demo frames 640×360, loopback")
    print(f"  per-frame latency p50: in process {report['in_process_ms_p50']:.1f} ms, "
          f"through gRPC {report['grpc_ms_p50']:.1f} ms, ratio {report['latency_ratio']:.3f} (target <= 1.10)")
    print(f"  throughput: {fps[1]:.2f} fps with 1 stream, {fps[4]:.2f} fps with 4 streams")
    return 0
