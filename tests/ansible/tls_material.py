"""Client certificates for probing the TLS daemon: the issued one, and ones it must refuse."""

from __future__ import annotations

import datetime as dt
import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, out: Path, stem: str
) -> ClientCert:
    cert_path, key_path = out / f"{stem}-cert.pem", out / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ClientCert(cert_path, key_path)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )


def self_signed_client(out: Path) -> ClientCert:
    """A client certificate that signs itself (clientAuth, but no CA vouches for it)."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        _builder(_name("intruder"), _name("intruder"), key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA384())
    )
    return _write(cert, key, out, "self-signed")


def other_ca_client(out: Path) -> ClientCert:
    """A proper client certificate, issued by a CA the daemon does not trust."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        _builder(_name("other CA"), _name("other CA"), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        _builder(_name("trainer"), ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return _write(cert, key, out, "other-ca")


def ping(host: str, port: int, ca: Path, client: ClientCert | None, timeout: float = 10) -> str:
    """GET /_ping over TLS, verifying the daemon against `ca`; returns the body.

    Raises ssl.SSLError / OSError when the daemon refuses the handshake or drops the connection.
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise ConnectionRefusedError(f"HTTP {resp.status}: {body}")
        return body
    finally:
        conn.close()


def plain_http_answer(host: str, port: int, timeout: float = 5) -> bytes:
    """Send a plain-HTTP Docker API request and return whatever comes back (b'' when nothing)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return data
