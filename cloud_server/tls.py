"""TLS and mutual TLS for the gRPC port.

Off by default (a plaintext port on loopback). ``--tls-cert`` + ``--tls-key`` turn on
TLS; adding ``--tls-client-ca`` requires every client to present a certificate signed
by that CA (mutual TLS): a client without one, or with one from another CA, fails the
handshake and never reaches a handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import grpc

from icmh.service.credentials import KeyPair, read_ca_bundle, read_key_pair
from icmh.errors import InvalidInputError


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and the CA its clients' certificates must come from."""

    pair: KeyPair
    client_ca: Optional[bytes] = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (mutual TLS)."""
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        """The gRPC server credentials for ``server.add_secure_port``."""
        return grpc.ssl_server_credentials([(self.pair.private_key, self.pair.cert_chain)],
                                           root_certificates=self.client_ca, require_client_auth=self.mutual)


def load_server_tls(cert: Optional[Path], key: Optional[Path], client_ca: Optional[Path]) -> Optional[ServerTls]:
    """Read ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca``; None when TLS is off.

    Raises:
        InvalidInputError: a certificate without its key (or the reverse), a client CA
            without a server certificate, or a file that is unreadable, empty or not PEM.
    """
    pair = read_key_pair(cert, key, "--tls-cert", "--tls-key")
    if pair is None:
        if client_ca is not None:
            raise InvalidInputError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    return ServerTls(pair, None if client_ca is None else read_ca_bundle(client_ca, "client CA file"))
