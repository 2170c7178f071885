"""Errors that end in one clear line for the user.

Every error a user can cause (bad input file, missing weights, mismatched adapters)
derives from :class:`IcmhError`. Command-line tools catch ``IcmhError`` and print its
message on one line; the server maps each class to a gRPC status code.
"""

from __future__ import annotations


class IcmhError(Exception):
    """Base class: ``str(error)`` is one line that says what is wrong and what to do."""


class BitstreamError(IcmhError):
    """A frame is malformed: truncated, corrupted, wrong magic, bad lengths, ..."""


class FrameTooLargeError(BitstreamError):
    """A frame is over a size limit of this decoder (bytes, pixels, width, height, aspect ratio)."""


class UnsupportedVersionError(BitstreamError):
    """A frame was written in a container format version this decoder does not read."""


class IndexMismatchError(IcmhError):
    """The decoder derived other entropy-coding indexes than the encoder (data loss)."""


class CodecMismatchError(IcmhError):
    """A frame was encoded with other base codec weights than the decoder holds."""


class AdapterMismatchError(IcmhError):
    """Adapters do not match a frame, a codec or their own metadata."""


class WeightsMissingError(IcmhError):
    """A pretrained weight file is neither in the cache nor downloadable."""


class InvalidInputError(IcmhError):
    """A user-supplied value (image, option, file) cannot be used."""
