"""Credential files both ends read: PEM certificates and keys, bearer tokens.

The cloud server reads its certificate, key, client CA and accepted tokens; the edge
client reads the server CA, its own certificate and key, and its token. Every file is
checked here, before any work, so a bad one ends in one :class:`InvalidInputError`
line instead of a TLS handshake that fails later with a vague message. The wire form
of a token (``authorization: Bearer <token>``) is defined here too, once for both ends.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from icmh.errors import InvalidInputError

AUTHORIZATION_KEY = "authorization"  # gRPC metadata keys are lower case
BEARER_SCHEME = "bearer"


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate chain and its private key (checked to belong together)."""

    cert_chain: bytes
    private_key: bytes


def read_file(path: Path, what: str) -> bytes:
    """Return the bytes of ``path``.

    Raises:
        InvalidInputError: the file is missing, unreadable or empty.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise InvalidInputError(f"{what} {path} is empty")
    return data


def read_ca_bundle(path: Path, what: str = "CA certificate file") -> bytes:
    """Return the PEM bytes of a CA bundle (one or more certificates).

    Raises:
        InvalidInputError: unreadable, empty, or not a PEM certificate.
    """
    data = read_file(path, what)
    try:  # PEM blocks are ASCII; text around them (comments in any encoding) is skipped
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii", "ignore"))
    except (ssl.SSLError, ValueError):
        raise InvalidInputError(f"{what} {path} holds no PEM certificate") from None
    return data


def read_key_pair(cert: Optional[Path], key: Optional[Path], cert_flag: str, key_flag: str) -> Optional[KeyPair]:
    """Return the certificate chain and key of ``cert`` and ``key``, or None if neither is given.

    ``cert_flag`` and ``key_flag`` name the options in the messages.

    Raises:
        InvalidInputError: only one of the two is given; a file is unreadable or empty; the
            files are not a PEM certificate and a matching unencrypted PEM private key.
    """
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = (cert_flag, key_flag) if key is None else (key_flag, cert_flag)
        raise InvalidInputError(f"{given} needs {missing}")
    pair = KeyPair(read_file(cert, "certificate file"), read_file(key, "private key file"))
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise InvalidInputError(f"private key {key} is encrypted; give an unencrypted PEM key "
                                f"(openssl pkey -in {key} -out plain.key)") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise InvalidInputError(f"private key {key} does not match certificate {cert}") from None
        raise InvalidInputError(f"{cert} and {key} are not a PEM certificate and its PEM private key") from None
    return pair


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKey()


def parse_tokens(text: str, source: str) -> List[str]:
    """Return the tokens of ``text``: one per line; blank lines and ``#`` comments are ignored.

    Raises:
        InvalidInputError: no token at all, or a token that cannot travel in a header
            (whitespace, non-printable or non-ASCII characters).
    """
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        check_token(token, source)
        tokens.append(token)
    if not tokens:
        raise InvalidInputError(f"{source} holds no token")
    return tokens


def check_token(token: str, source: str) -> str:
    """Return ``token`` if it can be sent as ``Bearer <token>``.

    Raises:
        InvalidInputError: it is empty or has whitespace, non-printable or non-ASCII characters.
    """
    if not token or not all("!" <= char <= "~" for char in token):
        raise InvalidInputError(f"{source}: a token must be printable ASCII without spaces")
    return token


def read_tokens(path: Path) -> List[str]:
    """Return the tokens of a tokens file (see :func:`parse_tokens`).

    Raises:
        InvalidInputError: the file is unreadable, not UTF-8 or holds no token.
    """
    try:
        text = read_file(path, "tokens file").decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"tokens file {path} is not UTF-8 text") from None
    return parse_tokens(text, f"tokens file {path}")


def bearer_metadata(token: str) -> tuple:
    """Return the gRPC metadata that carries ``token``: ``(("authorization", "Bearer <token>"),)``."""
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),)


def bearer_token(value: str) -> Optional[str]:
    """Return the token of an ``authorization`` value ``Bearer <token>`` (scheme case-insensitive), else None."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != BEARER_SCHEME:
        return None
    return token.strip() or None
