"""``icmh info``: parameter counts and MACs per pixel of a codec and an adapter variant."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


import torch

from icmh.cli.common import positive_int
from icmh.codec.adapter_checkpoint import ROLE_TASK, read_adapters
from icmh.codec.bitstream import parse_frame
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.weights import load_base_codec
from icmh.errors import InvalidInputError
from icmh.images import load_image
from icmh.models.complexity import _module_macs
from icmh.models.importance import level_bits
from icmh.models.adapted import AdaptedCodec, AdapterConfig
from icmh.models.adapters import ADAPTER_VARIANTS
from icmh.models.complexity import measure
from icmh.models.registry import CODECS, get_codec
from icmh.seeding import seeded
from icmh.tasks import Task


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` parser."""
    parser = subparsers.add_parser(
        "info", help="parameter counts and MACs per pixel",
        description="Count the parameters of a base codec and of one task's adapters (three in g_a, "
                    "three in g_s), and the MACs per input pixel of each (convolutions and GDN; FFTs not counted). "
                    "Needs no weights.",
    )
    parser.add_argument("--codec", default="mbt2018-mean", choices=sorted(CODECS), help="base codec")
    parser.add_argument("--quality", type=positive_int, default=3, help="quality level (default: 3)")
    parser.add_argument("--adapter", default="sfma", choices=sorted(ADAPTER_VARIANTS), help="adapter variant")
    parser.add_argument("--mid-dim", type=positive_int, default=64, help="adapter bottleneck d (default: 64)")
    parser.add_argument("--decoder-position", default=None, help="where decoder adapters sit (codec default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--adapters", type=Path, metavar="FILE",
                        help="count the adapters of this checkpoint instead (codec, quality and variant from its "
                             "metadata), with its importance selector and task prompts if it has them")
    parser.add_argument("--image", type=Path, metavar="IMAGE",
                        help="with --adapters: measure the importance map's side information on IMAGE (loads the "
                             "base codec weights the file was trained on); else it is estimated from the level CDF")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the counts; returns 0."""
    if args.adapters is not None:
        return run_adapter_file(args)
    if args.image is not None:
        raise InvalidInputError("--image measures an adapter file's importance map: give --adapters too")
    spec = get_codec(args.codec)
    spec.check_quality(args.quality)
    base = seeded(0, lambda: spec.build(args.quality))
    codec = AdaptedCodec(base, spec, args.quality)
    config = AdapterConfig(args.adapter, args.mid_dim, "zero", args.decoder_position)
    adapter_set = codec.add_adapters(Task.DETECTION, config)
    result = measure(codec, Task.DETECTION)
    report = {"codec": spec.name, "quality": args.quality, "adapter": args.adapter, "mid_dim": args.mid_dim,
              "decoder_position": adapter_set.config.decoder_position, **asdict(result)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    share = 100 * result.adapter_params / result.base_params
    base, added = result.base_macs_per_pixel, result.adapter_macs_per_pixel
    print(f"{spec.name} quality {args.quality}, {args.adapter} adapters d={args.mid_dim} "
          f"(decoder: {adapter_set.config.decoder_position})")
    print(f"  base params      {result.base_params:>12,}")
    print(f"  adapter params   {result.adapter_params:>12,}  ({result.adapter_params / 1e6:.3f} M, {share:.1f} % of base)")
    print(f"  MACs per pixel   {'base':>12} {'adapters':>12}")
    print(f"    encoder (g_a)  {base['encoder']:>12,.1f} {added['encoder']:>12,.1f}")
    print(f"    decoder (g_s)  {base['decoder']:>12,.1f} {added['decoder']:>12,.1f}")
    print(f"    hyperprior     {base['hyper']:>12,.1f} {0:>12,.1f}")
    return 0


def run_adapter_file(args: argparse.Namespace) -> int:
    """``info --adapters FILE``: counts of one adapter checkpoint, its selector and prompts; returns 0.

    Raises :class:`InvalidInputError` for a file that is not an adapter checkpoint of one task.
    """
    meta, state = read_adapters(args.adapters)
    if meta.role != ROLE_TASK:
        raise InvalidInputError(f"{args.adapters} holds {meta.role} adapters; info --adapters counts one task's")
    spec = get_codec(meta.codec)
    task = Task.parse(meta.task)
    codec = AdaptedCodec(seeded(0, lambda: spec.build(meta.quality)), spec, meta.quality)
    adapter_set = codec.add_adapters(task, meta.config)
    adapter_set.load_state_dict(state, strict=True)
    result = measure(codec, task)
    selector, prompts = adapter_set.importance, adapter_set.prompts
    sfma = sum(p.numel() for name, p in adapter_set.named_parameters() if name.startswith(("encoder.", "decoder.")))
    report = {"adapters": str(args.adapters), "codec": spec.name, "quality": meta.quality, "task": task.value,
              "variant": meta.variant, "mid_dim": meta.mid_dim, "sfma_params": sfma,
              "encoder_macs_per_pixel": result.adapter_macs_per_pixel["encoder"],
              "decoder_macs_per_pixel": result.adapter_macs_per_pixel["decoder"],
              "importance": meta.importance, "prompts": meta.prompts}
    if prompts is not None:
        report["prompt_params"] = sum(p.numel() for p in prompts.parameters())
    if selector is not None:
        report["selector_params"] = selector.selector_parameters()
        report["selector_macs_per_pixel"] = _selector_macs_per_pixel(selector, spec.configs[meta.quality][-1])
        report.update(_side_information(args, selector, task, meta.codec, meta.quality))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.adapters}: {task.value} adapters for {spec.name} q{meta.quality}, {meta.variant} d={meta.mid_dim}")
    print(f"  SFMA params       {sfma:>10,}  (MACs per pixel: encoder {report['encoder_macs_per_pixel']:,.1f}, "
          f"decoder {report['decoder_macs_per_pixel']:,.1f})")
    if prompts is not None:
        print(f"  prompt params     {report['prompt_params']:>10,}  (per-channel scale and shift of ŷ)")
    if selector is not None:
        print(f"  selector params   {report['selector_params']:>10,}  (MACs per pixel: "
              f"{report['selector_macs_per_pixel']:,.2f})")
        if "side_info_bytes" in report:
            print(f"  side information  {report['side_info_bytes']:>10,} bytes on {args.image} "
                  f"({report['side_info_bpp']:.5f} bpp of {report['frame_bytes']:,} frame bytes)")
        print(f"  level CDF         entropy {report['level_entropy_bits']:.3f} bits per 64×64 block "
              f"({report['level_entropy_bits'] / 4096:.5f} bpp), at most {report['level_max_bits']:.2f} bits; "
              f"an all-zero map costs nothing")
    return 0


def _selector_macs_per_pixel(selector, latent_channels: int, size: int = 256) -> float:
    """MACs per input pixel of the importance selector (it runs on the H/16 latent)."""
    total = [0]
    handles = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + _module_macs(m, i, o)))
               for m in selector.net if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            selector.continuous_levels(torch.zeros(1, latent_channels, size // 16, size // 16))
    finally:
        for handle in handles:
            handle.remove()
    return total[0] / size ** 2


def _side_information(args: argparse.Namespace, selector, task: Task, codec: str, quality: int) -> dict:
    """The level CDF's entropy and, with ``--image``, the side information of one real frame."""
    bits = level_bits(selector.level_cdf)
    probs = torch.exp2(-bits)
    out = {"level_entropy_bits": float((probs * bits).sum() / probs.sum()), "level_max_bits": float(bits.max())}
    if args.image is not None:
        frame_codec = FrameCodec(load_base_codec(codec, quality))
        frame_codec.load_adapters(args.adapters, task)
        image = load_image(args.image)
        data = frame_codec.encode([image], task)[0].data
        frame = parse_frame(data, frame_codec.limits)
        side = len(frame.strings[-1]) if frame.header.importance else 0
        out.update(side_info_bytes=side, frame_bytes=len(data),
                   side_info_bpp=side * 8 / (frame.header.height * frame.header.width))
    return out

