"""docker_engine on a real systemd Debian 12 host, converged twice.

The engine comes from Debian's archive (docker_engine_source: distro) and Compose v2 from trixie
at low priority; nothing else may come from trixie. daemon.json is the role's template only.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import testinfra

from tests.ansible.conftest import converged
from tests.ansible.molecule_runner import Scenario

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("hosts_available")]

HOST = "hvt-ans-engine"


@pytest.fixture(scope="module")
def scenario(molecule_logs: Path, say: Callable[[str], None]) -> Iterator[Scenario]:
    yield from converged("docker_engine", molecule_logs, say)


@pytest.fixture(scope="module")
def host(scenario: Scenario) -> testinfra.host.Host:
    return testinfra.get_host(f"docker://{HOST}")


def test_second_converge_changes_nothing(scenario: Scenario) -> None:
    scenario.run("idempotence")


def test_molecule_verify(scenario: Scenario) -> None:
    scenario.run("verify")


def test_engine_running_and_enabled(host: testinfra.host.Host) -> None:
    docker = host.service("docker")
    assert docker.is_running and docker.is_enabled
    assert host.package("docker.io").is_installed
    assert host.run("docker buildx version").rc == 0
    version = host.run("docker compose version --short")
    assert version.rc == 0 and version.stdout.strip().lstrip("v").startswith("2."), version.stdout


def test_only_compose_and_buildx_come_from_trixie(host: testinfra.host.Host) -> None:
    # installed versions that only trixie provides (python3-apt reads the origins)
    newer = host.run(
        'python3 -c "import apt\n'
        "for p in apt.Cache():\n"
        "    if p.is_installed:\n"
        "        codes = {o.codename for o in p.installed.origins}\n"
        "        if 'trixie' in codes and 'bookworm' not in codes: print(p.name)\""
    )
    assert newer.rc == 0, newer.stderr
    from_trixie = set(newer.stdout.split())
    assert from_trixie == {"docker-compose", "docker-buildx"}, from_trixie
    assert host.package("libc6").version.startswith("2.36"), "libc6 moved off bookworm"
    pin = host.file("/etc/apt/preferences.d/docker-engine-trixie").content_string
    assert "Pin: release n=trixie" in pin and "Pin-Priority: 100" in pin


def test_daemon_json_is_the_template(host: testinfra.host.Host) -> None:
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon == {
        "default-shm-size": "128M",
        "log-driver": "json-file",
        "log-opts": {"max-file": "5", "max-size": "10m"},
        "storage-driver": "vfs",
    }
    info = host.run("docker info --format '{{.Driver}} {{.LoggingDriver}}'")
    assert info.stdout.strip() == "vfs json-file"
    # no TLS on a host outside sandbox_docker: no tcp listener at all
    assert "tcp" not in host.run("ss -Hltnp | grep dockerd || true").stdout


def test_runs_a_container(host: testinfra.host.Host) -> None:
    save = subprocess.Popen(["docker", "save", "local/debian:bookworm"], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "exec", "-i", HOST, "docker", "load"],
        stdin=save.stdout,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert save.wait(timeout=300) == 0
    out = host.run("docker run --rm local/debian:bookworm df -m /dev/shm")
    assert out.rc == 0, out.stderr
    assert out.stdout.split()[-5] == "128"  # the default-shm-size from daemon.json
