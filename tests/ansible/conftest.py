"""Fixtures for the Ansible tests: Molecule scenarios on systemd hosts in containers.

Every container, network and volume these tests create is named hvt-ans-*, and is removed when
the tests that use it are done. Needs a running Docker engine and the test bed image
local/debian-systemd:bookworm (`make testbed`); without them the tests error and say why
(a slow engine is waited for, never a reason to skip).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ansible.docker_host import container_exists, remove_volumes
from tests.ansible.molecule_runner import Scenario
from tests.helpers.prerequisites import require_images

SYSTEMD_IMAGE = "local/debian-systemd:bookworm"
SHARED_APT_VOLUME = "hvt-ans-apt-archives"

SCENARIO_HOSTS = {
    "docker_engine": ["hvt-ans-engine"],
    "docker_tls": ["hvt-ans-sandbox", "hvt-ans-trainer"],
    "trainer_stack": ["hvt-ans-stack", "hvt-ans-stack-2"],
    "nvidia_gpu": ["hvt-ans-gpu"],
}
SCENARIO_VOLUMES = {
    "docker_engine": ["hvt-ans-engine-docker"],
    "docker_tls": ["hvt-ans-sandbox-docker", "hvt-ans-trainer-docker"],
    "trainer_stack": ["hvt-ans-stack-docker", "hvt-ans-stack-2-docker", "hvt-ans-apt-archives-2"],
    "nvidia_gpu": ["hvt-ans-gpu-docker"],
}


def _say_factory(config: pytest.Config) -> Callable[[str], None]:
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def say(msg: str) -> None:
        line = f"[ansible-tests {time.strftime('%H:%M:%S')}] {msg}"
        if capman is not None and reporter is not None:
            with capman.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            print(line, flush=True)

    return say


@pytest.fixture(scope="session")
def say(pytestconfig: pytest.Config) -> Callable[[str], None]:
    return _say_factory(pytestconfig)


@pytest.fixture(scope="session")
def hosts_available(docker_engine: None) -> None:
    require_images(SYSTEMD_IMAGE)


@pytest.fixture(scope="session")
def molecule_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("molecule-logs")


@pytest.fixture(scope="session", autouse=True)
def _shared_apt_cache() -> Iterator[None]:
    yield
    remove_volumes(SHARED_APT_VOLUME)


def converged(name: str, molecule_logs: Path, say: Callable[[str], None]) -> Iterator[Scenario]:
    """Create the scenario's hosts and converge them once; destroy everything afterwards."""
    scenario = Scenario(name, molecule_logs, say)
    started = time.monotonic()
    try:
        # leftovers of an interrupted run are destroyed; otherwise only Molecule's state is reset
        leftovers = [h for h in SCENARIO_HOSTS.get(name, []) if container_exists(h)]
        scenario.run("destroy" if leftovers else "reset")
        scenario.run("create")
        scenario.run("converge")
        yield scenario
    finally:
        try:
            scenario.run("destroy")
        finally:
            remove_volumes(*SCENARIO_VOLUMES.get(name, []))
            steps = ", ".join(f"{k} {v:.0f} s" for k, v in scenario.timings.items())
            say(f"scenario {name}: {time.monotonic() - started:.0f} s in all ({steps})")
