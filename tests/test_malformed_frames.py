"""Malformed and hostile frames, all in one place.

1. The container parser (:func:`~icmh.codec.bitstream.parse_frame`): every kind of malformed
   container (truncation, bit flips, wrong magic or version, bad length fields, sizes, limits,
   trailing or random bytes), fuzzed, each ending in one :class:`~icmh.errors.BitstreamError`
   with a one-line message that says what is wrong.
2. Named malformed versions of a real frame (the trained ``mbt2018-mean-tiny`` quality 1 codec,
   128×192 crops of Kodak images) through the decoder (:meth:`FrameCodec.decode`): each ends in
   the right :class:`~icmh.errors.IcmhError` with a one-line message.
3. Frames whose container is valid but whose header fields and strings are garbage: they fail
   cleanly or decode to an image of the header's size.

The command line (``test_cli.py``) and the service (``test_service.py``) each check with one
malformed frame that they turn the error into one error line / INVALID_ARGUMENT.
"""

from __future__ import annotations

import array
import dataclasses
import random
import re
import struct
import tracemalloc
import zlib
from typing import Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from icmh.codec.bitstream import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    FrameHeader,
    Limits,
    latent_shape,
    pack_frame,
    parse_frame,
)
from icmh.codec.frame_codec import DecodedFrame, FrameCodec
from icmh.codec.weights import BUNDLED_DIR, load_base_codec
from icmh.errors import (
    AdapterMismatchError,
    BitstreamError,
    CodecMismatchError,
    FrameTooLargeError,
    IcmhError,
    IndexMismatchError,
    UnsupportedVersionError,
)
from icmh.images import load_image
from icmh.tasks import Task

from support import frame_header, valid_frames

# Offsets of the fixed header fields (format version 1).
OFF_VERSION = 4
OFF_FLAGS = 5
OFF_CODEC = 6
OFF_QUALITY = 7
OFF_NSTRINGS = 9
OFF_HEIGHT = 10
OFF_WIDTH = 12
OFF_LATENT_H = 14
OFF_LATENT_W = 16
OFF_ADAPTER = 18

TINY_WEIGHTS = BUNDLED_DIR / "mbt2018-mean-tiny-1.safetensors"
CROP_H, CROP_W = 128, 192
MAX_DECODED_SIDE = 256


# -- the container parser, fuzzed ----------------------------------------------------------------
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
    version = draw(st.integers(0, 255).filter(lambda v: not 1 <= v <= FORMAT_VERSION))  # 1..FORMAT_VERSION are read
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


KINDS = [  # every kind of malformed container, one strategy each
    truncated,
    bit_flipped,
    payload_flipped,
    wrong_magic,
    wrong_version,
    oversized_length,
    inconsistent_lengths,
    bad_n_strings,
    bad_height,
    bad_width,
    too_many_pixels,
    bad_latent,
    bad_flags_codec_quality,
    trailing,
    random_bytes,
    random_bytes_with_magic,
]


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


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_kind_of_malformed_container_ends_in_its_one_line_bitstream_error(kind, data) -> None:
    _check_case(data.draw(kind()))


# -- the container parser: messages and limits of particular cases ----------------------------
def test_truncation_at_every_position_is_rejected() -> None:
    data = pack_frame(frame_header(), [b"first", b"", b"third string", b"\x00" * 9])
    for cut in range(len(data)):
        error = _reject(data[:cut])
        assert "truncated" in str(error), (cut, str(error))


def test_truncated_frame_message_names_both_sizes() -> None:
    data = pack_frame(frame_header(), [b"a" * 10, b"b" * 10])
    error = _reject(data[:-5])
    assert str(error) == f"truncated frame: {len(data) - 5} bytes, header and lengths say {len(data)}"


def test_every_single_bit_flip_of_a_small_frame_is_rejected() -> None:
    data = pack_frame(frame_header(), [b"payload", b"xy"])
    for bit in range(len(data) * 8):
        buf = bytearray(data)
        buf[bit // 8] ^= 0x80 >> (bit % 8)
        _reject(bytes(buf))


def test_wrong_magic_message() -> None:
    data = b"JPEG" + pack_frame(frame_header(), [b"x"])[4:]
    assert str(_reject(data)) == "not an ICMH frame (bad magic)"


def test_wrong_version_message() -> None:
    data = _patch(pack_frame(frame_header(), [b"x"]), OFF_VERSION, "B", 7)
    error = _reject(data)
    assert isinstance(error, UnsupportedVersionError)
    assert str(error).startswith("frame format version 7 is not supported (this decoder reads version")


def test_length_field_of_u32_max_is_rejected_before_any_allocation() -> None:
    data = _patch(pack_frame(frame_header(), [b"abc", b"de"]), HEADER_SIZE + 4, "I", 2**32 - 1)
    tracemalloc.start()
    try:
        error = _reject(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "string 1 says 4294967295 bytes" in str(error)
    assert peak < 64 * 1024


def test_n_strings_limit_comes_from_limits() -> None:
    data = pack_frame(frame_header(), [b"a", b"b", b"c"])
    assert parse_frame(data).strings == (b"a", b"b", b"c")
    error = _reject(data, Limits(max_strings=2))
    assert "bad n_strings 3" in str(error) and "1 to 2 strings" in str(error)


def test_image_size_limits_come_from_limits() -> None:
    data = pack_frame(frame_header(height=480, width=640), [b"x"])
    assert "bad height 480" in str(_reject(data, Limits(max_height=479)))
    assert "bad width 640" in str(_reject(data, Limits(max_width=639)))
    assert "max_pixels" in str(_reject(data, Limits(max_pixels=480 * 640 - 1)))


def test_corrupted_crc_trailer_is_rejected_as_crc_mismatch() -> None:
    data = bytearray(pack_frame(frame_header(), [b"abc"]))
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
    data = pack_frame(frame_header(), [b"abc"])
    view = memoryview(data + data)[::2]
    assert "contiguous" in str(_reject(view))


def test_released_memoryview_is_rejected() -> None:
    view = memoryview(pack_frame(frame_header(), [b"abc"]))
    view.release()
    assert "cannot be read" in str(_reject(view))


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
    data = pack_frame(frame_header(), [b"x" * 100])
    assert parse_frame(data, Limits(max_frame_bytes=len(data))).size_bytes == len(data)
    assert "max_frame_bytes" in str(_reject(data, Limits(max_frame_bytes=len(data) - 1)))
    # The size limit fires before the magic check.
    assert "max_frame_bytes" in str(_reject(b"JUNK" * 100, Limits(max_frame_bytes=64)))




# -- named malformed versions of a real frame, through the decoder -------------------------------
@pytest.fixture(scope="module")
def codec() -> FrameCodec:
    """The trained tiny codec, quality 1, with seeded random detection adapters."""
    if not TINY_WEIGHTS.is_file():
        pytest.fail(f"bundled weights {TINY_WEIGHTS} are missing")
    frame_codec = FrameCodec(load_base_codec("mbt2018-mean-tiny", 1))
    frame_codec.add_random_adapters(Task.DETECTION, seed=0)
    return frame_codec


@pytest.fixture(scope="module")
def frames(codec, kodak_dir) -> dict:
    """Real frames of 128×192 crops of kodim01..03: ``human`` and ``detection`` of the first, and
    ``batch``, the three crops as task human."""
    crops = [load_image(kodak_dir / f"kodim{i:02d}.png")[:, :CROP_H, :CROP_W] for i in (1, 2, 3)]
    batch = [frame.data for frame in codec.encode(crops, Task.HUMAN)]
    return {"human": batch[0], "detection": codec.encode(crops[:1], Task.DETECTION)[0].data, "batch": batch}


def assert_one_line(exc: BaseException) -> None:
    """The error's message is one non-empty line."""
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
    """Decoding ``data`` raises a ``kind`` with a one-line message; returns it."""
    decoded, error = decode_or_error(codec, data)
    assert error is not None, f"malformed frame of {len(data)} bytes decoded to {tuple(decoded.image.shape)}"
    assert isinstance(error, kind), f"expected {kind.__name__}, got {type(error).__name__}: {error}"
    return error


def check_decoded(decoded: DecodedFrame, header: FrameHeader) -> None:
    """A decoded frame has the header's image size and the header itself."""
    assert tuple(decoded.image.shape) == (3, header.height, header.width)
    assert decoded.header == header
    assert decoded.image.dtype == torch.float32


def _flipped(frame: bytes, byte: int, bit: int = 0) -> bytes:
    """``frame`` with one bit flipped (CRC not fixed)."""
    out = bytearray(frame)
    out[byte] ^= 1 << bit
    return bytes(out)


def _set_byte(frame: bytes, offset: int, value: int) -> bytes:
    """``frame`` with one byte replaced (CRC not fixed)."""
    out = bytearray(frame)
    out[offset] = value
    return bytes(out)


def _repacked(frame: bytes, **changes: object) -> bytes:
    """``frame`` packed again (valid container, valid CRC) with header fields changed."""
    parsed = parse_frame(frame)
    return pack_frame(dataclasses.replace(parsed.header, **changes), list(parsed.strings))


NAMED = {  # name: (malformed version of a real frame, error class the decoder raises, pattern of its message)
    "empty": (lambda f: b"", BitstreamError, r"truncated"),
    "truncated-to-1-byte": (lambda f: f[:1], BitstreamError, r"truncated"),
    "truncated-inside-header": (lambda f: f[:20], BitstreamError, r"truncated"),
    "truncated-after-lengths": (lambda f: f[:HEADER_SIZE + 4 * f[OFF_NSTRINGS] + 4], BitstreamError,
                                r"truncated|length"),
    "truncated-to-half": (lambda f: f[:len(f) // 2], BitstreamError, r"truncated|length"),
    "truncated-by-one-byte": (lambda f: f[:-1], BitstreamError, r"truncated|length"),
    "trailing-byte": (lambda f: f + b"\0", BitstreamError, r"trailing"),
    "bit-flip-in-header": (lambda f: _flipped(f, 6), BitstreamError, r"CRC"),
    "bit-flip-in-payload": (lambda f: _flipped(f, (HEADER_SIZE + len(f)) // 2, 3), BitstreamError, r"CRC"),
    "bit-flip-in-crc": (lambda f: _flipped(f, len(f) - 1, 7), BitstreamError, r"CRC"),
    "wrong-magic": (lambda f: b"JPEG" + f[4:], BitstreamError, r"magic"),
    "wrong-version-200": (lambda f: _set_byte(f, OFF_VERSION, 200), UnsupportedVersionError, r"version 200"),
    "wrong-version-0-crc-fixed": (lambda f: _patch(f, OFF_VERSION, "B", 0), UnsupportedVersionError, r"version 0"),
    "oversized-length-crc-fixed": (lambda f: _patch(f, HEADER_SIZE, "I", 0xFFFFFFFF), BitstreamError,
                                   r"length|truncated"),
    "oversized-n-strings-crc-fixed": (lambda f: _patch(f, OFF_NSTRINGS, "B", 255), BitstreamError, r"n_strings"),
    "inconsistent-latent-shape-crc-fixed": (lambda f: _patch(f, OFF_LATENT_H, "H", f[OFF_LATENT_H + 1] + 1),
                                            BitstreamError, r"latent"),
    "random-bytes": (lambda f: random.Random(0).randbytes(1000), BitstreamError, r"magic"),
    "random-bytes-after-magic-and-version": (lambda f: MAGIC + b"\x01" + random.Random(1).randbytes(2000),
                                             BitstreamError, r"truncated|length|CRC|n_strings"),
    "over-the-16-MiB-limit": (lambda f: bytes(16 * 1024 * 1024 + 1), FrameTooLargeError, r"max_frame_bytes"),
    "unknown-codec-id": (lambda f: _repacked(f, codec_id=200), CodecMismatchError, r"codec id 200"),
    "unknown-task-id": (lambda f: _repacked(f, task_id=9), BitstreamError, r"task id 9"),
    "unknown-quality": (lambda f: _repacked(f, quality=9), CodecMismatchError, r"quality 9"),
    "other-base-weights": (lambda f: _repacked(f, base_hash=bytes(4)), CodecMismatchError, r"weights"),
    "other-adapters": (lambda f: _repacked(f, task_id=1, adapter_hash=bytes(8)), AdapterMismatchError, r"adapters"),
    "altered-index-check": (lambda f: _repacked(f, index_check=parse_frame(f).header.index_check ^ 1),
                            IndexMismatchError, r"indexes"),
}


def test_untouched_real_frames_decode_to_the_crop_size(codec, frames):
    for name, task in (("human", Task.HUMAN), ("detection", Task.DETECTION)):
        decoded, error = decode_or_error(codec, frames[name])
        assert error is None, error
        assert tuple(decoded.image.shape) == (3, CROP_H, CROP_W)
        assert decoded.task is task
    assert [tuple(d.image.shape) for d in codec.decode(frames["batch"])] == [(3, CROP_H, CROP_W)] * 3


@pytest.mark.parametrize("name", NAMED)
def test_a_named_malformed_frame_ends_in_its_error_with_a_one_line_message(codec, frames, name):
    make, kind, pattern = NAMED[name]
    error = must_fail(codec, make(frames["human"]), kind)
    assert re.search(pattern, str(error), re.IGNORECASE), f"expected /{pattern}/ in: {error}"


@pytest.mark.parametrize("flip", [1, 0x80000000, 0xFFFFFFFF])
def test_an_altered_index_check_in_a_valid_container_raises_index_mismatch(codec, frames, flip):
    altered = _repacked(frames["human"], index_check=parse_frame(frames["human"]).header.index_check ^ flip)
    parse_frame(altered)  # the container (CRC included) is still valid
    must_fail(codec, altered, IndexMismatchError)


def test_one_altered_index_check_in_a_batch_fails_the_batch(codec, frames):
    batch = list(frames["batch"])
    batch[1] = _repacked(batch[1], index_check=parse_frame(batch[1]).header.index_check ^ 0x1234)
    with pytest.raises(IndexMismatchError, match="indexes"):
        codec.decode(batch)


# -- valid container, hostile content --------------------------------------------------------------
def sizes_strategy():
    return st.tuples(st.integers(1, MAX_DECODED_SIDE), st.integers(1, MAX_DECODED_SIDE))


def fuzz(n: int):
    """Hypothesis settings for ``n`` examples through the real decoder (no deadline, no database)."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


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
    elif task_id not in {task.wire_id for task in Task}:
        assert isinstance(error, BitstreamError), error
    elif task_id > 1 or header.adapter_hash != (det.adapter_hash if task_id == 1 else bytes(8)):  # 0 human, 1 detection
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
