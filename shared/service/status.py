"""gRPC status codes by number (``FrameError.code`` carries the number)."""

from __future__ import annotations

import grpc

STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The :class:`grpc.StatusCode` whose number is ``number`` (``UNKNOWN`` for any other number)."""
    return STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
