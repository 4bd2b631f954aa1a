"""Docker SDK clients for a remote daemon over mutual TLS.

`requests` lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment replace the CA a
session was given, so on any machine that exports them (most corporate hosts, every CI image
with a custom CA) the daemon's own ca.pem would be ignored and verification would fail. These
clients ignore environment TLS and proxy settings: a Docker daemon is reached directly, with
exactly the CA, certificate and key the bundle provisioned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
from docker.tls import TLSConfig

CERT_FILES = ("ca.pem", "cert.pem", "key.pem")


class _IsolatedAPIClient(docker.APIClient):  # type: ignore[misc]
    @property
    def trust_env(self) -> bool:
        return False

    @trust_env.setter
    def trust_env(self, _value: bool) -> None:
        return None


class IsolatedDockerClient(docker.DockerClient):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = _IsolatedAPIClient(*args, **kwargs)


def tls_config(cert_dir: Path) -> TLSConfig:
    return TLSConfig(
        client_cert=(str(cert_dir / "cert.pem"), str(cert_dir / "key.pem")),
        ca_cert=str(cert_dir / "ca.pem"),
        verify=True,
    )


def connect(host: str, cert_dir: Path | None, timeout: int = 60) -> docker.DockerClient:
    """A client for `host`; mutual TLS with the files in `cert_dir` when it is given."""
    tls = tls_config(cert_dir) if cert_dir is not None else None
    return IsolatedDockerClient(base_url=host, tls=tls, timeout=timeout)
