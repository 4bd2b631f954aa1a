"""Small helpers around the docker CLI for the Ansible tests (test containers, volumes)."""

from __future__ import annotations

import subprocess

PREFIX = "hvt-ans-"


def docker(*args: str, check: bool = True, timeout: float = 120, **kw: object) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return str(proc.stdout)


def docker_ok() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_present(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def container_exists(name: str) -> bool:
    return (
        subprocess.run(["docker", "container", "inspect", name], capture_output=True).returncode
        == 0
    )


def published_port(container: str, port: int) -> int:
    out = docker("port", container, f"{port}/tcp").strip().splitlines()
    for line in out:
        host, _, hport = line.rpartition(":")
        if host in ("127.0.0.1", "0.0.0.0"):
            return int(hport)
    raise AssertionError(f"{container}: port {port} is not published on loopback ({out})")


def remove_volumes(*names: str) -> None:
    for name in names:
        assert name.startswith(PREFIX), name
        subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)


def remove_containers(*names: str) -> None:
    for name in names:
        assert name.startswith(PREFIX), name
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
