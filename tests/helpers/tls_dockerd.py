"""A real, TLS-only Docker daemon on 127.0.0.1 for tests (a second dockerd on this host)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from hvt.tls_certs import Issued, issue, make_ca, self_signed_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TlsDaemon:
    host: str  # tcp://127.0.0.1:<port>
    good_client: Path  # ca.pem, cert.pem, key.pem issued by the daemon's CA
    foreign_client: Path  # a client cert from another CA (with the right ca.pem)
    self_signed_client: Path  # a self-signed client cert (with the right ca.pem)
    wrong_ca_client: Path  # the good client cert, but a ca.pem that did not sign the server


def _client_dir(root: Path, name: str, ca: Issued, client: Issued) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    client.write(directory, "cert.pem", "key.pem")
    return directory


@contextlib.contextmanager
def tls_dockerd(root: Path) -> Iterator[TlsDaemon]:
    if shutil.which("dockerd") is None:
        import pytest

        pytest.skip("dockerd is not installed (run `make testbed`)")
    ca = make_ca()
    server = issue(ca, "localhost", server=True, sans=["127.0.0.1", "localhost"])
    server_dir = root / "server"
    server_dir.mkdir(parents=True)
    (server_dir / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    server.write(server_dir, "server-cert.pem", "server-key.pem")
    other_ca = make_ca("someone-else-ca")
    port = free_port()
    data = root / "data"
    log = (root / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--tlsverify",
            f"--tlscacert={server_dir / 'ca.pem'}",
            f"--tlscert={server_dir / 'server-cert.pem'}",
            f"--tlskey={server_dir / 'server-key.pem'}",
            f"-H=tcp://127.0.0.1:{port}",
            f"--data-root={data}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            "--bridge=none",
            "--iptables=false",
            "--storage-driver=vfs",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "dockerd.log").read_text()[-2000:])
            time.sleep(0.3)
        yield TlsDaemon(
            host=f"tcp://127.0.0.1:{port}",
            good_client=_client_dir(root, "good", ca, issue(ca, "trainer", server=False)),
            foreign_client=_client_dir(
                root, "foreign", ca, issue(other_ca, "trainer", server=False)
            ),
            self_signed_client=_client_dir(root, "selfsigned", ca, self_signed_client()),
            wrong_ca_client=_client_dir(
                root, "wrongca", other_ca, issue(ca, "trainer", server=False)
            ),
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        subprocess.run(["rm", "-rf", str(data)], check=False)
