"""Encode speed with freed memory kept in the process (the default) against returned to the system.

Runs alternating child processes, one with ``ICMH_KEEP_FREED_MEMORY=1`` and one with ``=0``
(see :mod:`icmh.memory`), each encoding smooth frames with the shipped codec: one 640×480
frame, a batch of two, one 1280×720 frame, for task ``human`` (no adapters) and ``detection``
(SFMA adapters), in the main thread and in a worker thread as the edge client does. Prints
the median milliseconds, the kernel time and the page faults per call, each process's peak
memory, and the speed-up (returned / kept) per row, from the medians over the pairs.

    python benchmarks/freed_memory.py [--pairs 3] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List

SIZES = {"640x480": [(480, 640)], "2x640x480": [(480, 640), (480, 640)], "1280x720": [(720, 1280)]}


def child(repeats: int, threads: int) -> Dict[str, object]:
    """Time every row in this process (started like a command, so the setting applies)."""
    import torch

    from icmh.cli.commands.bench import smooth_frame
    from icmh.codec.loader import CodecOptions, open_frame_codec
    from icmh.memory import keep_freed_memory
    from icmh.tasks import Task

    kept = keep_freed_memory()
    torch.set_num_threads(threads)
    frame_codec = open_frame_codec(CodecOptions())
    generator = torch.Generator().manual_seed(0)
    frames = {name: [smooth_frame(size, generator) for size in sizes] for name, sizes in SIZES.items()}
    worker = ThreadPoolExecutor(1)
    rows: Dict[str, Dict[str, float]] = {}
    for task in (Task.HUMAN, Task.DETECTION):
        for name, batch in frames.items():
            encode = lambda b=batch, t=task: frame_codec.encode(b, t)
            rows[f"{task.value} {name}"] = measure(encode, repeats)
        hd = frames["1280x720"]
        rows[f"{task.value} 1280x720 in a thread"] = measure(
            lambda t=task: worker.submit(frame_codec.encode, hd, t).result(), repeats)
    return {"kept": kept, "rows": rows, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(call: Callable[[], object], repeats: int) -> Dict[str, float]:
    """Median milliseconds, kernel milliseconds and minor page faults of ``call`` after three warm-up calls."""
    for _ in range(3):
        call()
    wall, kernel, faults = [], [], []
    for _ in range(repeats):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        call()
        wall.append(1e3 * (time.perf_counter() - start))
        after = resource.getrusage(resource.RUSAGE_SELF)
        kernel.append(1e3 * (after.ru_stime - before.ru_stime))
        faults.append(after.ru_minflt - before.ru_minflt)
    return {"ms": statistics.median(wall), "kernel_ms": statistics.median(kernel), "faults": statistics.median(faults)}


def run_child(keep: bool, args: argparse.Namespace) -> Dict[str, object]:
    """One child process with the setting on or off; its figures."""
    env = {**os.environ, "ICMH_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats),
                          "--threads", str(args.threads)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    """Parse the options, run the alternating children and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs of processes (default: 3)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per row and process (default: 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.repeats, args.threads)))
        return 0
    runs: Dict[bool, List[Dict[str, object]]] = {True: [], False: []}
    for pair in range(args.pairs):
        for keep in (True, False):
            runs[keep].append(run_child(keep, args))
            print(f"pair {pair + 1}/{args.pairs}: {'kept' if keep else 'returned'} done", file=sys.stderr)
    if not runs[True][0]["kept"]:
        print("note: this C library is not glibc; both settings ran the same", file=sys.stderr)
    print(f"{'encode':34}{'returned':>10}{'kept':>10}{'speed-up':>10}  kernel ms / page faults per call")
    for row in runs[True][0]["rows"]:
        ms = {keep: statistics.median(r["rows"][row]["ms"] for r in runs[keep]) for keep in runs}
        detail = {keep: (statistics.median(r["rows"][row]["kernel_ms"] for r in runs[keep]),
                         statistics.median(r["rows"][row]["faults"] for r in runs[keep])) for keep in runs}
        print(f"{row:34}{ms[False]:>8.0f}ms{ms[True]:>8.0f}ms{ms[False] / ms[True]:>9.2f}×  "
              f"{detail[False][0]:.0f} / {detail[False][1]:.0f} → {detail[True][0]:.0f} / {detail[True][1]:.0f}")
    peaks = {keep: statistics.median(r["peak_mb"] for r in runs[keep]) for keep in runs}
    print(f"peak memory per process: returned {peaks[False]:.0f} MB, kept {peaks[True]:.0f} MB "
          f"({peaks[True] / peaks[False]:.2f}×)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
