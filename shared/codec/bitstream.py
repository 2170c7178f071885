"""The one-frame bitstream container (format versions 1 to 3).

A frame carries the entropy-coded strings of one image together with everything the
decoder needs to check that it can decode them: which codec and quality wrote it,
which task adapters were used, a fingerprint of the base codec weights and a CRC over
the entropy-coding indexes. All integers are big-endian::

    offset size field
    0      4    magic b"ICMH"
    4      1    format version (1, 2 or 3)
    5      1    flags (must be 0 in version 1; version 2: bit 0 = universal; version 3: bit 0
                universal, bit 1 = importance map; other bits 0)
    6      1    codec_id (u8, 1..255; 0 invalid)
    7      1    quality (u8, 1..255; 0 invalid)
    8      1    task_id (u8; 0 in universal frames)
    9      1    n_strings (u8, 1..limits.max_strings)
    10     2    height (u16, >= 1)
    12     2    width (u16, >= 1)
    14     2    latent_height (u16) -- must equal ceil(height / 64)
    16     2    latent_width (u16)  -- must equal ceil(width / 64)
    18     8    adapter_hash (all zero = no adapters; universal frames: the shared encoder's)
    26     4    base_hash (fingerprint of the base codec weights)
    30     4    index_check (u32, CRC32 over the entropy-coding indexes)
    34     4*n  string lengths (u32 each)
    ...         the strings, concatenated in order
    last 4      frame CRC32 (zlib.crc32) over every byte before it

Version 2 adds one flag and nothing else. A *universal* frame was coded by the shared
encoder (the base encoder, or task-agnostic encoder adapters, named by ``adapter_hash``)
for every consumer: the decoder picks the consumers (decoder heads) at decode time, and
``task_id`` is 0. Single-task frames are still written as version 1, byte for byte as
before, so readers of version 1 keep reading them; a version-1 reader refuses a universal
frame with :class:`~icmh.errors.UnsupportedVersionError`.

Version 3 adds the *importance* flag (bit 1): the frame's last string is an entropy-coded
level map that sets the quantiser per 64×64 block (:mod:`icmh.models.importance`). Only
frames that carry a map are written as version 3; a frame whose map is all zero omits the
string and the flag and is written as before, byte for byte.

:func:`pack_frame` raises :class:`ValueError` for a programming error (a header that
cannot be written). :func:`parse_frame` treats its input as untrusted: every malformed
input ends in one :class:`~icmh.errors.BitstreamError` (or its subclass
:class:`~icmh.errors.UnsupportedVersionError`) whose message is one line, and no
buffer is ever sized by a field that has not been checked.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from icmh.errors import BitstreamError, FrameTooLargeError, UnsupportedVersionError
from icmh.hashing import ADAPTER_ID_BYTES, FINGERPRINT_BYTES

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "SINGLE_TASK_VERSION",
    "UNIVERSAL_FLAG",
    "IMPORTANCE_FLAG",
    "LATENT_STRIDE",
    "HEADER_SIZE",
    "CRC_SIZE",
    "MIN_FRAME_SIZE",
    "Limits",
    "DEFAULT_LIMITS",
    "FrameHeader",
    "Frame",
    "latent_shape",
    "pack_frame",
    "parse_frame",
    "bits_per_pixel",
]

MAGIC = b"ICMH"
FORMAT_VERSION = 3  # the highest version this module reads and writes
SINGLE_TASK_VERSION = 1  # what frames without flags are written as
UNIVERSAL_FLAG = 0x01
IMPORTANCE_FLAG = 0x02  # format version 3: the frame carries an importance level map (a third string)
IMPORTANCE_VERSION = 3
_KNOWN_FLAGS = {1: 0x00, 2: UNIVERSAL_FLAG, 3: UNIVERSAL_FLAG | IMPORTANCE_FLAG}  # version -> the flag bits it defines
LATENT_STRIDE = 64

_HEADER = struct.Struct(">4sBBBBBBHHHH8s4sI")
HEADER_SIZE = _HEADER.size  # 34
CRC_SIZE = 4
_LENGTH_SIZE = 4
_CRC = struct.Struct(">I")
#: The smallest well-formed frame: fixed header, one length entry, an empty string, CRC.
MIN_FRAME_SIZE = HEADER_SIZE + _LENGTH_SIZE + CRC_SIZE

_U8_MAX = 0xFF
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF

assert HEADER_SIZE == 34


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Limits:
    """Upper bounds the parser enforces before it trusts any field of a frame.

    ``max_frame_bytes`` bounds the whole serialized frame, ``max_height`` /
    ``max_width`` / ``max_pixels`` / ``max_aspect`` (long side over short side) bound the
    image size and ``max_strings`` the number of entropy-coded strings (at most 255, the
    range of the u8 field). The defaults are the container's; a server sets its own pixel
    budget (``cloud-server --max-pixels``).
    """

    max_frame_bytes: int = 16 * 1024 * 1024
    max_height: int = 4096
    max_width: int = 4096
    max_pixels: int = 3840 * 2160
    max_strings: int = 4
    max_aspect: int = 32

    def __post_init__(self) -> None:
        """Reject limits that no frame could satisfy.

        Raises:
            ValueError: a limit is not a positive int, or ``max_strings`` exceeds 255.
        """
        for name in ("max_frame_bytes", "max_height", "max_width", "max_pixels", "max_strings", "max_aspect"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.max_strings > _U8_MAX:
            raise ValueError(f"Limits.max_strings must be at most {_U8_MAX}, got {self.max_strings}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class FrameHeader:
    """The fields of a frame header that the writer chooses.

    ``latent_height`` / ``latent_width`` are derived from the image size and the flags
    byte is always 0 in format version 1, so neither is stored here. The dataclass does
    not validate itself; :func:`pack_frame` does.
    """

    codec_id: int
    quality: int
    task_id: int
    height: int
    width: int
    adapter_hash: bytes  # exactly 8 bytes; all zero = no adapters
    base_hash: bytes  # exactly 4 bytes
    index_check: int  # 0 .. 2**32 - 1
    universal: bool = False  # coded once for every consumer (format version 2)
    importance: bool = False  # carries an importance level map as its last string (format version 3)

    @property
    def version(self) -> int:
        """The format version this header is written in (3 with an importance map, else 2 only for
        universal frames, else 1)."""
        if self.importance:
            return IMPORTANCE_VERSION
        return 2 if self.universal else SINGLE_TASK_VERSION

    @property
    def flags(self) -> int:
        """The flags byte."""
        return (UNIVERSAL_FLAG if self.universal else 0) | (IMPORTANCE_FLAG if self.importance else 0)

    @property
    def latent_height(self) -> int:
        """Return ``ceil(height / 64)``, the latent height the frame must declare."""
        return -(-self.height // LATENT_STRIDE)

    @property
    def latent_width(self) -> int:
        """Return ``ceil(width / 64)``, the latent width the frame must declare."""
        return -(-self.width // LATENT_STRIDE)


@dataclass(frozen=True)
class Frame:
    """A parsed frame: its header, its strings and its total serialized size in bytes."""

    header: FrameHeader
    strings: tuple[bytes, ...]
    size_bytes: int


def latent_shape(height: int, width: int) -> tuple[int, int]:
    """Return the latent grid size ``(ceil(height / 64), ceil(width / 64))``.

    Raises:
        ValueError: ``height`` or ``width`` is not a positive int.
    """
    if not _is_int(height) or height < 1:
        raise ValueError(f"height must be a positive int, got {height!r}")
    if not _is_int(width) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    return -(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE)


def bits_per_pixel(frame_size_bytes: int, height: int, width: int) -> float:
    """Return ``frame_size_bytes * 8 / (height * width)``.

    Pass the size of the whole serialized frame (``Frame.size_bytes`` or
    ``len(pack_frame(...))``) so that every byte counts: header, lengths table,
    strings and CRC.

    Raises:
        ValueError: the size is negative or the image size is not positive.
    """
    if not _is_int(frame_size_bytes) or frame_size_bytes < 0:
        raise ValueError(f"frame_size_bytes must be a non-negative int, got {frame_size_bytes!r}")
    if not _is_int(height) or height < 1:
        raise ValueError(f"height must be a positive int, got {height!r}")
    if not _is_int(width) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    return frame_size_bytes * 8 / (height * width)


def _check_header(header: FrameHeader, limits: Limits) -> None:
    if not isinstance(header, FrameHeader):
        raise ValueError(f"header must be a FrameHeader, got {type(header).__name__}")
    for name, low in (("codec_id", 1), ("quality", 1), ("task_id", 0)):
        value = getattr(header, name)
        if not _is_int(value) or not low <= value <= _U8_MAX:
            raise ValueError(f"{name} must be an int in {low}..{_U8_MAX}, got {value!r}")
    for name, limit in (("height", limits.max_height), ("width", limits.max_width)):
        value = getattr(header, name)
        top = min(limit, _U16_MAX)
        if not _is_int(value) or not 1 <= value <= top:
            raise ValueError(f"{name} must be an int in 1..{top}, got {value!r}")
    if header.height * header.width > limits.max_pixels:
        raise ValueError(
            f"image of {header.height}x{header.width} pixels is over the limit of "
            f"{limits.max_pixels} pixels (max_pixels)"
        )
    for name, size in (("adapter_hash", ADAPTER_ID_BYTES), ("base_hash", FINGERPRINT_BYTES)):
        value = getattr(header, name)
        if not isinstance(value, bytes) or len(value) != size:
            raise ValueError(f"{name} must be exactly {size} bytes, got {value!r}")
    if not _is_int(header.index_check) or not 0 <= header.index_check <= _U32_MAX:
        raise ValueError(f"index_check must be an int in 0..{_U32_MAX}, got {header.index_check!r}")
    if header.universal and header.task_id != 0:
        raise ValueError(f"a universal frame has task_id 0, got {header.task_id}")


def pack_frame(
    header: FrameHeader, strings: Sequence[bytes], limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Serialize one frame.

    ``strings`` is a sequence of 1 to ``limits.max_strings`` bytes-like objects (the
    entropy-coded strings, in order).

    Returns:
        The frame: fixed header, lengths table, strings and the CRC32 trailer.

    Raises:
        ValueError: a header field is out of range (ids, image size or its limits,
            hash lengths, ``index_check``), ``strings`` has the wrong count or type,
            or the frame would exceed ``limits.max_frame_bytes``.
    """
    _check_header(header, limits)
    if isinstance(strings, (bytes, bytearray, memoryview, str)) or not isinstance(strings, Sequence):
        raise ValueError(
            f"strings must be a sequence of bytes objects, got {type(strings).__name__}"
        )
    n = len(strings)
    if not 1 <= n <= limits.max_strings:
        raise ValueError(f"a frame carries 1 to {limits.max_strings} strings, got {n}")
    payload: list[bytes] = []
    for i, s in enumerate(strings):
        if not isinstance(s, (bytes, bytearray, memoryview)):
            raise ValueError(f"strings[{i}] must be bytes, got {type(s).__name__}")
        b = bytes(s)
        if len(b) > _U32_MAX:
            raise ValueError(f"strings[{i}] is {len(b)} bytes, over the u32 length field")
        payload.append(b)
    total = HEADER_SIZE + _LENGTH_SIZE * n + sum(len(b) for b in payload) + CRC_SIZE
    if total > limits.max_frame_bytes:
        raise ValueError(
            f"frame would be {total} bytes, over the limit of {limits.max_frame_bytes} "
            "bytes (max_frame_bytes)"
        )
    fixed = _HEADER.pack(
        MAGIC,
        header.version,
        header.flags,
        header.codec_id,
        header.quality,
        header.task_id,
        n,
        header.height,
        header.width,
        header.latent_height,
        header.latent_width,
        header.adapter_hash,
        header.base_hash,
        header.index_check,
    )
    body = b"".join([fixed, struct.pack(f">{n}I", *(len(b) for b in payload)), *payload])
    return body + _CRC.pack(zlib.crc32(body))


def parse_frame(
    data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
) -> Frame:
    """Parse and check one frame from untrusted bytes.

    Checks run in this order: total size against ``limits.max_frame_bytes`` (before
    anything is copied), minimum size, magic, format version, ``n_strings``, the
    lengths table and the exact total size (truncated / trailing bytes), the frame
    CRC, and then the header fields (flags, codec_id, quality, image size and limits,
    latent shape). The input is read through a memoryview; only the returned strings
    and hashes are copied.

    Returns:
        The parsed :class:`Frame`; ``size_bytes`` is the number of bytes in ``data``.

    Raises:
        UnsupportedVersionError: the frame was written in another format version.
        BitstreamError: the input is not a bytes-like object or is malformed in any
            other way (too big, truncated, trailing bytes, bad magic, CRC mismatch, a
            field out of range). The message is always one line.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(
            f"expected a frame as bytes, bytearray or memoryview, got {type(data).__name__}"
        )
    try:
        outer = memoryview(data)
    except ValueError as exc:  # a released memoryview
        raise BitstreamError(f"frame buffer cannot be read ({exc})".replace("\n", " ")) from exc
    try:
        with outer:
            size = outer.nbytes
            if size > limits.max_frame_bytes:
                raise FrameTooLargeError(
                    f"frame is {size} bytes, over the limit of {limits.max_frame_bytes} "
                    "bytes (max_frame_bytes)"
                )
            if not outer.c_contiguous:
                raise BitstreamError("frame buffer is not a contiguous run of bytes")
            try:
                view = outer.cast("B") if outer.format != "B" or outer.ndim != 1 else outer
            except TypeError as exc:
                raise BitstreamError(
                    f"frame buffer has item format {outer.format!r}, not plain bytes"
                ) from exc
            try:
                return _parse_view(view, size, limits)
            finally:
                if view is not outer:
                    view.release()
    except BitstreamError:
        raise
    except Exception as exc:  # safety net: nothing but BitstreamError may escape
        raise BitstreamError(f"malformed frame ({type(exc).__name__})") from exc


def check_image_size(height: int, width: int, limits: Limits, *, aspect: bool = False) -> None:
    """Raise :class:`BitstreamError` for a zero size and :class:`FrameTooLargeError` for a size
    over ``limits`` (height, width, pixels; with ``aspect`` also the aspect ratio, which the
    frame codec checks and the container itself does not)."""
    for name, value, limit in (("height", height, limits.max_height), ("width", width, limits.max_width)):
        if not 1 <= value <= limit:
            error = BitstreamError if value < 1 else FrameTooLargeError
            raise error(f"bad {name} {value}: must be 1..{limit} (max_{name})")
    if height * width > limits.max_pixels:
        raise FrameTooLargeError(
            f"image of {height}x{width} pixels is over the limit of {limits.max_pixels} pixels (max_pixels)")
    if aspect and max(height, width) > limits.max_aspect * min(height, width):
        raise FrameTooLargeError(
            f"image of {height}x{width} pixels is more elongated than {limits.max_aspect}:1 (max_aspect)")


def _parse_view(mv: memoryview, size: int, limits: Limits) -> Frame:
    if size < MIN_FRAME_SIZE:
        raise BitstreamError(
            f"truncated frame: {size} bytes, a frame is at least {MIN_FRAME_SIZE} bytes"
        )
    if mv[:4] != MAGIC:
        raise BitstreamError("not an ICMH frame (bad magic)")
    version = mv[4]
    if version not in _KNOWN_FLAGS:
        raise UnsupportedVersionError(
            f"frame format version {version} is not supported "
            f"(this decoder reads versions 1 to {FORMAT_VERSION})"
        )
    (
        _magic,
        _version,
        flags,
        codec_id,
        quality,
        task_id,
        n_strings,
        height,
        width,
        latent_h,
        latent_w,
        adapter_hash,
        base_hash,
        index_check,
    ) = _HEADER.unpack_from(mv, 0)

    # Structure: everything needed to locate the strings and the trailer.
    if not 1 <= n_strings <= limits.max_strings:
        raise BitstreamError(
            f"bad n_strings {n_strings}: a frame carries 1 to {limits.max_strings} strings "
            "(max_strings)"
        )
    table_end = HEADER_SIZE + _LENGTH_SIZE * n_strings
    if size < table_end + CRC_SIZE:
        raise BitstreamError(
            f"truncated frame: {size} bytes, header says {n_strings} strings and needs at "
            f"least {table_end + CRC_SIZE}"
        )
    lengths = struct.unpack_from(f">{n_strings}I", mv, HEADER_SIZE)
    room = size - table_end - CRC_SIZE
    for i, length in enumerate(lengths):
        if length > room:
            raise BitstreamError(
                f"truncated frame or bad length: string {i} says {length} bytes but only "
                f"{room} bytes follow the lengths table"
            )
    expected = table_end + sum(lengths) + CRC_SIZE
    if size < expected:
        raise BitstreamError(
            f"truncated frame: {size} bytes, header and lengths say {expected}"
        )
    if size > expected:
        raise BitstreamError(
            f"trailing bytes after frame: {size} bytes, header and lengths say {expected}"
        )

    # Integrity.
    body_end = size - CRC_SIZE
    (stored_crc,) = _CRC.unpack_from(mv, body_end)
    if zlib.crc32(mv[:body_end]) != stored_crc:
        raise BitstreamError("frame is corrupted (CRC mismatch)")

    # Fields.
    if flags & ~_KNOWN_FLAGS[version]:
        raise BitstreamError(
            f"bad flags 0x{flags:02x}: frame format version {version} defines "
            f"0x{_KNOWN_FLAGS[version]:02x}"
        )
    universal = bool(flags & UNIVERSAL_FLAG)
    if universal and task_id != 0:
        raise BitstreamError(f"bad task_id {task_id}: universal frames have task_id 0")
    if codec_id == 0:
        raise BitstreamError("bad codec_id 0: codec ids start at 1")
    if quality == 0:
        raise BitstreamError("bad quality 0: qualities start at 1")
    check_image_size(height, width, limits)
    want_h, want_w = latent_shape(height, width)
    if (latent_h, latent_w) != (want_h, want_w):
        raise BitstreamError(
            f"inconsistent latent shape {latent_h}x{latent_w}: an image of {height}x{width} "
            f"has a {want_h}x{want_w} latent (stride {LATENT_STRIDE})"
        )

    strings = []
    offset = table_end
    for length in lengths:
        strings.append(bytes(mv[offset : offset + length]))
        offset += length
    header = FrameHeader(
        codec_id=codec_id,
        quality=quality,
        task_id=task_id,
        height=height,
        width=width,
        adapter_hash=bytes(adapter_hash),
        base_hash=bytes(base_hash),
        index_check=index_check,
        universal=universal,
        importance=bool(flags & IMPORTANCE_FLAG),
    )
    return Frame(header=header, strings=tuple(strings), size_bytes=size)
