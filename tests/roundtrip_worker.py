"""Encoder / decoder worker for the cross-process exact-decoding test.

Run as a separate process by ``tests/test_exact_decoding.py``; never imported by pytest.

``encode``: ``torch.set_num_threads(--threads)`` and encode the images listed in
``--manifest`` ONE AT A TIME (batch 1). Writes ``frames/NNN.icmh``,
``encoder_y_hat.safetensors`` (the encoder's ``EncodedFrame.y_hat`` per image) and
``encoder.json`` (sizes, frame lengths, thread count, adapter hash).

``decode``: ``torch.set_num_threads(--threads)`` and decode every frame of ``--work``
in BATCHES: frames of the same image size go together, ``--batch`` at a time. Writes
``decoder_y_hat.safetensors`` (``DecodedFrame.y_hat``) and ``decoder.json`` (decoded
image shapes, batch sizes, thread count, adapter hash).

Both ends load the bundled ``mbt2018-mean-tiny`` quality 1 weights; for a task other
than ``human`` both add ``FrameCodec.add_random_adapters(task, seed=--adapter-seed)``,
so they hold the same adapters (and the same adapter hash). ``--encoder-path`` chooses
how the encoder runs ``g_a`` (eager, compiled, int8); the decoder is always the standard one.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import torch
from safetensors.torch import save_file

from icmh.codec.bitstream import parse_frame
from icmh.codec.frame_codec import FrameCodec
from icmh.images import load_image
from icmh.tasks import Task
from icmh.codec.weights import load_base_codec

CODEC = "mbt2018-mean-tiny"
QUALITY = 1


def open_codec(task: Task, adapter_seed: int, encoder_path: str = "eager") -> FrameCodec:
    frame_codec = FrameCodec(load_base_codec(CODEC, QUALITY), encoder_path=encoder_path)
    if task.uses_adapters:
        frame_codec.add_random_adapters(task, seed=adapter_seed)
    return frame_codec


def encode(args: argparse.Namespace) -> None:
    task = Task.parse(args.task)
    frame_codec = open_codec(task, args.adapter_seed, args.encoder_path)
    names = json.loads(Path(args.manifest).read_text())
    frames_dir = args.work / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    y_hats, entries = {}, []
    for i, path in enumerate(names):
        image = load_image(Path(path))
        frame = frame_codec.encode([image], task, keep_latents=True)[0]  # batch of one, on purpose
        key = f"{i:03d}"
        (frames_dir / f"{key}.icmh").write_bytes(frame.data)
        y_hats[key] = frame.y_hat.detach().cpu().contiguous().clone()
        entries.append({"key": key, "image": str(path), "height": int(image.shape[-2]),
                        "width": int(image.shape[-1]), "frame_bytes": len(frame.data)})
    save_file(y_hats, str(args.work / "encoder_y_hat.safetensors"))
    report = {"threads": torch.get_num_threads(), "task": task.value, "encoder_path": frame_codec.encoder_path,
              "adapter_hash": frame_codec.codec.adapter_hash(task).hex(), "images": entries}
    (args.work / "encoder.json").write_text(json.dumps(report, indent=1))


def decode(args: argparse.Namespace) -> None:
    task = Task.parse(args.task)
    frame_codec = open_codec(task, args.adapter_seed)
    paths = sorted((args.work / "frames").glob("*.icmh"))
    groups = defaultdict(list)
    for path in paths:
        data = path.read_bytes()
        header = parse_frame(data).header
        groups[(header.height, header.width)].append((path.stem, data))
    y_hats, shapes, batches = {}, {}, []
    for members in groups.values():
        for start in range(0, len(members), args.batch):
            chunk = members[start:start + args.batch]
            decoded = frame_codec.decode([data for _, data in chunk])
            batches.append(len(chunk))
            for (key, _), frame in zip(chunk, decoded):
                if frame.task is not task:
                    raise SystemExit(f"frame {key} decoded as task {frame.task.value}, expected {task.value}")
                y_hats[key] = frame.y_hat.detach().cpu().contiguous().clone()
                shapes[key] = list(frame.image.shape)
    save_file(y_hats, str(args.work / "decoder_y_hat.safetensors"))
    report = {"threads": torch.get_num_threads(), "task": task.value,
              "adapter_hash": frame_codec.codec.adapter_hash(task).hex(),
              "batches": batches, "shapes": shapes}
    (args.work / "decoder.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["encode", "decode"])
    parser.add_argument("--work", type=Path, required=True, help="folder shared by encoder and decoder")
    parser.add_argument("--task", default="human")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--manifest", help="JSON list of image paths (encode)")
    parser.add_argument("--batch", type=int, default=6, help="frames per decode call (decode)")
    parser.add_argument("--adapter-seed", type=int, default=0)
    parser.add_argument("--encoder-path", default="eager", help="how the encoder runs g_a (encode)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "encode":
        encode(args)
    else:
        decode(args)


if __name__ == "__main__":
    main()
