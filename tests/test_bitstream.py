"""Tests for the one-frame bitstream container (:mod:`icmh.codec.bitstream`): well-formed frames.

Malformed frames (and every refusal of :func:`parse_frame`) are tested in ``test_malformed_frames.py``.
"""

from __future__ import annotations

import array
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings

from icmh.codec.bitstream import (
    HEADER_SIZE,
    LATENT_STRIDE,
    MIN_FRAME_SIZE,
    Frame,
    Limits,
    bits_per_pixel,
    latent_shape,
    pack_frame,
    parse_frame,
)
from icmh.errors import BitstreamError

from support import frame_header, valid_frames


# ------------------------------------------------------------------------ round trip


@settings(max_examples=200, deadline=None)
@given(valid_frames())
def test_pack_then_parse_returns_equal_header_and_strings(frame: tuple) -> None:
    header, strings, data = frame
    parsed = parse_frame(data)
    assert isinstance(parsed, Frame)
    assert parsed.header == header
    assert parsed.strings == tuple(strings)
    assert all(type(s) is bytes for s in parsed.strings)
    assert parsed.size_bytes == len(data)
    assert len(data) == HEADER_SIZE + 4 * len(strings) + sum(map(len, strings)) + 4


@settings(max_examples=50, deadline=None)
@given(valid_frames())
def test_parse_accepts_bytearray_and_memoryviews(frame: tuple) -> None:
    header, strings, data = frame
    padded = b"\x00junk" + data + b"junk"
    inputs = [
        bytearray(data),
        memoryview(data),
        memoryview(padded)[5 : 5 + len(data)],
        memoryview(array.array("B", data)),
    ]
    for value in inputs:
        parsed = parse_frame(value)
        assert parsed.header == header
        assert parsed.strings == tuple(strings)
        assert parsed.size_bytes == len(data)


def test_frame_layout_matches_the_format_table() -> None:
    header = frame_header(height=100, width=130)
    strings = [b"abc", b"", b"\x00\xff"]
    data = pack_frame(header, strings)
    expected_body = (
        b"ICMH"
        + bytes([1, 0, 3, 5, 2, 3])
        + struct.pack(">HHHH", 100, 130, 2, 3)
        + bytes(range(1, 9))
        + b"\xde\xad\xbe\xef"
        + struct.pack(">I", 0x12345678)
        + struct.pack(">III", 3, 0, 2)
        + b"abc\x00\xff"
    )
    assert data == expected_body + struct.pack(">I", zlib.crc32(expected_body))
    assert HEADER_SIZE == 34
    assert MIN_FRAME_SIZE == 42


def test_smallest_frame_has_one_empty_string_and_parses() -> None:
    header = frame_header(height=1, width=1, adapter_hash=bytes(8))
    data = pack_frame(header, [b""])
    assert len(data) == MIN_FRAME_SIZE
    parsed = parse_frame(data)
    assert parsed.strings == (b"",)
    assert not any(parsed.header.adapter_hash)
    assert parsed.header.latent_height == parsed.header.latent_width == 1


def test_pack_accepts_bytes_like_strings_and_tuples() -> None:
    header = frame_header()
    data = pack_frame(header, (bytearray(b"ab"), memoryview(b"cd")))
    assert parse_frame(data).strings == (b"ab", b"cd")


def test_largest_default_image_and_four_strings_round_trip() -> None:
    header = frame_header(height=2160, width=3840)
    strings = [b"x" * 1000, b"y", b"", b"z" * 77]
    parsed = parse_frame(pack_frame(header, strings))
    assert parsed.header == header
    assert (parsed.header.latent_height, parsed.header.latent_width) == (34, 60)


def test_parse_leaves_no_buffer_export_on_a_bytearray() -> None:
    data = bytearray(pack_frame(frame_header(), [b"abc"]))
    parse_frame(data)
    data.extend(b"!")  # would raise BufferError if a memoryview were still exported
    with pytest.raises(BitstreamError, match="trailing"):
        parse_frame(data)


# ------------------------------------------------------------------- latent shape


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1, 1, (1, 1)),
        (64, 64, (1, 1)),
        (65, 1, (2, 1)),
        (1, 129, (1, 3)),
        (1080, 1920, (17, 30)),
        (2160, 3840, (34, 60)),
    ],
)
def test_latent_shape_is_ceil_of_size_over_64(height: int, width: int, expected: tuple) -> None:
    assert LATENT_STRIDE == 64
    assert latent_shape(height, width) == expected
    header = frame_header(height=height, width=width)
    assert (header.latent_height, header.latent_width) == expected


@pytest.mark.parametrize(("height", "width"), [(0, 1), (1, 0), (-64, 64), (1.5, 2)])
def test_latent_shape_rejects_non_positive_sizes(height: object, width: object) -> None:
    with pytest.raises(ValueError):
        latent_shape(height, width)  # type: ignore[arg-type]


# ----------------------------------------------------------------- bits per pixel


def test_bits_per_pixel_counts_every_byte_of_the_frame() -> None:
    data = pack_frame(frame_header(height=32, width=128), [b"\x00" * 982])
    assert len(data) == 34 + 4 + 982 + 4 == 1024  # header, one length, the string, the CRC
    assert bits_per_pixel(parse_frame(data).size_bytes, 32, 128) == 2.0  # not square: height and width both count


@pytest.mark.parametrize(("size", "height", "width"), [(-1, 8, 8), (10, 0, 8), (10, 8, 0)])
def test_bits_per_pixel_rejects_bad_arguments(size: int, height: int, width: int) -> None:
    with pytest.raises(ValueError):
        bits_per_pixel(size, height, width)


# ------------------------------------------------------------------ large frames


def test_parsing_a_valid_frame_copies_only_the_strings() -> None:
    strings = [b"s" * 4_000_000, b"t" * 4_000_000]
    data = pack_frame(frame_header(), strings)
    tracemalloc.start()
    try:
        frame = parse_frame(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frame.strings == tuple(strings)
    # One copy of the payload (the returned strings), not two.
    assert peak < 8_000_000 + 256 * 1024, peak


# -------------------------------------------------------------------- pack_frame


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"adapter_hash": bytes(7)}, "adapter_hash"),
        ({"adapter_hash": bytes(9)}, "adapter_hash"),
        ({"adapter_hash": "abcdefgh"}, "adapter_hash"),
        ({"base_hash": bytes(3)}, "base_hash"),
        ({"base_hash": bytearray(4)}, "base_hash"),
        ({"height": 0}, "height"),
        ({"width": 0}, "width"),
        ({"height": -1}, "height"),
        ({"height": 4097}, "height"),
        ({"width": 4097}, "width"),
        ({"height": 4096, "width": 4096}, "max_pixels"),
        ({"height": 2.0}, "height"),
        ({"codec_id": 0}, "codec_id"),
        ({"codec_id": 256}, "codec_id"),
        ({"codec_id": True}, "codec_id"),
        ({"quality": 0}, "quality"),
        ({"quality": 256}, "quality"),
        ({"task_id": -1}, "task_id"),
        ({"task_id": 256}, "task_id"),
        ({"index_check": -1}, "index_check"),
        ({"index_check": 2**32}, "index_check"),
    ],
)
def test_pack_frame_refuses_invalid_headers(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        pack_frame(frame_header(**overrides), [b"x"])


@pytest.mark.parametrize(
    "strings",
    [[], [b"a"] * 5, b"abc", "abc", [b"a", "b"], [b"a", None], 42],
)
def test_pack_frame_refuses_invalid_string_lists(strings: object) -> None:
    with pytest.raises(ValueError):
        pack_frame(frame_header(), strings)  # type: ignore[arg-type]


def test_pack_frame_refuses_a_frame_over_max_frame_bytes() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        pack_frame(frame_header(), [b"x" * 100], Limits(max_frame_bytes=100))


def test_pack_frame_honours_custom_image_limits() -> None:
    limits = Limits(max_height=8192, max_width=8192, max_pixels=8192 * 8192)
    header = frame_header(height=8000, width=5000)
    parsed = parse_frame(pack_frame(header, [b"x"], limits), limits)
    assert parsed.header == header
    with pytest.raises(ValueError, match="height"):
        pack_frame(header, [b"x"])
    with pytest.raises(BitstreamError, match="bad height 8000"):
        parse_frame(pack_frame(header, [b"x"], limits))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_strings": 0}, {"max_strings": 256}, {"max_frame_bytes": 0}, {"max_height": -1}, {"max_pixels": 1.5}],
)
def test_limits_refuse_impossible_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)
