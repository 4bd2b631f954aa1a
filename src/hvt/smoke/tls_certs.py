"""Certificates for the CPU smoke's TLS sandbox daemon and for tests.

A CA, a server certificate with SANs, client certificates. Production hosts get theirs from
`make provision` (the docker_tls role); this exists so the smoke stack and the tests can stand
up a real TLS-only daemon without Ansible. `write_fleet` lays out what the smoke's daemons and a
client need.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, cert_name: str, key_name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / cert_name).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_path = directory / key_name
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )


def make_ca(cn: str = "hvt-test-ca") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(cn, _name(cn), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(ca: Issued, cn: str, *, server: bool, sans: list[str] | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(cn, ca.cert.subject, key).add_extension(
        x509.ExtendedKeyUsage([usage]), critical=False
    )
    if sans:
        names: list[x509.GeneralName] = []
        for san in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def self_signed_client(cn: str = "intruder") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _builder(cn, _name(cn), key).sign(key, hashes.SHA256())
    return Issued(cert, key)


def write_fleet(out: Path, daemons: list[str]) -> None:
    """One CA for the smoke's sandbox daemons: out/<daemon>/{ca,server-cert,server-key}.pem
    (server certificate for the daemon's name) and out/clients/<daemon>/{ca,cert,key}.pem (the
    trainer's client certificate, as harbor_agent.docker_hosts[].docker_cert_path expects)."""
    ca = make_ca("hvt-smoke-ca")
    pem = serialization.Encoding.PEM
    for name in daemons:
        server_dir, client_dir = out / name, out / "clients" / name
        for d in (server_dir, client_dir):
            d.mkdir(parents=True, exist_ok=True)
            (d / "ca.pem").write_bytes(ca.cert.public_bytes(pem))
        issue(ca, name, server=True, sans=[name]).write(
            server_dir, "server-cert.pem", "server-key.pem"
        )
        issue(ca, "hvt-trainer", server=False).write(client_dir, "cert.pem", "key.pem")
