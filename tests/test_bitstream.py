"""Tests for the one-frame bitstream container (:mod:`icmh.codec.bitstream`)."""

from __future__ import annotations

import array
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icmh.codec.bitstream import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    HEADER_SIZE,
    LATENT_STRIDE,
    MAGIC,
    MIN_FRAME_SIZE,
    Frame,
    FrameHeader,
    Limits,
    bits_per_pixel,
    latent_shape,
    pack_frame,
    parse_frame,
)
from icmh.errors import BitstreamError, FrameTooLargeError, UnsupportedVersionError

# Offsets of the fixed header fields (format version 1).
OFF_VERSION = 4
OFF_FLAGS = 5
OFF_CODEC = 6
OFF_QUALITY = 7
OFF_TASK = 8
OFF_NSTRINGS = 9
OFF_HEIGHT = 10
OFF_WIDTH = 12
OFF_LATENT_H = 14
OFF_LATENT_W = 16
OFF_ADAPTER = 18
OFF_BASE = 26
OFF_INDEX_CHECK = 30

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- helpers


def _header(**overrides: object) -> FrameHeader:
    fields: dict[str, object] = dict(
        codec_id=3,
        quality=5,
        task_id=2,
        height=480,
        width=640,
        adapter_hash=bytes(range(1, 9)),
        base_hash=b"\xde\xad\xbe\xef",
        index_check=0x12345678,
    )
    fields.update(overrides)
    return FrameHeader(**fields)  # type: ignore[arg-type]


def _with_fixed_crc(data: bytes | bytearray) -> bytes:
    """Return ``data`` with its CRC trailer recomputed over everything before it."""
    body = bytes(data[:-4])
    return body + struct.pack(">I", zlib.crc32(body))


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite one big-endian field at ``offset`` and fix the CRC.

    The result has a valid CRC, so whatever the parser rejects it for is the field
    check itself and not the integrity check.
    """
    buf = bytearray(data)
    struct.pack_into(">" + fmt, buf, offset, value)
    return _with_fixed_crc(buf)


def _n_strings(data: bytes) -> int:
    return data[OFF_NSTRINGS]


def _lengths(data: bytes) -> tuple[int, ...]:
    n = _n_strings(data)
    return struct.unpack_from(f">{n}I", data, HEADER_SIZE)


def _reject(data: object, limits: Limits = DEFAULT_LIMITS) -> BitstreamError:
    """Parse ``data``, require exactly one BitstreamError with a one-line message."""
    with pytest.raises(BitstreamError) as info:
        parse_frame(data, limits)  # type: ignore[arg-type]
    error = info.value
    assert type(error) in (BitstreamError, UnsupportedVersionError, FrameTooLargeError)
    message = str(error)
    assert message, "empty error message"
    assert "\n" not in message and "\r" not in message, repr(message)
    # The parser's catch-all is a safety net; every malformed input we know of must be
    # caught by an explicit check that says what is wrong.
    assert not message.startswith("malformed frame ("), message
    return error


# ------------------------------------------------------------------------ strategies


@st.composite
def headers(draw: st.DrawFn, limits: Limits = DEFAULT_LIMITS) -> FrameHeader:
    height = draw(st.integers(1, limits.max_height))
    max_w = min(limits.max_width, limits.max_pixels // height)
    width = draw(st.integers(1, max_w))
    return FrameHeader(
        codec_id=draw(st.integers(1, 255)),
        quality=draw(st.integers(1, 255)),
        task_id=draw(st.integers(0, 255)),
        height=height,
        width=width,
        adapter_hash=draw(st.binary(min_size=8, max_size=8)),
        base_hash=draw(st.binary(min_size=4, max_size=4)),
        index_check=draw(st.integers(0, 2**32 - 1)),
    )


string_lists = st.lists(st.binary(max_size=256), min_size=1, max_size=4)


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[FrameHeader, list[bytes], bytes]:
    header = draw(headers())
    strings = draw(string_lists)
    return header, strings, pack_frame(header, strings)


# Each malformed case is (data, fragment the message must contain or None, error type).
Case = tuple[bytes, "str | None", type]


@st.composite
def truncated(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    cut = draw(st.integers(0, len(data) - 1))
    return data[:cut], "truncated", BitstreamError


@st.composite
def bit_flipped(draw: st.DrawFn) -> Case:
    # CRC-32 detects every error of up to 3 bits in frames this small (< 11 KiB), so
    # each flipped frame must be rejected; which check fires depends on where it lands.
    _, _, data = draw(valid_frames())
    bits = draw(st.sets(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=3))
    buf = bytearray(data)
    for bit in bits:
        buf[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(buf), None, BitstreamError


@st.composite
def payload_flipped(draw: st.DrawFn) -> Case:
    # Flips in bytes no structural or field check reads (hashes, index_check, string
    # bytes, the CRC itself) can only be caught by the CRC.
    _, strings, data = draw(valid_frames())
    table_end = HEADER_SIZE + 4 * len(strings)
    hashes_and_index_check = range(OFF_ADAPTER * 8, HEADER_SIZE * 8)
    strings_and_crc = range(table_end * 8, len(data) * 8)
    region = draw(st.sampled_from([hashes_and_index_check, strings_and_crc]))
    bits = draw(st.sets(st.sampled_from(region), min_size=1, max_size=3))
    buf = bytearray(data)
    for bit in bits:
        buf[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(buf), "CRC mismatch", BitstreamError


@st.composite
def wrong_magic(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    magic = draw(st.binary(min_size=4, max_size=4).filter(lambda m: m != MAGIC))
    return magic + data[4:], "bad magic", BitstreamError


@st.composite
def wrong_version(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    version = draw(st.integers(0, 255).filter(lambda v: v != FORMAT_VERSION))
    fix_crc = draw(st.booleans())
    buf = bytearray(data)
    buf[OFF_VERSION] = version
    out = _with_fixed_crc(buf) if fix_crc else bytes(buf)
    return out, f"frame format version {version} is not supported", UnsupportedVersionError


@st.composite
def oversized_length(draw: st.DrawFn) -> Case:
    _, strings, data = draw(valid_frames())
    i = draw(st.integers(0, len(strings) - 1))
    room = len(data) - HEADER_SIZE - 4 * len(strings) - 4
    value = draw(st.one_of(st.just(2**32 - 1), st.integers(room + 1, 2**32 - 1)))
    out = _patch(data, HEADER_SIZE + 4 * i, "I", value)
    return out, f"string {i} says {value} bytes", BitstreamError


@st.composite
def inconsistent_lengths(draw: st.DrawFn) -> Case:
    # Every length fits on its own, but the sum disagrees with the frame size.
    _, strings, data = draw(valid_frames())
    i = draw(st.integers(0, len(strings) - 1))
    room = len(data) - HEADER_SIZE - 4 * len(strings) - 4
    value = draw(st.integers(0, room).filter(lambda v: v != len(strings[i])))
    out = _patch(data, HEADER_SIZE + 4 * i, "I", value)
    fragment = "truncated frame" if value > len(strings[i]) else "trailing bytes"
    return out, fragment, BitstreamError


@st.composite
def bad_n_strings(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    n = draw(st.one_of(st.just(0), st.integers(DEFAULT_LIMITS.max_strings + 1, 255)))
    return _patch(data, OFF_NSTRINGS, "B", n), f"bad n_strings {n}", BitstreamError


@st.composite
def bad_height(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    h = draw(st.one_of(st.just(0), st.integers(DEFAULT_LIMITS.max_height + 1, 2**16 - 1)))
    return _patch(data, OFF_HEIGHT, "H", h), f"bad height {h}", FrameTooLargeError if h else BitstreamError


@st.composite
def bad_width(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    w = draw(st.one_of(st.just(0), st.integers(DEFAULT_LIMITS.max_width + 1, 2**16 - 1)))
    return _patch(data, OFF_WIDTH, "H", w), f"bad width {w}", FrameTooLargeError if w else BitstreamError


@st.composite
def too_many_pixels(draw: st.DrawFn) -> Case:
    # Height and width each within their limits, latent shape consistent, product over.
    _, _, data = draw(valid_frames())
    lim = DEFAULT_LIMITS
    h = draw(st.integers(lim.max_pixels // lim.max_width + 1, lim.max_height))
    w = draw(st.integers(lim.max_pixels // h + 1, lim.max_width))
    lh, lw = latent_shape(h, w)
    out = _patch(data, OFF_HEIGHT, "H", h)
    out = _patch(out, OFF_WIDTH, "H", w)
    out = _patch(out, OFF_LATENT_H, "H", lh)
    out = _patch(out, OFF_LATENT_W, "H", lw)
    return out, "max_pixels", FrameTooLargeError


@st.composite
def bad_latent(draw: st.DrawFn) -> Case:
    header, _, data = draw(valid_frames())
    which = draw(st.sampled_from([OFF_LATENT_H, OFF_LATENT_W]))
    good = header.latent_height if which == OFF_LATENT_H else header.latent_width
    value = draw(st.integers(0, 2**16 - 1).filter(lambda v: v != good))
    return _patch(data, which, "H", value), "inconsistent latent shape", BitstreamError


@st.composite
def bad_flags_codec_quality(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    kind = draw(st.sampled_from(["flags", "codec", "quality"]))
    if kind == "flags":
        return _patch(data, OFF_FLAGS, "B", draw(st.integers(1, 255))), "bad flags", BitstreamError
    if kind == "codec":
        return _patch(data, OFF_CODEC, "B", 0), "bad codec_id 0", BitstreamError
    return _patch(data, OFF_QUALITY, "B", 0), "bad quality 0", BitstreamError


@st.composite
def trailing(draw: st.DrawFn) -> Case:
    _, _, data = draw(valid_frames())
    extra = draw(st.binary(min_size=1, max_size=64))
    return data + extra, "trailing bytes", BitstreamError


@st.composite
def random_bytes(draw: st.DrawFn) -> Case:
    return draw(st.binary(max_size=512)), None, BitstreamError


@st.composite
def random_bytes_with_magic(draw: st.DrawFn) -> Case:
    tail = draw(st.binary(max_size=512))
    return MAGIC + bytes([FORMAT_VERSION]) + tail, None, BitstreamError


MALFORMED = st.one_of(
    truncated(),
    bit_flipped(),
    payload_flipped(),
    wrong_magic(),
    wrong_version(),
    oversized_length(),
    inconsistent_lengths(),
    bad_n_strings(),
    bad_height(),
    bad_width(),
    too_many_pixels(),
    bad_latent(),
    bad_flags_codec_quality(),
    trailing(),
    random_bytes(),
    random_bytes_with_magic(),
)


def _check_case(case: Case) -> None:
    data, fragment, error_type = case
    error = _reject(data)
    if error_type is UnsupportedVersionError:
        assert isinstance(error, UnsupportedVersionError)
    elif fragment is not None:
        # Only a wrong version and a limit (RESOURCE_EXHAUSTED in the service) raise a subclass.
        assert type(error) is error_type, (type(error), str(error))
    if fragment is not None:
        assert fragment in str(error), (fragment, str(error))


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
    header = _header(height=100, width=130)
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
    header = _header(height=1, width=1, adapter_hash=bytes(8))
    data = pack_frame(header, [b""])
    assert len(data) == MIN_FRAME_SIZE
    parsed = parse_frame(data)
    assert parsed.strings == (b"",)
    assert not any(parsed.header.adapter_hash)
    assert parsed.header.latent_height == parsed.header.latent_width == 1


def test_pack_accepts_bytes_like_strings_and_tuples() -> None:
    header = _header()
    data = pack_frame(header, (bytearray(b"ab"), memoryview(b"cd")))
    assert parse_frame(data).strings == (b"ab", b"cd")


def test_largest_default_image_and_four_strings_round_trip() -> None:
    header = _header(height=2160, width=3840)
    strings = [b"x" * 1000, b"y", b"", b"z" * 77]
    parsed = parse_frame(pack_frame(header, strings))
    assert parsed.header == header
    assert (parsed.header.latent_height, parsed.header.latent_width) == (34, 60)


def test_parse_leaves_no_buffer_export_on_a_bytearray() -> None:
    data = bytearray(pack_frame(_header(), [b"abc"]))
    parse_frame(data)
    data.extend(b"!")  # would raise BufferError if a memoryview were still exported
    _reject(data)
    data.extend(b"!")
    _reject(bytearray(b"short"))


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
    header = _header(height=height, width=width)
    assert (header.latent_height, header.latent_width) == expected


@pytest.mark.parametrize(("height", "width"), [(0, 1), (1, 0), (-64, 64), (1.5, 2)])
def test_latent_shape_rejects_non_positive_sizes(height: object, width: object) -> None:
    with pytest.raises(ValueError):
        latent_shape(height, width)  # type: ignore[arg-type]


# ----------------------------------------------------------------- bits per pixel


@settings(max_examples=100, deadline=None)
@given(valid_frames())
def test_bits_per_pixel_counts_every_byte_of_the_frame(frame: tuple) -> None:
    header, strings, data = frame
    parsed = parse_frame(data)
    bpp = bits_per_pixel(parsed.size_bytes, header.height, header.width)
    assert bpp == len(data) * 8 / (header.height * header.width)
    # Header, lengths table and CRC are counted: strictly more than the payload alone.
    assert bpp > sum(map(len, strings)) * 8 / (header.height * header.width)


def test_bits_per_pixel_known_value() -> None:
    data = pack_frame(_header(height=64, width=64), [b"\x00" * 982])
    assert len(data) == 34 + 4 + 982 + 4 == 1024
    assert bits_per_pixel(len(data), 64, 64) == 2.0


@pytest.mark.parametrize(("size", "height", "width"), [(-1, 8, 8), (10, 0, 8), (10, 8, 0)])
def test_bits_per_pixel_rejects_bad_arguments(size: int, height: int, width: int) -> None:
    with pytest.raises(ValueError):
        bits_per_pixel(size, height, width)


# ---------------------------------------------------- malformed input: the big fuzz


@settings(
    max_examples=1200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(MALFORMED)
def test_every_malformed_frame_ends_in_one_bitstream_error_with_a_one_line_message(
    case: Case,
) -> None:
    _check_case(case)


# ----------------------------------------- malformed input: one test per class


@FUZZ
@given(truncated())
def test_truncated_frame_is_rejected_as_truncated(case: Case) -> None:
    _check_case(case)


def test_truncation_at_every_position_is_rejected() -> None:
    data = pack_frame(_header(), [b"first", b"", b"third string", b"\x00" * 9])
    for cut in range(len(data)):
        error = _reject(data[:cut])
        assert "truncated" in str(error), (cut, str(error))


def test_truncated_frame_message_names_both_sizes() -> None:
    data = pack_frame(_header(), [b"a" * 10, b"b" * 10])
    error = _reject(data[:-5])
    assert str(error) == f"truncated frame: {len(data) - 5} bytes, header and lengths say {len(data)}"


@FUZZ
@given(bit_flipped())
def test_random_bit_flips_are_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(payload_flipped())
def test_bit_flips_in_hashes_strings_or_crc_are_caught_by_the_crc(case: Case) -> None:
    _check_case(case)


def test_every_single_bit_flip_of_a_small_frame_is_rejected() -> None:
    data = pack_frame(_header(), [b"payload", b"xy"])
    for bit in range(len(data) * 8):
        buf = bytearray(data)
        buf[bit // 8] ^= 0x80 >> (bit % 8)
        _reject(bytes(buf))


@FUZZ
@given(wrong_magic())
def test_wrong_magic_is_rejected(case: Case) -> None:
    _check_case(case)


def test_wrong_magic_message() -> None:
    data = b"JPEG" + pack_frame(_header(), [b"x"])[4:]
    assert str(_reject(data)) == "not an ICMH frame (bad magic)"


@FUZZ
@given(wrong_version())
def test_wrong_version_raises_unsupported_version_error(case: Case) -> None:
    _check_case(case)


def test_wrong_version_message() -> None:
    data = _patch(pack_frame(_header(), [b"x"]), OFF_VERSION, "B", 7)
    error = _reject(data)
    assert isinstance(error, UnsupportedVersionError)
    assert str(error) == "frame format version 7 is not supported (this decoder reads version 1)"


@FUZZ
@given(oversized_length())
def test_oversized_length_field_is_rejected_by_the_length_check(case: Case) -> None:
    _check_case(case)


def test_length_field_of_u32_max_is_rejected_before_any_allocation() -> None:
    data = _patch(pack_frame(_header(), [b"abc", b"de"]), HEADER_SIZE + 4, "I", 2**32 - 1)
    tracemalloc.start()
    try:
        error = _reject(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "string 1 says 4294967295 bytes" in str(error)
    assert peak < 64 * 1024


@FUZZ
@given(inconsistent_lengths())
def test_lengths_that_disagree_with_the_frame_size_are_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(bad_n_strings())
def test_n_strings_zero_or_over_the_limit_is_rejected(case: Case) -> None:
    _check_case(case)


def test_n_strings_limit_comes_from_limits() -> None:
    data = pack_frame(_header(), [b"a", b"b", b"c"])
    assert parse_frame(data).strings == (b"a", b"b", b"c")
    error = _reject(data, Limits(max_strings=2))
    assert "bad n_strings 3" in str(error) and "1 to 2 strings" in str(error)


@FUZZ
@given(bad_height())
def test_height_zero_or_over_the_limit_is_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(bad_width())
def test_width_zero_or_over_the_limit_is_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(too_many_pixels())
def test_image_over_max_pixels_is_rejected(case: Case) -> None:
    _check_case(case)


def test_image_size_limits_come_from_limits() -> None:
    data = pack_frame(_header(height=480, width=640), [b"x"])
    assert "bad height 480" in str(_reject(data, Limits(max_height=479)))
    assert "bad width 640" in str(_reject(data, Limits(max_width=639)))
    assert "max_pixels" in str(_reject(data, Limits(max_pixels=480 * 640 - 1)))


@FUZZ
@given(bad_latent())
def test_inconsistent_latent_shape_is_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(bad_flags_codec_quality())
def test_nonzero_flags_codec_id_zero_and_quality_zero_are_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(trailing())
def test_trailing_bytes_are_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(random_bytes())
def test_random_bytes_are_rejected(case: Case) -> None:
    _check_case(case)


@FUZZ
@given(random_bytes_with_magic())
def test_random_bytes_after_the_right_magic_and_version_are_rejected(case: Case) -> None:
    _check_case(case)


def test_corrupted_crc_trailer_is_rejected_as_crc_mismatch() -> None:
    data = bytearray(pack_frame(_header(), [b"abc"]))
    data[-1] ^= 0x01
    assert str(_reject(bytes(data))) == "frame is corrupted (CRC mismatch)"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"I", b"ICMH", b"ICMH\x01", b"\x00" * 41, b"\xff" * 41, bytearray(), memoryview(b"")],
)
def test_tiny_inputs_are_rejected_as_truncated(data: bytes) -> None:
    assert "truncated" in str(_reject(data))


@pytest.mark.parametrize("value", [None, "ICMH\x01", 42, 3.5, [73, 67, 77, 72], object(), array.array("B", b"ICMH")])
def test_non_bytes_input_is_rejected_with_bitstream_error(value: object) -> None:
    assert "expected a frame as bytes" in str(_reject(value))


def test_non_contiguous_memoryview_is_rejected() -> None:
    data = pack_frame(_header(), [b"abc"])
    view = memoryview(data + data)[::2]
    assert "contiguous" in str(_reject(view))


def test_released_memoryview_is_rejected() -> None:
    view = memoryview(pack_frame(_header(), [b"abc"]))
    view.release()
    assert "cannot be read" in str(_reject(view))


# ------------------------------------------------------------------ oversized input


def test_input_over_max_frame_bytes_is_rejected_without_copying() -> None:
    big = bytes(17 * 1024 * 1024)
    big_array = bytearray(big)
    tracemalloc.start()
    try:
        error = _reject(big)
        error_view = _reject(memoryview(big_array))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for e in (error, error_view):
        assert "over the limit of 16777216 bytes (max_frame_bytes)" in str(e)
        assert str(17 * 1024 * 1024) in str(e)
    assert peak < 64 * 1024, peak


def test_max_frame_bytes_comes_from_limits_and_is_checked_first() -> None:
    data = pack_frame(_header(), [b"x" * 100])
    assert parse_frame(data, Limits(max_frame_bytes=len(data))).size_bytes == len(data)
    assert "max_frame_bytes" in str(_reject(data, Limits(max_frame_bytes=len(data) - 1)))
    # The size limit fires before the magic check.
    assert "max_frame_bytes" in str(_reject(b"JUNK" * 100, Limits(max_frame_bytes=64)))


def test_parsing_a_valid_frame_copies_only_the_strings() -> None:
    strings = [b"s" * 4_000_000, b"t" * 4_000_000]
    data = pack_frame(_header(), strings)
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
        pack_frame(_header(**overrides), [b"x"])


@pytest.mark.parametrize(
    "strings",
    [[], [b"a"] * 5, b"abc", "abc", [b"a", "b"], [b"a", None], 42],
)
def test_pack_frame_refuses_invalid_string_lists(strings: object) -> None:
    with pytest.raises(ValueError):
        pack_frame(_header(), strings)  # type: ignore[arg-type]


def test_pack_frame_refuses_a_frame_over_max_frame_bytes() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        pack_frame(_header(), [b"x" * 100], Limits(max_frame_bytes=100))


def test_pack_frame_honours_custom_image_limits() -> None:
    limits = Limits(max_height=8192, max_width=8192, max_pixels=8192 * 8192)
    header = _header(height=8000, width=5000)
    parsed = parse_frame(pack_frame(header, [b"x"], limits), limits)
    assert parsed.header == header
    with pytest.raises(ValueError, match="height"):
        pack_frame(header, [b"x"])
    assert "bad height 8000" in str(_reject(pack_frame(header, [b"x"], limits)))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_strings": 0}, {"max_strings": 256}, {"max_frame_bytes": 0}, {"max_height": -1}, {"max_pixels": 1.5}],
)
def test_limits_refuse_impossible_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)
