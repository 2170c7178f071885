"""Frames from images and back: any size, every byte counted, mismatches refused."""

import dataclasses

import pytest
import torch

from icmh.codec.bitstream import pack_frame, parse_frame
from icmh.errors import AdapterMismatchError, BitstreamError, CodecMismatchError, FrameTooLargeError, InvalidInputError
from icmh.codec.frame_codec import FrameCodec
from icmh.images import load_image
from icmh.tasks import Task
from icmh.codec.weights import load_base_codec

from support import smooth_image


@pytest.fixture(scope="module")
def tiny() -> FrameCodec:
    codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1))
    codec.add_random_adapters(Task.DETECTION, seed=0)
    return codec


@pytest.mark.parametrize("height,width", [(1, 1), (65, 97), (64, 64), (130, 47)])
def test_any_image_size_round_trips(tiny, height, width):
    image = smooth_image(height, width, seed=height)
    frame = tiny.encode([image], Task.HUMAN, keep_latents=True)[0]
    decoded = tiny.decode([frame.data])[0]
    assert decoded.image.shape == (3, height, width)
    assert torch.equal(decoded.y_hat, frame.y_hat)


def test_bits_per_pixel_counts_every_byte(tiny):
    frame = tiny.encode([smooth_image(96, 80)], Task.HUMAN)[0]
    assert frame.y_hat is None  # frames that travel carry no latent tensor
    assert frame.bpp == len(frame.data) * 8 / (96 * 80)
    parsed = parse_frame(frame.data)
    assert parsed.size_bytes == len(frame.data) > sum(len(s) for s in parsed.strings)


def test_bitstream_sizes_depend_on_content(tiny, kodak_dir):
    images = [load_image(p)[:, :256, :256] for p in sorted(kodak_dir.glob("*.png"))[:8]]
    sizes = [len(f.data) for f in tiny.encode(images, Task.HUMAN)]
    assert len(set(sizes)) == len(sizes), sizes


def test_mixed_sizes_and_tasks_decode_in_input_order(tiny):
    images = [smooth_image(64, 64, 1), smooth_image(70, 90, 2), smooth_image(64, 64, 3)]
    human = tiny.encode(images, Task.HUMAN, keep_latents=True)
    detection = tiny.encode(images[:1], Task.DETECTION, keep_latents=True)
    frames = [human[0], detection[0], human[1], human[2]]
    decoded = tiny.decode([f.data for f in frames])
    assert [d.task for d in decoded] == [Task.HUMAN, Task.DETECTION, Task.HUMAN, Task.HUMAN]
    for frame, result in zip(frames, decoded):
        assert torch.equal(result.y_hat, frame.y_hat)


def _repack(data: bytes, **changes) -> bytes:
    frame = parse_frame(data)
    return pack_frame(dataclasses.replace(frame.header, **changes), frame.strings)


def test_frame_with_other_adapter_hash_is_refused(tiny):
    frame = tiny.encode([smooth_image(64, 64)], Task.DETECTION)[0]
    with pytest.raises(AdapterMismatchError, match="detection adapters"):
        tiny.decode([_repack(frame.data, adapter_hash=b"\x01" * 8)])


def test_frame_for_a_task_without_adapters_is_refused(tiny):
    frame = tiny.encode([smooth_image(64, 64)], Task.DETECTION)[0]
    with pytest.raises(AdapterMismatchError, match="no adapters loaded for task 'classification'"):
        tiny.decode([_repack(frame.data, task_id=Task.CLASSIFICATION.wire_id)])


def test_frame_from_other_base_weights_is_refused(tiny):
    other = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1, random_weights=True))
    frame = other.encode([smooth_image(64, 64)], Task.HUMAN)[0]
    with pytest.raises(CodecMismatchError, match="other mbt2018-mean-tiny weights"):
        tiny.decode([frame.data])


def test_frame_from_another_codec_is_refused(tiny):
    other = FrameCodec(load_base_codec("bmshj2018-hyperprior", 1, random_weights=True))
    frame = other.encode([smooth_image(64, 64)], Task.HUMAN)[0]
    with pytest.raises(CodecMismatchError, match="codec id 1 quality 1"):
        tiny.decode([frame.data])


def test_unknown_task_id_is_a_bitstream_error(tiny):
    frame = tiny.encode([smooth_image(64, 64)], Task.HUMAN)[0]
    with pytest.raises(BitstreamError, match="unknown task id 9"):
        tiny.decode([_repack(frame.data, task_id=9)])


def test_images_over_the_size_limits_are_refused_before_encoding(tiny):
    with pytest.raises(FrameTooLargeError, match="bad height 5000: must be 1..4096"):
        tiny.encode([torch.zeros(3, 5000, 8)], Task.HUMAN)
    with pytest.raises(FrameTooLargeError, match="more elongated than 32:1"):
        tiny.encode([torch.zeros(3, 4, 4000)], Task.HUMAN)
    with pytest.raises(InvalidInputError, match="expected a 3×H×W RGB image"):
        tiny.encode([torch.zeros(1, 8, 8)], Task.HUMAN)
