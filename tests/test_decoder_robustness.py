"""Property-based robustness of ``FrameCodec.decode`` against malformed and hostile frames.

A real frame (the trained ``mbt2018-mean-tiny`` quality 1 codec, a 128×192 crop of a
real image) is mutated in every way a channel or an attacker could: truncation, bit
flips, wrong magic or version, oversized length fields, random bytes, and frames with a
valid CRC whose header fields and strings are garbage. Every case must end in an
:class:`~icmh.errors.IcmhError` with a one-line message; only frames whose container
and header are acceptable may decode, and then to an image of the header's size.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import event as hypothesis_event
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent

from icmh.codec.bitstream import DEFAULT_LIMITS, HEADER_SIZE, MAGIC, FrameHeader, pack_frame, parse_frame
from icmh.errors import (
    AdapterMismatchError,
    BitstreamError,
    FrameTooLargeError,
    CodecMismatchError,
    IcmhError,
    IndexMismatchError,
    UnsupportedVersionError,
)
from icmh.codec.frame_codec import DecodedFrame, FrameCodec
from icmh.images import load_image
from icmh.paths import default_data_dir
from icmh.tasks import Task
from icmh.codec.weights import BUNDLED_DIR, load_base_codec

from conftest import smooth_image

TINY_WEIGHTS = BUNDLED_DIR / "mbt2018-mean-tiny-1.safetensors"
CROP_H, CROP_W = 128, 192
MAX_DECODED_SIDE = 256
OFF_VERSION = 4
OFF_NSTRINGS = 9
OFF_LENGTHS = HEADER_SIZE


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codec() -> FrameCodec:
    if not TINY_WEIGHTS.is_file():
        pytest.fail(f"bundled weights {TINY_WEIGHTS} are missing")
    frame_codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1))
    frame_codec.add_random_adapters(Task.DETECTION, seed=0)
    return frame_codec


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    path = default_data_dir() / "kodak" / "kodim01.png"
    if path.is_file():
        return load_image(path)[:, :CROP_H, :CROP_W]
    print(f"{path} not found (set ICMH_DATA_DIR): fuzzing a frame of a synthetic smooth image instead")
    return smooth_image(CROP_H, CROP_W)


@pytest.fixture(scope="module")
def frames(codec, crop) -> dict:
    """The real frame (task human) and one of the same image for task detection."""
    human = codec.encode([crop], Task.HUMAN)[0].data
    detection = codec.encode([crop], Task.DETECTION)[0].data
    return {"human": human, "detection": detection}


# -- helpers -------------------------------------------------------------------------------
def assert_one_line(exc: BaseException) -> None:
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} has an empty message"
    assert "\n" not in message and "\r" not in message, f"{type(exc).__name__} message is not one line: {message!r}"


def event(label: str) -> None:
    """Record an outcome in hypothesis' statistics (a no-op outside a @given test)."""
    try:
        hypothesis_event(label)
    except InvalidArgument:
        pass


def decode_or_error(codec: FrameCodec, data: bytes) -> Tuple[Optional[DecodedFrame], Optional[IcmhError]]:
    """Decode ``data``; an IcmhError is returned (checked for a one-line message), any other exception escapes."""
    try:
        decoded = codec.decode([data])
    except IcmhError as exc:
        assert_one_line(exc)
        event(f"outcome: {type(exc).__name__}")
        return None, exc
    assert len(decoded) == 1
    event("outcome: decoded")
    return decoded[0], None


def must_fail(codec: FrameCodec, data: bytes, kind: type = IcmhError) -> IcmhError:
    decoded, error = decode_or_error(codec, data)
    assert error is not None, f"malformed frame of {len(data)} bytes decoded to {tuple(decoded.image.shape)}"
    assert isinstance(error, kind), f"expected {kind.__name__}, got {type(error).__name__}: {error}"
    return error


def with_crc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def flip_bits(data: bytes, bits: List[int]) -> bytes:
    out = bytearray(data)
    for bit in bits:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def check_decoded(decoded: DecodedFrame, header: FrameHeader) -> None:
    assert tuple(decoded.image.shape) == (3, header.height, header.width)
    assert decoded.header == header
    assert decoded.image.dtype == torch.float32


# -- sanity: the untouched frames decode -----------------------------------------------------
def test_untouched_real_frames_decode_to_the_crop_size(codec, frames):
    for name, task in (("human", Task.HUMAN), ("detection", Task.DETECTION)):
        decoded, error = decode_or_error(codec, frames[name])
        assert error is None, error
        assert tuple(decoded.image.shape) == (3, CROP_H, CROP_W)
        assert decoded.task is task


# -- container mutations ---------------------------------------------------------------------
@fuzz(150)
@given(data=st.data())
def test_truncated_frames_raise_bitstream_error(codec, frames, data):
    frame = frames[data.draw(st.sampled_from(["human", "detection"]))]
    keep = data.draw(st.integers(0, len(frame) - 1))
    from_front = data.draw(st.booleans())
    mutated = frame[len(frame) - keep:] if from_front else frame[:keep]
    must_fail(codec, mutated, BitstreamError)


@fuzz(200)
@given(data=st.data())
def test_bit_flipped_frames_raise_bitstream_error(codec, frames, data):
    frame = frames[data.draw(st.sampled_from(["human", "detection"]))]
    bits = data.draw(st.lists(st.integers(0, 8 * len(frame) - 1), min_size=1, max_size=8, unique=True))
    must_fail(codec, flip_bits(frame, bits), BitstreamError)


@fuzz(75)
@given(magic=st.binary(min_size=4, max_size=4).filter(lambda m: m != MAGIC))
def test_wrong_magic_raises_bitstream_error_naming_the_magic(codec, frames, magic):
    error = must_fail(codec, magic + frames["human"][4:], BitstreamError)
    assert "magic" in str(error)


@fuzz(75)
@given(version=st.integers(0, 255).filter(lambda v: v != 1), fix_crc=st.booleans())
def test_wrong_version_raises_unsupported_version_error(codec, frames, version, fix_crc):
    frame = bytearray(frames["human"])
    frame[OFF_VERSION] = version
    mutated = with_crc(bytes(frame[:-4])) if fix_crc else bytes(frame)
    error = must_fail(codec, mutated, UnsupportedVersionError)
    assert str(version) in str(error)


@fuzz(150)
@given(data=st.data())
def test_oversized_length_fields_raise_bitstream_error(codec, frames, data):
    frame = bytearray(frames[data.draw(st.sampled_from(["human", "detection"]))])
    n_strings = frame[OFF_NSTRINGS]
    lengths = list(struct.unpack_from(f">{n_strings}I", frame, OFF_LENGTHS))
    if data.draw(st.booleans(), label="grow n_strings"):
        frame[OFF_NSTRINGS] = data.draw(st.integers(n_strings + 1, 255))
    else:
        i = data.draw(st.integers(0, n_strings - 1))
        big = data.draw(st.one_of(st.integers(lengths[i] + 1, lengths[i] + 64),
                                  st.integers(lengths[i] + 1, 0xFFFFFFFF),
                                  st.just(0xFFFFFFFF)))
        struct.pack_into(">I", frame, OFF_LENGTHS + 4 * i, big)
    mutated = with_crc(bytes(frame[:-4])) if data.draw(st.booleans(), label="fix CRC") else bytes(frame)
    must_fail(codec, mutated, BitstreamError)


@fuzz(150)
@given(blob=st.binary(max_size=4096))
def test_random_bytes_raise_bitstream_error(codec, blob):
    must_fail(codec, blob, BitstreamError)


@fuzz(150)
@given(tail=st.binary(max_size=2048), fix_crc=st.booleans())
def test_random_bytes_after_valid_magic_and_version_raise_bitstream_error(codec, tail, fix_crc):
    body = MAGIC + b"\x01" + tail
    must_fail(codec, with_crc(body) if fix_crc else body, BitstreamError)


# -- valid container, hostile content -------------------------------------------------------
def sizes_strategy():
    return st.tuples(st.integers(1, MAX_DECODED_SIDE), st.integers(1, MAX_DECODED_SIDE))


@fuzz(250)
@given(data=st.data())
def test_valid_crc_frames_with_garbage_header_and_strings_fail_cleanly_or_decode_to_header_size(
    codec, frames, data
):
    real_frame = parse_frame(frames["human"])
    real = real_frame.header
    det = parse_frame(frames["detection"]).header

    def mostly(name, value, other):  # the real value four times in five, so that later checks are reached
        return value if data.draw(st.integers(0, 4), label=f"keep {name}") else data.draw(other, label=name)

    task_id = mostly("task_id", 0, st.one_of(st.just(1), st.integers(0, 255)))
    height, width = mostly("size", (real.height, real.width), sizes_strategy())
    header = FrameHeader(
        codec_id=mostly("codec_id", real.codec_id, st.integers(1, 255)),
        quality=mostly("quality", real.quality, st.integers(1, 255)),
        task_id=task_id,
        height=height,
        width=width,
        adapter_hash=mostly("adapter_hash", det.adapter_hash if task_id == 1 else bytes(8),
                            st.binary(min_size=8, max_size=8)),
        base_hash=mostly("base_hash", real.base_hash, st.binary(min_size=4, max_size=4)),
        index_check=mostly("index_check", real.index_check, st.integers(0, 0xFFFFFFFF)),
    )
    strings = data.draw(st.integers(0, 2).flatmap(lambda mode: [
        st.lists(st.binary(max_size=2048), min_size=2, max_size=2),
        st.tuples(st.binary(max_size=2048), st.just(real_frame.strings[1])).map(list),
        st.lists(st.binary(max_size=512), min_size=1, max_size=4),
    ][mode]), label="strings")
    blob = pack_frame(header, strings)
    decoded, error = decode_or_error(codec, blob)
    if error is None:
        check_decoded(decoded, header)
        return
    # The error must be the one the header calls for (checked in FrameCodec.parse's order).
    if len(strings) != 2:
        assert isinstance(error, BitstreamError), error
    elif max(height, width) > DEFAULT_LIMITS.max_aspect * min(height, width):
        assert isinstance(error, FrameTooLargeError) and "max_aspect" in str(error), error
    elif (header.codec_id, header.quality) != (real.codec_id, real.quality) or header.base_hash != real.base_hash:
        assert isinstance(error, CodecMismatchError), error
    elif task_id > 3:
        assert isinstance(error, BitstreamError), error
    elif task_id in (2, 3) or header.adapter_hash != (det.adapter_hash if task_id == 1 else bytes(8)):
        assert isinstance(error, AdapterMismatchError), error
    else:
        assert isinstance(error, IndexMismatchError), error


@fuzz(100)
@given(data=st.data())
def test_garbage_y_string_with_real_z_string_and_index_check_never_crashes(codec, frames, data):
    """Reaches the y rANS decoder with garbage: the index check passes because the z string is real."""
    name = data.draw(st.sampled_from(["human", "detection"]))
    frame = parse_frame(frames[name])
    garbage = data.draw(st.one_of(st.binary(max_size=4096), st.binary(min_size=1, max_size=16)))
    blob = pack_frame(frame.header, [garbage, frame.strings[1]])
    decoded, error = decode_or_error(codec, blob)
    assert error is None, f"{type(error).__name__}: {error}"  # the indexes depend only on z
    check_decoded(decoded, frame.header)


@fuzz(50)
@given(data=st.data())
def test_real_strings_under_another_size_with_the_same_latent_decode_to_that_size(codec, frames, data):
    frame = parse_frame(frames["human"])
    height = data.draw(st.integers(CROP_H - 63, CROP_H))
    width = data.draw(st.integers(CROP_W - 63, CROP_W))
    header = dataclasses.replace(frame.header, height=height, width=width)
    decoded, error = decode_or_error(codec, pack_frame(header, list(frame.strings)))
    assert error is None, f"{type(error).__name__}: {error}"
    check_decoded(decoded, header)
    reference, _ = decode_or_error(codec, frames["human"])
    assert torch.equal(decoded.image, reference.image[:, :height, :width])


@fuzz(100)
@given(data=st.data())
def test_real_strings_under_another_latent_size_fail_cleanly_or_decode_to_header_size(codec, frames, data):
    frame = parse_frame(frames["human"])
    height, width = data.draw(sizes_strategy())
    assume((-(-height // 64), -(-width // 64)) != (frame.header.latent_height, frame.header.latent_width))
    header = dataclasses.replace(frame.header, height=height, width=width)
    decoded, error = decode_or_error(codec, pack_frame(header, list(frame.strings)))
    if error is None:
        check_decoded(decoded, header)
    elif max(height, width) > DEFAULT_LIMITS.max_aspect * min(height, width):
        assert isinstance(error, FrameTooLargeError) and "max_aspect" in str(error), error
    else:
        assert isinstance(error, IndexMismatchError), error
