"""Adapter checkpoints: safetensors with metadata; loading refuses every mismatch."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from icmh.codec.adapter_checkpoint import read_adapters, save_adapters
from icmh.errors import AdapterMismatchError, InvalidInputError
from icmh.codec.frame_codec import FrameCodec
from icmh.models.adapted import AdapterConfig
from icmh.tasks import Task
from icmh.codec.weights import load_base_codec

from support import smooth_image


def _frame_codec(seed: int = 0, codec: str = "mbt2018-mean-tiny", quality: int = 1) -> FrameCodec:
    if codec == "mbt2018-mean-tiny":
        return FrameCodec(load_base_codec(codec, quality))
    return FrameCodec(load_base_codec(codec, quality, random_weights=True, seed=seed))


@pytest.fixture
def saved(tmp_path):
    source = _frame_codec()
    source.add_random_adapters(Task.DETECTION, seed=7, config=AdapterConfig("sfma", 16, "authors"))
    path = tmp_path / "det.safetensors"
    meta = save_adapters(path, source.codec, Task.DETECTION, source.loaded.fingerprint,
                         lmbda=2.0, training_data="coco-mini", steps=10)
    return source, path, meta


def test_checkpoint_round_trip_keeps_metadata_and_weights(saved):
    source, path, meta = saved
    target = _frame_codec()
    loaded = target.load_adapters(path)
    assert loaded == meta
    assert (loaded.codec, loaded.quality, loaded.task, loaded.variant, loaded.mid_dim) == \
        ("mbt2018-mean-tiny", 1, "detection", "sfma", 16)
    assert loaded.lmbda == 2.0 and loaded.training_data == "coco-mini" and loaded.steps == 10
    assert target.codec.adapter_hash(Task.DETECTION) == source.codec.adapter_hash(Task.DETECTION)
    frame = source.encode([smooth_image(64, 64)], Task.DETECTION, keep_latents=True)[0]
    assert torch.equal(target.decode([frame.data])[0].y_hat, frame.y_hat)


def test_checkpoint_for_another_task_is_refused(saved):
    _, path, _ = saved
    with pytest.raises(AdapterMismatchError, match="task 'detection'.*needs 'classification'"):
        _frame_codec().load_adapters(path, Task.CLASSIFICATION)


def test_checkpoint_for_another_codec_or_quality_is_refused(saved):
    _, path, _ = saved
    with pytest.raises(AdapterMismatchError, match="codec 'mbt2018-mean-tiny'.*needs 'mbt2018-mean'"):
        _frame_codec(codec="mbt2018-mean", quality=1).load_adapters(path)


def test_checkpoint_for_other_base_weights_is_refused(tmp_path):
    source = _frame_codec(seed=0, codec="mbt2018-mean", quality=1)
    source.add_random_adapters(Task.DETECTION)
    path = tmp_path / "a.safetensors"
    save_adapters(path, source.codec, Task.DETECTION, source.loaded.fingerprint, random_weights=True)
    with pytest.raises(AdapterMismatchError, match="base_fingerprint"):
        _frame_codec(seed=1, codec="mbt2018-mean", quality=1).load_adapters(path)


def test_tampered_tensors_are_refused(saved, tmp_path):
    _, path, _ = saved
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    tampered = tmp_path / "tampered.safetensors"
    save_file(tensors, str(tampered), metadata=metadata)
    with pytest.raises(AdapterMismatchError, match="do not match their recorded hash"):
        read_adapters(tampered)


def test_files_that_are_not_adapter_checkpoints_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(InvalidInputError, match="not a safetensors adapter file"):
        read_adapters(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(AdapterMismatchError, match="not an icmh adapter checkpoint"):
        read_adapters(plain)
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_adapters(tmp_path / "missing.safetensors")


def test_metadata_names_every_required_field(saved):
    _, path, meta = saved
    stored = meta.to_strings()
    for field in ("codec", "quality", "task", "variant", "mid_dim", "lmbda", "sha256", "base_fingerprint",
                  "training_data", "decoder_position", "init"):
        assert field in stored
    assert dataclasses.replace(meta, steps=11) != meta
