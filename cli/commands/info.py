"""``icmh info``: parameter counts and MACs per pixel of a codec and an adapter variant."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

from icmh.cli.common import positive_int
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the counts; returns 0."""
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
