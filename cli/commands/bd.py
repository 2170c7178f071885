"""``icmh bd ANCHOR.csv TEST.csv``: Bjøntegaard delta rate and delta metric of two curves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from icmh.evaluation.bjontegaard import DEFAULT_METHOD, METHODS, bd_metric, bd_rate, read_curve_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bd`` parser."""
    parser = subparsers.add_parser(
        "bd", help="Bjøntegaard delta rate and delta metric between two rate–metric curves",
        description="Compare a TEST curve with an ANCHOR curve. Each is a CSV file with a header naming the "
                    "columns bpp and metric (other columns are ignored) and one line per operating point. "
                    "BD-rate is the average rate difference at equal metric in percent (negative: TEST needs "
                    "fewer bits); BD-metric is the average metric difference at equal rate, TEST minus ANCHOR, "
                    "in the metric's unit (BD-PSNR, BD-accuracy, BD-mAP, ...). Both average over the range "
                    "the two curves share.",
    )
    parser.add_argument("anchor", type=Path, help="CSV of the anchor (reference) curve")
    parser.add_argument("test", type=Path, help="CSV of the test curve")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help="interpolation: 'cubic' = one cubic polynomial per curve (VCEG-M33, needs 4+ points), "
                             "'pchip' = piecewise cubic Hermite (JCT-VC/JVET CTC sheets, needs 2+ points) "
                             f"(default: {DEFAULT_METHOD})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print BD-rate and BD-metric of ``args.test`` against ``args.anchor``; returns 0."""
    anchor_rate, anchor_metric = read_curve_csv(args.anchor)
    test_rate, test_metric = read_curve_csv(args.test)
    rate = bd_rate(anchor_rate, anchor_metric, test_rate, test_metric, method=args.method)
    metric = bd_metric(anchor_rate, anchor_metric, test_rate, test_metric, method=args.method)
    if args.json:
        print(json.dumps({"anchor": str(args.anchor), "test": str(args.test), "method": args.method,
                          "bd_rate": rate, "bd_metric": metric}, indent=2))
        return 0
    print(f"anchor     {args.anchor}  ({anchor_rate.size} points)")
    print(f"test       {args.test}  ({test_rate.size} points)")
    print(f"method     {args.method}")
    print(f"BD-rate    {rate:+.4f} %  (negative: test needs fewer bits)")
    print(f"BD-metric  {metric:+.4f}    (test minus anchor, in metric units)")
    return 0
