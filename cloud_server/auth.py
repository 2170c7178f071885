"""Bearer-token authentication of the gRPC port, as a grpc.aio server interceptor.

Off unless tokens are given (``--auth-tokens-file`` or ``ICMH_AUTH_TOKENS``). With
tokens, every call must carry ``authorization: Bearer <token>`` with one of them;
otherwise it ends with UNAUTHENTICATED before its handler runs, so nothing the client
sent is decoded, queued or counted as a processed frame. The standard health service
and server reflection stay open: Kubernetes gRPC probes and load balancers send no
token, and neither service reveals more than the service names and serving status.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every
accepted token without stopping at a match, so the time taken says nothing about how
close a guess was or which token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Awaitable, Callable, List, Mapping, Optional, Sequence

import grpc

from icmh.service.credentials import AUTHORIZATION_KEY, bearer_token, parse_tokens, read_tokens

TOKENS_ENV = "ICMH_AUTH_TOKENS"
# reachable without a token: probes and load balancers cannot send one
EXEMPT_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


def load_tokens(path: Optional[Path], environ: Mapping[str, str] = os.environ) -> List[str]:
    """Return the accepted tokens: those of ``path`` if given, else of ``$ICMH_AUTH_TOKENS``.

    ``ICMH_AUTH_TOKENS`` is a comma-separated list; unset or empty means no tokens (auth
    off). An empty tokens file, or a variable with only separators, is an error.

    Raises:
        InvalidInputError: the file is unreadable or holds no token; a token has spaces or
            non-printable characters.
    """
    if path is not None:
        return read_tokens(path)
    value = environ.get(TOKENS_ENV, "")
    if not value:
        return []
    return parse_tokens(value.replace(",", "\n"), TOKENS_ENV)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without an accepted bearer token (UNAUTHENTICATED), except exempt services."""

    def __init__(self, tokens: Sequence[str], on_refused: Callable[[], None] = lambda: None) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._digests = [_digest(token) for token in tokens]
        self._on_refused = on_refused

    def accepts(self, token: str) -> bool:
        """Return whether ``token`` is one of the accepted tokens (constant time per token)."""
        presented = _digest(token)
        matched = False
        for digest in self._digests:  # no early exit: every token is compared
            matched |= hmac.compare_digest(presented, digest)
        return matched

    def refusal(self, metadata: Optional[Sequence]) -> Optional[str]:
        """Return why a call with ``metadata`` is refused, or None if it carries an accepted token."""
        value = next((item[1] for item in metadata or () if item[0] == AUTHORIZATION_KEY), None)
        if not isinstance(value, str):
            return "missing credentials: send 'authorization: Bearer <token>'"
        token = bearer_token(value)
        if token is None:
            return "malformed authorization metadata: expected 'Bearer <token>'"
        return None if self.accepts(token) else "invalid token"

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Optional[grpc.RpcMethodHandler]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Optional[grpc.RpcMethodHandler]:
        """Hand the call on if it is exempt or authenticated; otherwise answer UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        if handler is None or _service(handler_call_details.method) in EXEMPT_SERVICES:
            return handler
        reason = self.refusal(handler_call_details.invocation_metadata)
        if reason is None:
            return handler
        self._on_refused()
        return _refusing(handler, reason)


def _service(method: str) -> str:
    """``/package.Service/Method`` -> ``package.Service``."""
    return method.lstrip("/").partition("/")[0]


def _refusing(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED at once."""

    async def refuse(_request, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
