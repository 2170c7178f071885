"""``icmh bench``: ``codec`` (adapted vs base codec speed); ``grpc``, ``train`` and ``models`` live in their own modules."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from icmh.cli.common import add_codec_options, codec_options, warn_random_weights
from icmh.codec.loader import open_frame_codec
from icmh.images import load_image
from icmh.models.complexity import measure
from icmh.paths import default_data_dir
from icmh.tasks import Task

from icmh.cli.commands import bench_grpc, bench_models, bench_train

BENCH_SIZE = (512, 768)  # H, W of a landscape Kodak image


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` parser and its sub-commands."""
    parser = subparsers.add_parser("bench", help="benchmarks that print figures")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    codec = benches.add_parser(
        "codec", help="encode/decode time of the adapted codec vs the base codec",
        description="Times encode and decode of 768×512 images with the base codec (task human) and with "
                    "SFMA adapters (task detection), in one run, and prints the ratios and the MACs per pixel "
                    "that the adapters add. Images: landscape Kodak images under $ICMH_DATA_DIR, else synthetic.",
    )
    add_codec_options(codec)
    codec.add_argument("--images", type=int, default=4, help="number of images (default: 4)")
    codec.add_argument("--repeats", type=int, default=3, help="timed repeats per image (default: 3)")
    codec.add_argument("--data", type=Path, default=None, help="Kodak folder (default: $ICMH_DATA_DIR/kodak)")
    codec.add_argument("--json", action="store_true", help="print JSON")
    codec.set_defaults(func=run_codec)
    bench_grpc.register(benches)
    bench_train.register(benches)
    bench_models.register(benches)


def bench_images(folder: Path, count: int) -> List[torch.Tensor]:
    """``count`` 768×512 images: landscape Kodak images if ``folder`` has them, else smooth noise."""
    height, width = BENCH_SIZE
    images = [img for img in (load_image(p) for p in sorted(folder.glob("*.png"))) if img.shape[-2:] == BENCH_SIZE] \
        if folder.is_dir() else []
    generator = torch.Generator().manual_seed(0)
    while len(images) < count:
        noise = torch.rand(1, 3, height // 16, width // 16, generator=generator)
        images.append(F.interpolate(noise, size=BENCH_SIZE, mode="bicubic", align_corners=False)[0].clamp(0, 1))
    return images[:count]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_codec(args: argparse.Namespace) -> int:
    """Run the codec benchmark and print its figures; returns 0.

    Base and adapted runs alternate image by image and repeat by repeat, so that drift
    in machine load affects both alike; each figure is a median over repeats.
    """
    warn_random_weights("bench codec", args)
    frame_codec = open_frame_codec(codec_options(args))
    random_adapters = Task.DETECTION not in frame_codec.tasks
    if random_adapters:  # timing needs adapters, not trained ones
        frame_codec.add_random_adapters(Task.DETECTION, args.seed)
    images = bench_images(args.data or default_data_dir() / "kodak", args.images)
    tasks = (Task.HUMAN, Task.DETECTION)
    frames = {task: [frame_codec.encode([image], task)[0] for image in images] for task in tasks}  # warm-up
    enc: Dict[Task, List[float]] = {task: [] for task in tasks}
    dec: Dict[Task, List[float]] = {task: [] for task in tasks}
    for _ in range(args.repeats):
        for i, image in enumerate(images):
            for task in tasks:
                enc[task].append(_timed(lambda: frame_codec.encode([image], task)))
                dec[task].append(_timed(lambda: frame_codec.decode([frames[task][i].data])))
    results: Dict[str, Dict[str, float]] = {
        task.value: {"encode_ms": 1e3 * statistics.median(enc[task]), "decode_ms": 1e3 * statistics.median(dec[task]),
                     "bpp": statistics.mean(f.bpp for f in frames[task])}
        for task in tasks
    }
    complexity = measure(frame_codec.codec, Task.DETECTION)
    base, adapted = results[Task.HUMAN.value], results[Task.DETECTION.value]
    report = {
        "codec": frame_codec.loaded.label, "weights_pretrained": frame_codec.loaded.pretrained,
        "adapters": "random init (timing only)" if random_adapters else "from --adapters",
        "threads": torch.get_num_threads(), "device": str(frame_codec.device), "size": "768x512",
        "images": len(images), "base": base, "adapted": adapted,
        "encode_ratio": adapted["encode_ms"] / base["encode_ms"],
        "decode_ratio": adapted["decode_ms"] / base["decode_ms"],
        "base_macs_per_pixel": complexity.base_macs_per_pixel,
        "adapter_macs_per_pixel": complexity.adapter_macs_per_pixel,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    weights = "" if frame_codec.loaded.pretrained else "  [RANDOM WEIGHTS: bpp meaningless, timings of the transforms valid]"
    print(f"{report['codec']}, {report['images']} images 768×512, {report['threads']} threads, "
          f"{report['device']}{weights}")
    print(f"  adapters (task detection): {report['adapters']}")
    print(f"  {'':8}{'base':>12}{'adapted':>12}{'ratio':>8}")
    print(f"  {'encode':8}{base['encode_ms']:>10.1f}ms{adapted['encode_ms']:>10.1f}ms{report['encode_ratio']:>8.3f}")
    print(f"  {'decode':8}{base['decode_ms']:>10.1f}ms{adapted['decode_ms']:>10.1f}ms{report['decode_ratio']:>8.3f}")
    print(f"  {'bpp':8}{base['bpp']:>12.4f}{adapted['bpp']:>12.4f}")
    b, a = complexity.base_macs_per_pixel, complexity.adapter_macs_per_pixel
    print(f"  MACs/pixel: encoder {b['encoder'] / 1e3:.1f} K + {a['encoder'] / 1e3:.1f} K adapters, "
          f"decoder {b['decoder'] / 1e3:.1f} K + {a['decoder'] / 1e3:.1f} K adapters "
          f"(paper, Lu2022-TIC: 142.5 K + 14.7 K encoder)")
    return 0
