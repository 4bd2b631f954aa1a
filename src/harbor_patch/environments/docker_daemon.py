"""Which Docker daemon a sandbox runs on, and how the docker CLI and SDK reach it.

Resolved once per environment from its kwargs, falling back to the variables the docker CLI
itself reads (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH). A tcp:// daemon is reached
with mutual TLS only; plain tcp is refused unless explicitly allowed for an isolated test
network. The CLI gets the target as global flags (`docker --host ... --tlsverify ...
[compose] ...`), so every docker and docker compose command Harbor runs for this sandbox goes
to the same daemon whatever the process environment says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

LOCAL_SOCKET = "unix:///var/run/docker.sock"
CERT_FILES = ("ca.pem", "cert.pem", "key.pem")
_FALSE = {"", "0", "false", "no", "off"}


class DaemonConfigError(ValueError):
    """The daemon settings are unusable; the message names the setting and the fix."""


@dataclass(frozen=True)
class DockerDaemon:
    host: str
    cert_dir: Path | None = None  # mutual TLS files (ca.pem, cert.pem, key.pem) for tcp://

    @property
    def is_local_socket(self) -> bool:
        return self.host.startswith("unix://")

    @property
    def display(self) -> str:
        return self.host + (" (mutual TLS)" if self.cert_dir else "")

    @classmethod
    def resolve(
        cls,
        host: str | None = None,
        cert_path: str | Path | None = None,
        tls_verify: bool | None = None,
        allow_insecure: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> DockerDaemon:
        env = os.environ if environ is None else environ
        target = (host or env.get("DOCKER_HOST") or LOCAL_SOCKET).strip()
        if target.startswith("unix://"):
            return cls(target)
        if target.startswith("ssh://"):
            raise DaemonConfigError(
                f"docker_host {target!r}: ssh:// is not supported for sandboxes; provision the "
                "remote daemon with TLS (make provision) and use tcp://<host>:2376"
            )
        if not target.startswith("tcp://"):
            raise DaemonConfigError(
                f"docker_host {target!r} must be unix:///path/to/docker.sock or tcp://<host>:2376"
            )
        raw_dir = cert_path or env.get("DOCKER_CERT_PATH") or Path.home() / ".docker"
        cert_dir = Path(raw_dir).expanduser()
        missing = [name for name in CERT_FILES if not (cert_dir / name).is_file()]
        verify = tls_verify
        if verify is None:
            raw = env.get("DOCKER_TLS_VERIFY")
            if raw is not None:
                verify = raw.strip().lower() not in _FALSE
            else:  # TLS unless a test network was explicitly allowed and has no certificates
                verify = not (allow_insecure and missing)
        if not verify:
            if not allow_insecure:
                raise DaemonConfigError(
                    f"docker_host {target!r} without TLS gives root on that host to anyone who "
                    "can reach it; use the TLS port 2376 with client certificates "
                    "(docker_cert_path), or set allow_insecure_test_network only on an "
                    "isolated test network"
                )
            return cls(target)
        if missing:
            raise DaemonConfigError(
                f"docker_cert_path {str(cert_dir)!r} lacks {', '.join(missing)} for the TLS daemon "
                f"{target}; point docker_cert_path (or DOCKER_CERT_PATH) at the client "
                "certificates the docker_tls role issued"
            )
        return cls(target, cert_dir.resolve())

    def cli_flags(self) -> tuple[str, ...]:
        """Global docker CLI flags that pin every command (and the compose plugin) here."""
        flags: tuple[str, ...] = ("--host", self.host)
        if self.cert_dir is not None:
            flags += (
                "--tlsverify",
                "--tlscacert",
                str(self.cert_dir / "ca.pem"),
                "--tlscert",
                str(self.cert_dir / "cert.pem"),
                "--tlskey",
                str(self.cert_dir / "key.pem"),
            )
        return flags

    def client(self, timeout: int = 120) -> docker.DockerClient:
        """An SDK client that ignores REQUESTS_CA_BUNDLE and proxies (hvt.docker_remote)."""
        from hvt.docker_remote import connect

        return connect(self.host, self.cert_dir, timeout=timeout)


def local_daemon() -> DockerDaemon | None:
    """This machine's own daemon, if its socket is here (the source of locally built images)."""
    path = LOCAL_SOCKET.removeprefix("unix://")
    return DockerDaemon(LOCAL_SOCKET) if os.path.exists(path) else None
