"""Which gRPC status code each user-caused error maps to (SYSTEM.md's table)."""

from __future__ import annotations

from typing import Dict, Type

import grpc

from icmh.errors import (AdapterMismatchError, BitstreamError, CodecMismatchError, FrameTooLargeError, IcmhError,
                         IndexMismatchError, InvalidInputError, WeightsMissingError)

# most specific first: the first class the error is an instance of decides
STATUS_BY_ERROR: Dict[Type[IcmhError], grpc.StatusCode] = {
    IndexMismatchError: grpc.StatusCode.DATA_LOSS,
    FrameTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BitstreamError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    CodecMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    AdapterMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    WeightsMissingError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(error: IcmhError) -> grpc.StatusCode:
    """The status code that tells the client who must act on ``error``."""
    for error_type, code in STATUS_BY_ERROR.items():
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT
