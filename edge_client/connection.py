"""How the edge client reaches the cloud server: channel, TLS, token, load balancing.

One channel per run. Targets are anything gRPC resolves: ``host:port``,
``dns:///name:port`` (every address of the name, e.g. a Kubernetes headless Service)
or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``. The channel balances calls round-robin over
all addresses; a stream stays on one server for its life, so ``--streams N`` spreads
frames over up to N servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

import grpc

from icmh.service.credentials import KeyPair, bearer_metadata, check_token, read_ca_bundle, read_key_pair, read_tokens
from icmh.errors import InvalidInputError

TOKEN_ENV = "ICMH_TOKEN"
# the channel's own reconnect backoff: short, so a restarted server is found within seconds
RECONNECT_BACKOFF_MS = {"grpc.initial_reconnect_backoff_ms": 200, "grpc.min_reconnect_backoff_ms": 200,
                        "grpc.max_reconnect_backoff_ms": 5000}


@dataclass(frozen=True)
class ClientSecurity:
    """TLS settings and bearer token of the edge client; the default is plaintext without a token."""

    server_ca: Optional[bytes] = None
    pair: Optional[KeyPair] = None
    server_name: Optional[str] = None
    token: Optional[str] = None

    @property
    def tls(self) -> bool:
        """Whether the channel uses TLS (it does when a server CA is given)."""
        return self.server_ca is not None

    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        """The metadata each call carries: the ``authorization`` header when there is a token."""
        return bearer_metadata(self.token) if self.token else ()

    def describe(self) -> str:
        """A short label for messages, e.g. ``mutual TLS, token``."""
        transport = "plaintext" if not self.tls else "mutual TLS" if self.pair else "TLS"
        return f"{transport}, {'token' if self.token else 'no token'}"


def load_client_security(server_ca: Optional[Path] = None, cert: Optional[Path] = None, key: Optional[Path] = None,
                         server_name: Optional[str] = None, token_file: Optional[Path] = None,
                         environ: Mapping[str, str] = os.environ) -> ClientSecurity:
    """Read ``--tls-ca``, ``--tls-cert``/``--tls-key``, ``--tls-server-name`` and the token.

    The token comes from ``token_file`` (exactly one token; ``#`` comments allowed), else
    from ``$ICMH_TOKEN`` if set and not empty.

    Raises:
        InvalidInputError: a TLS option without ``--tls-ca``, a certificate without its key,
            or a file that is unreadable, empty or not what it should be.
    """
    if server_ca is None:
        given = [flag for flag, value in (("--tls-cert", cert), ("--tls-key", key),
                                          ("--tls-server-name", server_name)) if value is not None]
        if given:
            raise InvalidInputError(f"{given[0]} needs --tls-ca (the CA that signed the server's certificate)")
    return ClientSecurity(
        server_ca=None if server_ca is None else read_ca_bundle(server_ca, "server CA file"),
        pair=read_key_pair(cert, key, "--tls-cert", "--tls-key"),
        server_name=server_name, token=_token(token_file, environ))


def _token(token_file: Optional[Path], environ: Mapping[str, str]) -> Optional[str]:
    if token_file is not None:
        tokens = read_tokens(token_file)
        if len(tokens) != 1:
            raise InvalidInputError(f"token file {token_file} holds {len(tokens)} tokens; the client sends one")
        return tokens[0]
    value = environ.get(TOKEN_ENV, "").strip()
    return check_token(value, TOKEN_ENV) if value else None


def channel_options(max_message_bytes: int, security: ClientSecurity) -> List[Tuple[str, object]]:
    """Channel arguments: message sizes, round-robin balancing, reconnect backoff, TLS name override."""
    options: List[Tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.lb_policy_name", "round_robin"), *RECONNECT_BACKOFF_MS.items()]
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return options


def open_channel(target: str, security: ClientSecurity, max_message_bytes: int) -> grpc.aio.Channel:
    """Open a grpc.aio channel to ``target``: TLS (with a client certificate for mTLS) or plaintext."""
    options = channel_options(max_message_bytes, security)
    if not security.tls:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=security.server_ca,
        private_key=security.pair.private_key if security.pair else None,
        certificate_chain=security.pair.cert_chain if security.pair else None)
    return grpc.aio.secure_channel(target, credentials, options=options)
