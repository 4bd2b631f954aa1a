"""A real, TLS-only Docker daemon on 127.0.0.1 for tests, in a container of its own."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from cryptography.hazmat.primitives.serialization import Encoding

from hvt.docker_remote import connect
from hvt.smoke.tls_certs import Issued, issue, make_ca, self_signed_client

DOCKERD_IMAGE = "local/dockerd:bookworm"


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
    container: str = ""  # the daemon's container on this machine's engine (stop it to kill it)


def _client_dir(root: Path, name: str, ca: Issued, client: Issued) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    client.write(directory, "cert.pem", "key.pem")
    return directory


@contextlib.contextmanager
def tls_dockerd(root: Path) -> Iterator[TlsDaemon]:
    """A TLS-only dockerd in its own container (local/dockerd, TESTBED.md §4), published on
    127.0.0.1. Its own network namespace keeps it away from this host's bridges and iptables."""
    import pytest

    local = docker.from_env(timeout=60)
    try:
        local.images.get(DOCKERD_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{DOCKERD_IMAGE} is missing (run `make testbed`)")
    ca = make_ca()
    server = issue(ca, "localhost", server=True, sans=["127.0.0.1", "localhost"])
    server_dir = root / "server"
    server_dir.mkdir(parents=True)
    (server_dir / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    server.write(server_dir, "server-cert.pem", "server-key.pem")
    other_ca = make_ca("someone-else-ca")
    port = free_port()
    name = f"hvt-tlsd-{uuid.uuid4().hex[:8]}"
    # overlay2 needs a data root that is not itself overlayfs: a volume of its own (vfs, the
    # fallback, copies every image layer in full and made loads and sandbox starts slow)
    data = local.volumes.create(f"{name}-data", labels={"hvt-test": "tls-dockerd"})
    container = local.containers.run(
        DOCKERD_IMAGE,
        [
            "--tlsverify",
            "--tlscacert=/certs/ca.pem",
            "--tlscert=/certs/server-cert.pem",
            "--tlskey=/certs/server-key.pem",
            "-H=tcp://0.0.0.0:2376",
            "--storage-driver=overlay2",
        ],
        name=name,
        detach=True,
        cap_add=["ALL"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        volumes={
            str(server_dir): {"bind": "/certs", "mode": "ro"},
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            data.name: {"bind": "/var/lib/docker", "mode": "rw"},
        },
        tmpfs={"/run": ""},
        ports={"2376/tcp": ("127.0.0.1", port)},
        labels={"hvt-test": "tls-dockerd"},
    )
    try:
        good = _client_dir(root, "good", ca, issue(ca, "trainer", server=False))
        deadline = time.monotonic() + 90
        while True:
            try:
                connect(f"tcp://127.0.0.1:{port}", good, timeout=5).ping()
                break
            except docker.errors.DockerException:
                container.reload()
                if container.status != "running" or time.monotonic() > deadline:
                    raise RuntimeError(container.logs(tail=40).decode(errors="replace")) from None
                time.sleep(0.5)
        yield TlsDaemon(
            host=f"tcp://127.0.0.1:{port}",
            good_client=good,
            foreign_client=_client_dir(
                root, "foreign", ca, issue(other_ca, "trainer", server=False)
            ),
            self_signed_client=_client_dir(root, "selfsigned", ca, self_signed_client()),
            wrong_ca_client=_client_dir(
                root, "wrongca", other_ca, issue(ca, "trainer", server=False)
            ),
            container=container.name,
        )
    finally:
        container.remove(force=True, v=True)
        data.remove(force=True)
