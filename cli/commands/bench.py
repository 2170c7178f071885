"""``icmh bench``: ``codec`` (encoder paths vs stock CompressAI); ``grpc``, ``train`` and ``models`` live in their own modules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from icmh.cli.common import add_codec_options, codec_options, positive_int, warn_random_weights
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.loader import open_frame_codec
from icmh.codec.weights import load_base_codec
from icmh.images import load_image, pad_to_block
from icmh.models.complexity import measure
from icmh.models.encoder_paths import EAGER, ENCODER_PATHS, check_encoder_path
from icmh.models.registry import get_codec
from icmh.paths import default_data_dir
from icmh.tasks import Task

from icmh.cli.commands import bench_models, bench_serve, bench_train, bench_universal
from icmh.cli.commands.bench_floor import adapter_fft_ms, adapter_floor_ms
from icmh.cli.commands.timing import Runs, time_interleaved

BENCH_SIZE = (512, 768)  # H, W of a landscape Kodak image
FPS_SIZES = {"640x480": (480, 640), "1280x720": (720, 1280)}
MATMUL_SIZE = 2048
ADAPTED = Task.DETECTION  # the task whose (trained or random) adapters are timed


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` parser and its sub-commands."""
    parser = subparsers.add_parser("bench", help="benchmarks that print figures")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    codec = benches.add_parser(
        "codec", help="encode/decode speed: stock CompressAI, the base path, adapters, compiled and int8 encoders",
        description="Times, in one run, stock CompressAI compress/decompress of the base model, this project's base "
                    "path (task human), the path with SFMA adapters (task detection) and the compiled and int8 "
                    "encoder paths (with and without adapters) on 768×512 images, their frames per second at "
                    "640×480 and 1280×720, and the analysis transform's GMAC/s against a 2048×2048 float32 "
                    "matrix multiply measured in the same run, and the adapters' floor: their MACs at that rate "
                    "plus their FFT pairs timed alone, on top of the base path. Images: landscape Kodak images under "
                    "$ICMH_DATA_DIR, else synthetic. Runs alternate repeat by repeat; figures are medians.",
    )
    add_codec_options(codec)
    codec.add_argument("--images", type=positive_int, default=2, help="number of 768×512 images (default: 2)")
    codec.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per image (default: 3)")
    codec.add_argument("--data", type=Path, default=None, help="Kodak folder (default: $ICMH_DATA_DIR/kodak)")
    codec.add_argument("--paths", default=",".join(ENCODER_PATHS),
                       help=f"encoder paths to time, comma-separated (default: {','.join(ENCODER_PATHS)})")
    codec.add_argument("--json", action="store_true", help="print JSON")
    codec.set_defaults(func=run_codec)
    bench_serve.register(benches)
    bench_train.register(benches)
    bench_models.register(benches)
    bench_universal.register(benches)


def bench_images(folder: Path, count: int) -> List[torch.Tensor]:
    """``count`` 768×512 images: landscape Kodak images if ``folder`` has them, else smooth noise."""
    images = [img for img in (load_image(p) for p in sorted(folder.glob("*.png"))) if img.shape[-2:] == BENCH_SIZE] \
        if folder.is_dir() else []
    generator = torch.Generator().manual_seed(0)
    while len(images) < count:
        images.append(smooth_frame(BENCH_SIZE, generator))
    return images[:count]


def smooth_frame(size: Tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A 3×H×W image of smooth noise (``size`` = (H, W))."""
    noise = torch.rand(1, 3, size[0] // 16, size[1] // 16, generator=generator)
    return F.interpolate(noise, size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def matmul_rates(repeats: int) -> Dict[str, float]:
    """GMAC/s of a 2048×2048 float32 matrix multiply: PyTorch's and (if installed) ONNX Runtime's."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    runs: Runs = {"torch": lambda: a @ b}
    try:
        runs["onnxruntime"] = _ort_matmul(a.numpy(), b.numpy())
    except ImportError:
        pass
    return {name: MATMUL_SIZE ** 3 / ms / 1e6 for name, ms in time_interleaved(runs, repeats).items()}


def _ort_matmul(a, b) -> Callable[[], object]:
    import onnxruntime  # noqa: F401  (ImportError: not installed)
    from onnx import TensorProto, helper, numpy_helper

    from icmh.models.encoder_paths import ort_session

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort_session(model.SerializeToString(), torch.get_num_threads())
    return lambda: session.run(None, {"a": a})


@dataclass
class Coders:
    """What one run times: stock CompressAI on its own copy of the base model, and a frame codec per encoder path."""

    stock: torch.nn.Module
    codecs: Dict[str, FrameCodec]
    random_adapters: bool

    @property
    def decoder(self) -> FrameCodec:
        """The standard decoder (every path's frames decode with it)."""
        return self.codecs.get(EAGER) or next(iter(self.codecs.values()))


def open_coders(args: argparse.Namespace, paths: Sequence[str]) -> Coders:
    """Stock model and frame codecs for ``paths``, all with the same (trained or seeded random) adapters."""
    base_options = codec_options(args)
    stock = load_base_codec(base_options.codec, base_options.quality or get_codec(base_options.codec).default_quality,
                            weights=base_options.codec_weights, random_weights=base_options.random_codec,
                            seed=base_options.seed).model.eval()
    codecs, random_adapters = {}, False
    for path in paths:
        frame_codec = open_frame_codec(dataclasses.replace(base_options, encoder_path=path))
        if ADAPTED not in frame_codec.tasks:  # timing needs adapters, not trained ones
            frame_codec.add_random_adapters(ADAPTED, args.seed)
            random_adapters = True
        codecs[path] = frame_codec
    return Coders(stock, codecs, random_adapters)


def time_codecs(coders: Coders, images: Sequence[torch.Tensor], repeats: int) -> Dict[str, Dict[str, float]]:
    """Encode and decode milliseconds (median over images and repeats) and bpp of stock and every path × task."""
    rows = ["stock"] + [f"{path}/{task.value}" for path in coders.codecs for task in (Task.HUMAN, ADAPTED)]
    times: Dict[str, Dict[str, List[float]]] = {row: {"encode_ms": [], "decode_ms": []} for row in rows}
    bpp: Dict[str, List[float]] = {row: [] for row in rows}
    for image in images:
        encoders, decoders = _per_image_runs(coders, image, bpp)
        for name, ms in time_interleaved(encoders, repeats).items():
            times[name]["encode_ms"].append(ms)
        for name, ms in time_interleaved(decoders, repeats).items():
            times[name]["decode_ms"].append(ms)
    return {row: {key: statistics.median(values) for key, values in times[row].items()}
            | {"bpp": statistics.mean(bpp[row])} for row in rows}


def _per_image_runs(coders: Coders, image: torch.Tensor, bpp: Dict[str, List[float]]) -> Tuple[Runs, Runs]:
    """The encode and decode calls to time for ``image`` (stock and every path × task); appends each row's bpp."""
    x = pad_to_block(image[None])
    pixels = image.shape[-1] * image.shape[-2]
    with torch.no_grad():
        stock = coders.stock.compress(x)
    bpp["stock"].append(8 * sum(len(s[0]) for s in stock["strings"]) / pixels)
    encoders = {"stock": lambda: coders.stock.compress(x)}
    decoders = {"stock": lambda: coders.stock.decompress(stock["strings"], stock["shape"])}
    for path, frame_codec in coders.codecs.items():
        for task in (Task.HUMAN, ADAPTED):
            name = f"{path}/{task.value}"
            frame = frame_codec.encode([image], task)[0]
            bpp[name].append(frame.bpp)
            encoders[name] = lambda f=frame_codec, t=task: f.encode([image], t)
            decoders[name] = lambda d=frame.data: coders.decoder.decode([d])
    return encoders, decoders


def time_analysis(coders: Coders, image: torch.Tensor, repeats: int) -> Dict[str, float]:
    """Milliseconds of the analysis transform ``g_a`` alone, per path × task."""
    x = pad_to_block(image[None]).contiguous(memory_format=torch.channels_last)
    runs = {}
    for path, frame_codec in coders.codecs.items():
        for task in (Task.HUMAN, ADAPTED):
            runs[f"{path}/{task.value}"] = lambda f=frame_codec, t=task: _analysis_once(f, t, x)
    return time_interleaved(runs, repeats)


@torch.no_grad()
def _analysis_once(frame_codec: FrameCodec, task: Task, x: torch.Tensor) -> torch.Tensor:
    with frame_codec.codec.use(task):  # the eager path's hooks apply the selected task's adapters
        return frame_codec.analysis(task)(x)


def frames_per_second(coders: Coders, repeats: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Encode and decode frames per second of every path × task at each of :data:`FPS_SIZES`."""
    out = {}
    generator = torch.Generator().manual_seed(1)
    for label, size in FPS_SIZES.items():
        timed = time_codecs(coders, [smooth_frame(size, generator)], repeats)
        out[label] = {row: {"encode_fps": 1e3 / t["encode_ms"], "decode_fps": 1e3 / t["decode_ms"]}
                      for row, t in timed.items()}
    return out


CAMERAS = 2  # cameras of the multi-camera row: frames of one size, encoded as one batch or one by one


def camera_batching(coders: Coders, repeats: int) -> Dict[str, float]:
    """Milliseconds to encode one 640×480 frame from each of :data:`CAMERAS` cameras (eager path,
    adapted task) in one batched call, as ``edge-client --camera 0 --camera 1`` does, and one
    frame after the other; ``speedup`` is the second over the first."""
    generator = torch.Generator().manual_seed(2)
    frames = [smooth_frame(FPS_SIZES["640x480"], generator) for _ in range(CAMERAS)]
    frame_codec = coders.decoder
    times = time_interleaved({"batched_ms": lambda: frame_codec.encode(frames, ADAPTED),
                              "one_by_one_ms": lambda: [frame_codec.encode([f], ADAPTED) for f in frames]}, repeats)
    return {"cameras": CAMERAS, **times, "speedup": times["one_by_one_ms"] / times["batched_ms"]}


def run_codec(args: argparse.Namespace) -> int:
    """Run the codec benchmark and print its figures (or JSON); returns 0.

    Raises :class:`~icmh.errors.InvalidInputError` for an unknown encoder path in ``--paths``.
    """
    warn_random_weights("bench codec", args)
    paths = [check_encoder_path(p.strip()) for p in args.paths.split(",") if p.strip()]
    coders = open_coders(args, [EAGER] + [p for p in paths if p != EAGER])
    images = bench_images(args.data or default_data_dir() / "kodak", args.images)
    rates = matmul_rates(args.repeats)
    codec_times = time_codecs(coders, images, args.repeats)
    analysis = time_analysis(coders, images[0], args.repeats)
    fps = frames_per_second(coders, args.repeats)
    fft_ms = adapter_fft_ms(coders.decoder, ADAPTED, images[0], args.repeats)
    report = build_report(args, coders, images, rates, codec_times, analysis, fps, fft_ms)
    report["camera_batching"] = camera_batching(coders, args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def build_report(args, coders: Coders, images, rates, codec_times, analysis, fps, fft_ms) -> Dict[str, object]:
    """The figures of one run as a JSON-ready dict (ratios computed within the run)."""
    decoder = coders.decoder
    complexity = measure(decoder.codec, ADAPTED)
    pixels = images[0].shape[-1] * images[0].shape[-2]
    macs = {Task.HUMAN.value: complexity.base_macs_per_pixel["encoder"] * pixels}
    macs[ADAPTED.value] = macs[Task.HUMAN.value] + complexity.adapter_macs_per_pixel["encoder"] * pixels
    reference = max(rates.values())
    g_a = {row: {"ms": ms, "gmac_per_s": macs[row.split("/")[1]] / ms / 1e6,
                 "of_matmul": macs[row.split("/")[1]] / ms / 1e6 / reference} for row, ms in analysis.items()}
    stock, base, adapted = (codec_times[k] for k in ("stock", f"{EAGER}/human", f"{EAGER}/{ADAPTED.value}"))
    # the adapters' MACs at the measured matmul rate and their FFTs: no implementation adds less time than that
    floor = adapter_floor_ms(complexity.adapter_macs_per_pixel, pixels, reference, fft_ms)
    return {
        "codec": decoder.loaded.label, "weights_pretrained": decoder.loaded.pretrained,
        "adapters": "random init (timing only)" if coders.random_adapters else "trained",
        "threads": torch.get_num_threads(), "size": f"{BENCH_SIZE[1]}x{BENCH_SIZE[0]}", "images": len(images),
        "repeats": args.repeats, "codec_ms": codec_times,
        "ratios": {"base_vs_stock_encode": base["encode_ms"] / stock["encode_ms"],
                   "base_vs_stock_decode": base["decode_ms"] / stock["decode_ms"],
                   "adapters_vs_base_encode": adapted["encode_ms"] / base["encode_ms"],
                   "adapters_vs_base_decode": adapted["decode_ms"] / base["decode_ms"],
                   "adapters_floor_encode": 1 + floor["encoder"]["ms"] / base["encode_ms"],
                   "adapters_floor_decode": 1 + floor["decoder"]["ms"] / base["decode_ms"],
                   **{f"{row.split('/')[0]}_speedup_g_a_{row.split('/')[1]}":
                      analysis[f"{EAGER}/{row.split('/')[1]}"] / ms for row, ms in analysis.items()}},
        "analysis_transform": g_a, "matmul_gmac_per_s": rates,
        "encoder_macs_per_pixel": {"base": complexity.base_macs_per_pixel["encoder"],
                                   "adapters": complexity.adapter_macs_per_pixel["encoder"]},
        "adapter_floor_ms": floor, "fps": fps,
    }


def print_report(report: Dict[str, object]) -> None:
    """Print ``report`` as tables."""
    weights = "" if report["weights_pretrained"] else "  [RANDOM WEIGHTS: bpp meaningless, timings valid]"
    print(f"{report['codec']}, {report['images']} images {report['size']}, {report['threads']} threads, "
          f"{report['repeats']} repeats{weights}")
    print(f"  adapters (task {ADAPTED.value}): {report['adapters']}")
    print(f"  {'':22}{'encode':>10}{'decode':>10}{'bpp':>8}")
    for row, t in report["codec_ms"].items():
        print(f"  {row:22}{t['encode_ms']:>8.0f}ms{t['decode_ms']:>8.0f}ms{t['bpp']:>8.4f}")
    print("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in report["ratios"].items()))
    rates = ", ".join(f"{k} {v:.1f}" for k, v in report["matmul_gmac_per_s"].items())
    print(f"  analysis transform g_a (matmul {MATMUL_SIZE}² float32: {rates} GMAC/s):")
    for row, g in report["analysis_transform"].items():
        print(f"    {row:20}{g['ms']:>8.0f}ms{g['gmac_per_s']:>8.1f} GMAC/s {100 * g['of_matmul']:>5.0f}% of matmul")
    for label, rows in report["fps"].items():
        print(f"  frames/s at {label}: " + ", ".join(
            f"{row} {r['encode_fps']:.2f}/{r['decode_fps']:.2f}" for row, r in rows.items()) + "  (encode/decode)")
    cameras = report["camera_batching"]
    print(f"  {cameras['cameras']} cameras at 640x480 ({EAGER}/{ADAPTED.value}): one batch {cameras['batched_ms']:.0f} ms, "
          f"one by one {cameras['one_by_one_ms']:.0f} ms, speedup {cameras['speedup']:.2f}")
    macs = report["encoder_macs_per_pixel"]
    print(f"  encoder MACs/pixel: {macs['base'] / 1e3:.1f} K + {macs['adapters'] / 1e3:.1f} K adapters "
          f"(paper, Lu2022-TIC: 142.5 K + 14.7 K)")
    ratios, floor = report["ratios"], report["adapter_floor_ms"]
    print(f"  adapters' floor on this CPU (their MACs at the matmul rate + their FFT pairs alone, added to the base "
          f"path): {ratios['adapters_floor_encode']:.2f} encode, {ratios['adapters_floor_decode']:.2f} decode")
    print("    " + ", ".join(f"{side} {f['macs_ms']:.0f} ms MACs + {f['fft_ms']:.0f} ms FFTs" for side, f in floor.items()))
