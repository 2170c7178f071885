"""``icmh bench serve``: the server under load, like Triton's perf_analyzer, against the in-process pipeline.

For each server configuration (``--configs``: batching, workers, threads) a ``cloud-server``
process starts on loopback; for each concurrency (``--streams``, default 1, 2, 4, 8) the
benchmark runs ``StreamInfer`` calls for a warm-up and then a measurement window of
``--seconds``, in one of two modes:

* ``closed`` loop: each stream sends its next frame as soon as its previous one is answered;
* ``rate``: each stream offers ``--rate`` frames per second (at most ``--window`` in flight).

It reports frames per second, p50 / p90 / p99 round trip, the server's and this process's
peak resident memory, and the throughput relative to running the same frames through the
pipeline in this process (one after another), measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

import grpc

from icmh.cli.common import add_codec_options, codec_options, positive_int, warn_random_weights
from icmh.cloud.metrics import CloudMetrics
from icmh.cloud.server import SERVER_LIMITS, ServerConfig, build_pipeline
from icmh.codec.loader import open_frame_codec
from icmh.edge.sources import demo_frames
from icmh.errors import IcmhError, InvalidInputError
from icmh.tasks import Task
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc

DEFAULT_CONFIGS = "batch=1,workers=1;batch=4,workers=1;batch=4,workers=2,threads=1"
CONFIG_FLAGS = {"batch": "--max-batch", "workers": "--workers", "threads": "--threads", "wait_ms": "--max-batch-wait-ms"}


def register(benches: argparse._SubParsersAction) -> None:
    """Add the ``bench serve`` parser."""
    parser = benches.add_parser(
        "serve", help="server throughput and latency under 1–8 concurrent streams, vs the in-process pipeline",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="detection", help="task to serve (default: detection)")
    parser.add_argument("--streams", default="1,2,4,8", help="concurrencies, comma-separated (default 1,2,4,8)")
    parser.add_argument("--mode", choices=("closed", "rate"), default="closed", help="load mode (default closed)")
    parser.add_argument("--rate", type=float, default=2.0, help="frames per second per stream in rate mode")
    parser.add_argument("--window", type=positive_int, default=4, help="frames in flight per stream in rate mode")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per point (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up before each window (default 3)")
    parser.add_argument("--frames", type=positive_int, default=8, help="distinct demo frames cycled (default 8)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"server configurations, ';'-separated, each of key=value among "
                             f"{', '.join(CONFIG_FLAGS)} (default {DEFAULT_CONFIGS!r})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_codec_options(parser)
    parser.set_defaults(func=run)


def _configs(text: str) -> List[Dict[str, str]]:
    configs = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        settings = dict(item.split("=", 1) for item in part.split(",") if "=" in item)
        unknown = set(settings) - set(CONFIG_FLAGS)
        if unknown or not settings:
            raise InvalidInputError(f"bad --configs entry {part!r} (keys: {', '.join(CONFIG_FLAGS)})")
        configs.append(settings)
    return configs


def _rss_mb(pid: int) -> float:
    """Peak resident memory of process ``pid`` in MB (Linux ``VmHWM``)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _start_server(args: argparse.Namespace, task: Task, settings: Dict[str, str]) -> tuple:
    cmd = [sys.executable, "-m", "icmh.cloud.cli", "--port", "0", "--metrics-port", "-1", "--tasks", task.value,
           "--codec", args.codec, "--max-pending", "64"]
    cmd += ["--quality", str(args.quality)] if args.quality else []
    cmd += [f"--{flag.replace('_', '-')}" for flag in ("random_weights", "random_codec", "random_adapters")
            if getattr(args, flag)]
    cmd += [a for path in args.adapters for a in ("--adapters", str(path))]
    for key, value in settings.items():
        cmd += [CONFIG_FLAGS[key], value]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    raise IcmhError("cloud-server did not start for the benchmark")


async def _load(port: int, frames: Sequence[bytes], streams: int, args: argparse.Namespace) -> Dict[str, float]:
    """One point of the sweep: warm up, then measure for ``args.seconds``."""
    trips: List[float] = []
    measuring = asyncio.Event()
    stop_at = [float("inf")]

    async def one_stream(stub, offset: int) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1 if args.mode == "closed" else args.window)
        sent_at: Dict[int, float] = {}

        async def requests():
            index = 0
            while time.monotonic() < stop_at[0]:
                await queue.put(None)  # a slot in the window
                sent_at[index] = time.perf_counter()
                yield pb.InferRequest(frame_id=index, bitstream=frames[(offset + index) % len(frames)])
                index += 1
                if args.mode == "rate":
                    await asyncio.sleep(1.0 / args.rate)

        async for response in stub.StreamInfer(requests()):
            queue.get_nowait()
            if measuring.is_set() and not response.HasField("error"):
                trips.append(time.perf_counter() - sent_at.pop(response.frame_id))
            else:
                sent_at.pop(response.frame_id, None)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        tasks = [asyncio.create_task(one_stream(stub, i)) for i in range(streams)]
        await asyncio.sleep(args.warmup)
        measuring.set()
        started = time.perf_counter()
        await asyncio.sleep(args.seconds)
        measuring.clear()
        elapsed = time.perf_counter() - started
        stop_at[0] = time.monotonic()
        await asyncio.gather(*tasks, return_exceptions=True)
    cuts = statistics.quantiles(trips, n=100) if len(trips) >= 2 else [float("nan")] * 99
    return {"streams": streams, "fps": len(trips) / elapsed, "p50_ms": 1e3 * cuts[49], "p90_ms": 1e3 * cuts[89],
            "p99_ms": 1e3 * cuts[98], "frames": len(trips)}


def run(args: argparse.Namespace) -> int:
    """Run the sweep and print it; returns 0."""
    task = Task.parse(args.task)
    streams = [int(n) for n in args.streams.split(",") if n.strip()]
    configs = _configs(args.configs)
    warn_random_weights("bench serve", args)
    options = codec_options(args)
    options.limits = SERVER_LIMITS
    frames = [f.data for f in open_frame_codec(options, [task]).encode(list(demo_frames(args.frames)), task)]
    pipeline = build_pipeline(ServerConfig(codec=options, tasks=[task]), CloudMetrics())
    pipeline.run(0, frames[0])  # warm-up
    started = time.perf_counter()
    for i, data in enumerate(frames):
        pipeline.run(i, data)
    in_process_fps = len(frames) / (time.perf_counter() - started)
    points = []
    for settings in configs:
        proc, port = _start_server(args, task, settings)
        try:
            for count in streams:
                point = asyncio.run(_load(port, frames, count, args))
                point.update(config=",".join(f"{k}={v}" for k, v in settings.items()), mode=args.mode,
                             server_rss_mb=_rss_mb(proc.pid), edge_rss_mb=_rss_mb(os.getpid()),
                             vs_in_process=point["fps"] / in_process_fps)
                points.append(point)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    report = {"task": task.value, "codec": pipeline.frame_codec.loaded.label, "model": pipeline.models[task].name,
              "frame": "demo 640×360", "in_process_fps": in_process_fps, "cpus": os.cpu_count(), "points": points}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['codec']}, task {task.value} ({report['model']}), {report['frame']} frames, {args.mode} loop, "
          f"{args.seconds:g} s windows, {report['cpus']} CPUs; in process: {in_process_fps:.2f} fps")
    print(f"  {'server config':<32}{'streams':>8}{'fps':>8}{'vs in-proc':>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'server MB':>10}{'edge MB':>9}")
    for p in points:
        print(f"  {p['config']:<32}{p['streams']:>8}{p['fps']:>8.2f}{p['vs_in_process']:>11.2f}{p['p50_ms']:>9.0f}"
              f"{p['p90_ms']:>9.0f}{p['p99_ms']:>9.0f}{p['server_rss_mb']:>10.0f}{p['edge_rss_mb']:>9.0f}")
    return 0
