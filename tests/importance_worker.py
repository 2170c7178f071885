"""Encoder / decoder worker for the cross-process test of importance-map frames.

Run as a separate process by ``tests/test_importance.py``; never imported by pytest.

Both ends load the bundled ``mbt2018-mean-tiny`` quality 1 weights and give task
``detection`` seeded random adapters with an importance selector and task prompts whose
weights are made non-zero from the same seed (so the selector picks several levels and the
prompts change ``ŷ``). ``encode`` (``--threads`` threads) encodes every image of
``--manifest`` one at a time and writes ``frames/NNN.icmh`` and ``encoder.safetensors``
(``ŷ`` per frame as the encoder quantised it, and the image this process decodes from it);
``decode`` decodes every frame in one batch per image size and writes ``decoder.safetensors``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from icmh.codec.frame_codec import FrameCodec
from icmh.codec.weights import load_base_codec
from icmh.images import load_image
from icmh.models.adapted import AdapterConfig
from icmh.seeding import seeded
from icmh.tasks import Task

TASK = Task.DETECTION


def open_codec(seed: int) -> FrameCodec:
    """The tiny codec with seeded adapters, a seeded non-zero selector and seeded prompts."""
    frame_codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1))
    frame_codec.add_random_adapters(TASK, seed=seed, config=AdapterConfig(init="authors", importance=True,
                                                                            prompts=True))
    adapter_set = frame_codec.codec.adapter_set(TASK)

    def perturb() -> None:
        with torch.no_grad():
            last = adapter_set.importance.net[-1]
            last.weight.normal_(0.0, 0.3)
            last.bias.fill_(0.1)
            adapter_set.prompts.scale.normal_(0.0, 0.05)
            adapter_set.prompts.shift.normal_(0.0, 0.05)

    seeded(seed + 77, perturb)
    return frame_codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["encode", "decode"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--manifest")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame_codec = open_codec(args.seed)
    frames_dir = args.work / "frames"
    out = {}
    if args.mode == "encode":
        frames_dir.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(json.loads(Path(args.manifest).read_text())):
            frame = frame_codec.encode([load_image(Path(path))], TASK, keep_latents=True)[0]
            (frames_dir / f"{i:03d}.icmh").write_bytes(frame.data)
            out[f"y_hat_{i:03d}"] = frame.y_hat.contiguous().clone()
            out[f"image_{i:03d}"] = frame_codec.decode([frame.data])[0].image.contiguous().clone()
    else:
        paths = sorted(frames_dir.glob("*.icmh"))
        decoded = frame_codec.decode([p.read_bytes() for p in paths])
        for path, frame in zip(paths, decoded):
            out[f"y_hat_{path.stem}"] = frame.y_hat.contiguous().clone()
            out[f"image_{path.stem}"] = frame.image.contiguous().clone()
    save_file(out, str(args.work / f"{args.mode}r.safetensors"))


if __name__ == "__main__":
    main()
