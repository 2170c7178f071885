"""Write the recipe tables of the shipped weight files from the metadata inside them.

    .venv/bin/python scripts/describe_weights.py            # rewrites shared/weights/README.md and
                                                            # shared/adapters/README.md

Each trained file records how it was made (data, λ, steps, crop, time, training images);
these READMEs are that metadata as tables, so they cannot drift from the files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent


def _metadata(path: Path) -> Dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def codec_table(folder: Path) -> List[str]:
    """One row per codec file: codec, quality, λ, steps, crop × batch, learning rate, start, time, data."""
    lines = ["| file | λ | steps | crop × batch | lr | started from | training time | final (training crops) | images | size |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.safetensors")):
        meta = _metadata(path)
        hours = float(meta.get("train_seconds", "nan")) / 3600
        lines.append(
            f"| `{path.name}` | {meta.get('lmbda')} | {meta.get('steps')} | {meta.get('crop')} × {meta.get('batch_size')} "
            f"| {meta.get('lr')} | {Path(meta['init_weights']).name if meta.get('init_weights') else 'scratch'} "
            f"| {hours:.2f} h ({meta.get('trained_on', '?')}, amp {meta.get('amp', 'none')}) "
            f"| {meta.get('final_bpp')} bpp, {meta.get('final_psnr')} dB | {meta.get('training_images_count')} "
            f"({meta.get('sources', meta.get('data', '?'))}) | {_size(path)} |")
    return lines


def adapter_table(folder: Path) -> List[str]:
    """One row per adapter file: codec, quality, task, task model, λ, steps, variant, images."""
    lines = ["| file | task | task model | λ | steps | variant | images | size |", "|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.safetensors")):
        meta = _metadata(path)
        images = len((meta.get("training_data") or "").split("\n"))
        variant = meta.get("variant", "sfma") + (" + importance" if meta.get("importance") == "True" else "") + \
            (" + prompts" if meta.get("prompts") == "True" else "")
        lines.append(f"| `{path.name}` | {meta.get('task') or meta.get('role')} | {meta.get('task_model', '–')} "
                     f"| {meta.get('lmbda', '–')} | {meta.get('steps')} | {variant} | {images} | {_size(path)} |")
    return lines


CODEC_HEAD = """# Shipped codec weights

Float16 safetensors, made by `icmh train-codec` on training images only (BSDS500 train, COCO-mini
train2017, the un-annotated COCO-mini val2017 images; never Kodak, the annotated COCO-mini val,
ImageNet-100 or sr-bench). Each file records its full recipe, the list of its training images and
its SHA-256 (`tests/test_weights.py` checks that none is an evaluation image).

* `mbt2018-mean-small-*`: the project's default codec (N=96, M=128), `scripts/train_codec_ladder.sh`
  (`make codec`): quality 2 from scratch, 3 and 1 fine-tuned from 2, 4 from 3, 5 from 4.
* `mbt2018-mean-tiny-*`: the fast test codec (N=64, M=96), `scripts/train_tiny_codec.sh`.

This table is generated from the files' metadata by `scripts/describe_weights.py`.
"""

ADAPTER_HEAD = """# Shipped adapters

SFMA adapters of `mbt2018-mean-small`, one file per quality and task, made by
`scripts/train_adapters.sh` (`make adapters`: `icmh train`, crops 192, batch 8, Adam 1e-3 ×0.1 at
60/90 %, bf16) against the real small task models of `../shared/models`, on training images only.
λ: `LAMBDA_PRESETS` of `icmh/training/adapters.py`. Loaded by default by `cloud-server`,
`edge-client`, `icmh encode/decode/eval` and the demo.

This table is generated from the files' metadata by `scripts/describe_weights.py`.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print instead of writing the READMEs")
    args = parser.parse_args()
    pages = {ROOT / "shared" / "weights" / "README.md": CODEC_HEAD + "\n" + "\n".join(codec_table(ROOT / "shared" / "weights")),
             ROOT / "shared" / "adapters" / "README.md": ADAPTER_HEAD + "\n" + "\n".join(adapter_table(ROOT / "shared" / "adapters"))}
    for path, text in pages.items():
        if args.print:
            print(text + "\n")
        else:
            path.write_text(text + "\n")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
