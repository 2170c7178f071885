"""Exact decoding across processes, thread counts and batch sizes (real codec, real images).

The encoder runs in one process with one thread and encodes every image on its own;
the decoder runs in another process with two threads and decodes same-size frames in
batches. Both ends use the bundled, trained ``mbt2018-mean-tiny`` quality 1 codec
(task ``human``, and task ``detection`` with seeded random adapters made the same way
on both ends). The latent the decoder reconstructs must be bit-identical to the one the
encoder quantised, for every image. Without the Kodak images these tests skip and say so.
(Frames with an altered index check are in ``test_malformed_frames.py``.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent

from icmh.codec.weights import BUNDLED_DIR

WORKER = Path(__file__).resolve().parent / "roundtrip_worker.py"
TINY = ("mbt2018-mean-tiny", 1)
TINY_WEIGHTS = BUNDLED_DIR / "mbt2018-mean-tiny-1.safetensors"
ENCODER_THREADS = 1
DECODER_THREADS = 2
DECODE_BATCH = 6
DETECTION_PER_ORIENTATION = 3  # detection: 3 landscape + 3 portrait Kodak images
WORKER_TIMEOUT_S = 300
TASKS = ("human", "detection")


def require_tiny_weights() -> None:
    if not TINY_WEIGHTS.is_file():
        pytest.fail(f"bundled weights {TINY_WEIGHTS} are missing (rebuild them with 'icmh train-codec "
                    f"--codec mbt2018-mean-tiny --out {TINY_WEIGHTS}')")


def pick_per_orientation(paths: List[Path], per_orientation: int) -> List[Path]:
    landscape, portrait = [], []
    for path in paths:
        with Image.open(path) as image:
            (landscape if image.width >= image.height else portrait).append(path)
    return landscape[:per_orientation] + portrait[:per_orientation]


def run_worker(args: List[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_all(procs: Dict[str, subprocess.Popen]) -> None:
    failures = []
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            failures.append(f"{name}: timed out after {WORKER_TIMEOUT_S} s")
            continue
        if proc.returncode != 0:
            failures.append(f"{name}: exit {proc.returncode}\n{out}\n{err}")
    if failures:
        pytest.fail("worker process failed:\n" + "\n".join(failures))


@pytest.fixture(scope="module")
def image_set(kodak_dir) -> Dict[str, List[Path]]:
    """The 24 Kodak images (task human) and 3 landscape + 3 portrait ones (task detection)."""
    images = sorted(kodak_dir.glob("kodim*.png"))
    assert [p.name for p in images] == [f"kodim{i:02d}.png" for i in range(1, 25)]
    return {"human": images, "detection": pick_per_orientation(images, DETECTION_PER_ORIENTATION)}


@pytest.fixture(scope="module")
def round_trips(image_set, tmp_path_factory) -> Dict[str, Dict[str, object]]:
    """Encode (1 thread, batch 1) in one process, decode (2 threads, batches) in another.

    Both tasks run side by side: first the two encoders, then the two decoders.
    """
    require_tiny_weights()
    work = {task: tmp_path_factory.mktemp(f"roundtrip-{task}") for task in TASKS}
    for task in TASKS:
        manifest = work[task] / "manifest.json"
        manifest.write_text(json.dumps([str(p) for p in image_set[task]]))
    wait_all({f"encode {task}": run_worker(["encode", "--work", str(work[task]), "--task", task,
                                            "--threads", str(ENCODER_THREADS),
                                            "--manifest", str(work[task] / "manifest.json")])
              for task in TASKS})
    wait_all({f"decode {task}": run_worker(["decode", "--work", str(work[task]), "--task", task,
                                            "--threads", str(DECODER_THREADS), "--batch", str(DECODE_BATCH)])
              for task in TASKS})
    results = {}
    for task in TASKS:
        results[task] = {
            "images": image_set[task],
            "encoder": json.loads((work[task] / "encoder.json").read_text()),
            "decoder": json.loads((work[task] / "decoder.json").read_text()),
            "encoder_y_hat": load_file(str(work[task] / "encoder_y_hat.safetensors")),
            "decoder_y_hat": load_file(str(work[task] / "decoder_y_hat.safetensors")),
        }
    return results


@pytest.mark.parametrize("task", TASKS)
def test_decoder_process_reconstructs_encoder_latent_bit_exactly_for_every_image(round_trips, task):
    result = round_trips[task]
    encoder_y, decoder_y = result["encoder_y_hat"], result["decoder_y_hat"]
    assert len(encoder_y) == len(result["images"]) > 0
    assert sorted(decoder_y) == sorted(encoder_y), "the decoder did not decode every frame"
    mismatched = []
    for key, expected in encoder_y.items():
        actual = decoder_y[key]
        if actual.dtype != expected.dtype or actual.shape != expected.shape or not torch.equal(actual, expected):
            diff = (actual.double() - expected.double()).abs().max().item() if actual.shape == expected.shape else None
            mismatched.append(f"{key} ({result['encoder']['images'][int(key)]['image']}): max diff {diff}")
    assert not mismatched, f"task {task}: decoder ŷ differs from encoder ŷ for: {mismatched}"
    # ŷ of a real image is a real latent: not all zero, no NaN.
    for key, y_hat in encoder_y.items():
        assert torch.isfinite(y_hat).all() and y_hat.abs().sum() > 0, key


@pytest.mark.parametrize("task", TASKS)
def test_decoded_images_have_the_original_sizes(round_trips, task):
    result = round_trips[task]
    shapes = result["decoder"]["shapes"]
    for entry in result["encoder"]["images"]:
        with Image.open(entry["image"]) as image:
            width, height = image.size
        assert (entry["height"], entry["width"]) == (height, width)
        assert shapes[entry["key"]] == [3, height, width], entry["image"]


@pytest.mark.parametrize("task", TASKS)
def test_encoder_ran_single_threaded_one_image_at_a_time_and_decoder_batched_with_two_threads(round_trips, task):
    encoder, decoder = round_trips[task]["encoder"], round_trips[task]["decoder"]
    assert encoder["threads"] == ENCODER_THREADS
    assert decoder["threads"] == DECODER_THREADS
    assert sum(decoder["batches"]) == len(encoder["images"])
    assert max(decoder["batches"]) >= 3, f"decoder batches {decoder['batches']}: no real batching happened"
    assert encoder["task"] == decoder["task"] == task


def test_detection_round_trip_used_the_same_nonzero_adapters_on_both_ends(round_trips):
    encoder, decoder = round_trips["detection"]["encoder"], round_trips["detection"]["decoder"]
    assert encoder["adapter_hash"] == decoder["adapter_hash"] != "00" * 8
    assert round_trips["human"]["encoder"]["adapter_hash"] == "00" * 8
    # Adapters change the latent: detection ŷ must differ from human ŷ of the same image.
    human = {e["image"]: e["key"] for e in round_trips["human"]["encoder"]["images"]}
    differing = 0
    for entry in encoder["images"]:
        if entry["image"] in human:
            det_y = round_trips["detection"]["encoder_y_hat"][entry["key"]]
            hum_y = round_trips["human"]["encoder_y_hat"][human[entry["image"]]]
            differing += not torch.equal(det_y, hum_y)
    assert differing == len(encoder["images"])


def test_frame_sizes_depend_on_image_content(round_trips):
    sizes = [entry["frame_bytes"] for entry in round_trips["human"]["encoder"]["images"]]
    assert len(sizes) == 24 and len(set(sizes)) >= 10, f"frame sizes barely depend on content: {sorted(sizes)}"
    # Same-size images still give different sizes: the payload is content-dependent.
    assert max(sizes) > min(sizes) * 1.2, sorted(sizes)
