"""Test certificates made on the spot with ``cryptography``: a CA, a server, good and foreign clients."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files of :func:`make_pki`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    foreign_ca: Path
    foreign_client_cert: Path  # signed by ``foreign_ca``, which the server does not trust
    foreign_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Optional[Tuple[x509.Certificate, object]],
                 server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2)))
    if issuer is None:  # a self-signed CA
        builder = builder.issuer_name(_name(subject)).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True)
        return builder.sign(key, hashes.SHA256())
    issuer_cert, issuer_key = issuer
    builder = builder.issuer_name(issuer_cert.subject).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, stem: str, cert: x509.Certificate, key: Optional[ec.EllipticCurvePrivateKey]) -> None:
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def make_pki(folder: Path) -> Pki:
    """Write a CA, a server certificate (SAN 127.0.0.1 and localhost), a client certificate of
    that CA, and a client certificate of another CA to ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "server", "client", "foreign-ca",
                                                                       "foreign-client")}
    ca = _certificate("icmh test CA", keys["ca"], None)
    foreign_ca = _certificate("some other CA", keys["foreign-ca"], None)
    _write(folder, "ca", ca, None)
    _write(folder, "foreign-ca", foreign_ca, None)
    _write(folder, "server", _certificate("icmh server", keys["server"], (ca, keys["ca"]), server=True), keys["server"])
    _write(folder, "client", _certificate("camera-1", keys["client"], (ca, keys["ca"])), keys["client"])
    _write(folder, "foreign-client", _certificate("camera-x", keys["foreign-client"], (foreign_ca, keys["foreign-ca"])),
           keys["foreign-client"])
    return Pki(ca=folder / "ca.crt", server_cert=folder / "server.crt", server_key=folder / "server.key",
               client_cert=folder / "client.crt", client_key=folder / "client.key", foreign_ca=folder / "foreign-ca.crt",
               foreign_client_cert=folder / "foreign-client.crt", foreign_client_key=folder / "foreign-client.key")
