"""How often CompressAI's float32 path derives other CDF indexes on the decoder side.

Runs the stock float32 hyper-synthesis of a codec in two processes with different
thread counts (and batch sizes) on the same images, and counts the entropy-coding
indexes that differ between them; then does the same for this project's float64 path.
Any differing index makes the stock arithmetic decoder return garbage.

    .venv/bin/python benchmarks/naive_index_drift.py [--codec mbt2018-mean-tiny --quality 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(args: argparse.Namespace) -> None:
    """Compute both index sets for every Kodak image with the given threads / batch size."""
    import torch
    from safetensors.torch import save_file

    from icmh.images import load_image, pad_to_block
    from icmh.paths import default_data_dir
    from icmh.codec.weights import load_base_codec

    torch.set_num_threads(args.threads)
    loaded = load_base_codec(args.codec, args.quality, random_weights=args.random_weights)
    model = loaded.model
    from icmh.models.adapted import AdaptedCodec
    coder = AdaptedCodec(model, loaded.spec, args.quality).latent_coder
    files = sorted((default_data_dir() / "kodak").glob("*.png"))
    out = {}
    with torch.no_grad():
        images = [pad_to_block(load_image(p)[None]) for p in files]
        for start in range(0, len(images), args.batch):
            group = images[start:start + args.batch]
            shapes = {tuple(g.shape) for g in group}
            batches = [torch.cat([g for g in group if tuple(g.shape) == s]) for s in shapes]
            names = [[files[start + i].stem for i, g in enumerate(group) if tuple(g.shape) == s] for s in shapes]
            for batch, batch_names in zip(batches, names):
                z = model.h_a(model.g_a(batch))
                z_hat = model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(z), z.shape[-2:])
                naive = model.gaussian_conditional.build_indexes(model.h_s(z_hat).chunk(2, 1)[0])
                medians = coder.medians.view(1, -1, 1, 1)
                exact_z = torch.round(z.double() - medians) + medians
                exact = coder.scale_indexes(coder.h_s(exact_z).chunk(2, 1)[0])
                for i, name in enumerate(batch_names):
                    out[f"{name}.naive"] = naive[i].contiguous()
                    out[f"{name}.exact"] = exact[i].contiguous()
    save_file(out, args.out)


def main() -> None:
    """Run two workers and print the index drift of each path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codec", default="mbt2018-mean-tiny")
    parser.add_argument("--quality", type=int, default=1)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for threads, batch in ((1, 1), (2, 4)):
            out = f"{tmp}/t{threads}b{batch}.safetensors"
            cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--batch", str(batch),
                   "--codec", args.codec, "--quality", str(args.quality), "--out", out]
            subprocess.run(cmd + (["--random-weights"] if args.random_weights else []), check=True)
            runs[(threads, batch)] = load_file(out)
    a, b = runs[(1, 1)], runs[(2, 4)]
    report = {}
    for path in ("naive", "exact"):
        keys = [k for k in a if k.endswith("." + path)]
        diffs = {k.split(".")[0]: int((a[k] != b[k]).sum()) for k in keys}
        report[path] = {"images": len(keys), "images_with_drift": sum(1 for d in diffs.values() if d),
                        "indexes_differing": sum(diffs.values()),
                        "worst": sorted(((d, n) for n, d in diffs.items() if d), reverse=True)[:3]}
    print(f"{args.codec} q{args.quality}: encoder 1 thread batch 1 vs decoder 2 threads batch 4, Kodak")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
