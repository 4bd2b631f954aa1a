"""A fleet of two TLS sandbox daemons under real Harbor trials (oracle agent): trials spread
over both within each host's limit, none is left behind, and when one daemon dies mid-step its
trials finish on the other with their true rewards.

Each daemon is a dockerd in its own container on 127.0.0.1 (tests/helpers/tls_dockerd.py), so
stopping that container is a host dying. The run's coordinator is the one the agent loop uses
(TrialCoordinator with a Fleet and the Docker ping as its health check).
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from typer.testing import CliRunner

from harbor_patch.environments.docker_daemon import DockerDaemon
from hvt.cli import app
from tests.conftest import filled_config
from tests.e2e.test_harbor_remote_docker import BASE, REMOTE, TASKS, build_mini
from tests.e2e.test_sandbox_check import check_config
from tests.helpers.prerequisites import require_images
from tests.helpers.tls_dockerd import DOCKERD_IMAGE, TlsDaemon, tls_dockerd
from verl_patch import harbor_trial
from verl_patch.coordination import ping_daemon
from verl_patch.rollout_settings import RolloutSettings
from verl_patch.sandbox_fleet import Fleet, FleetHost
from verl_patch.trial_coordinator import TrialCoordinator

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def daemons(
    tmp_path_factory: pytest.TempPathFactory, docker_engine: None
) -> Iterator[list[TlsDaemon]]:
    require_images(DOCKERD_IMAGE, BASE)
    local = docker.from_env(timeout=120)
    base = local.images.get(BASE).save(named=True)
    archive = b"".join(base)
    with (
        tls_dockerd(tmp_path_factory.mktemp("tlsd-a")) as a,
        tls_dockerd(tmp_path_factory.mktemp("tlsd-b")) as b,
    ):
        for daemon in (a, b):
            remote = DockerDaemon(daemon.host, daemon.good_client).client()
            remote.images.load(archive)  # the task images' base
            remote.close()
        yield [a, b]
    local.close()


@pytest.fixture(scope="module")
def runtime(docker_engine: None) -> str:
    return build_mini(f"fleet-{uuid.uuid4().hex[:6]}")


def _fleet(daemons: list[TlsDaemon], limit: int) -> tuple[FleetHost, ...]:
    return tuple(FleetHost(d.host, str(d.good_client), limit) for d in daemons)


def _settings(
    tmp_path: Path, prefix: str, runtime: str, fleet: tuple[FleetHost, ...], retries: int
) -> RolloutSettings:
    return RolloutSettings(
        trials_dir=tmp_path / "trials",
        model_name="unused-by-oracle",
        agent_name="oracle",
        env_import_path=REMOTE,
        env_kwargs={"agent_runtime_image": runtime, "pod_name_prefix": prefix},
        override_cpus=1,
        override_memory_mb=512,
        max_retries=retries,
        pod_name_prefix=prefix,
        fleet=fleet,
    )


async def _watch(coord: TrialCoordinator, peak: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for host, state in coord.fleet.snapshot().items():
            peak[host] = max(peak[host], int(state["running"]))
        await asyncio.sleep(0.1)


def _labelled(daemon: TlsDaemon, prefix: str) -> list[Any]:
    client = DockerDaemon(daemon.host, daemon.good_client).client()
    try:
        return list(client.containers.list(all=True, filters={"label": f"harbor-run={prefix}"}))
    finally:
        client.close()


def test_trials_spread_within_each_hosts_limit_and_none_is_left_behind(
    tmp_path: Path, daemons: list[TlsDaemon], runtime: str
) -> None:
    prefix = f"hvt-fleet-{uuid.uuid4().hex[:6]}"
    fleet = _fleet(daemons, limit=2)
    settings = _settings(tmp_path, prefix, runtime, fleet, retries=0)
    peak = {h.docker_host: 0 for h in fleet}

    async def scenario() -> list[harbor_trial.RolloutResult]:
        coord = TrialCoordinator(
            max_concurrent=8, tick_sec=0.05, fleet=Fleet(list(fleet)), probe=ping_daemon
        )
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(coord, peak, stop))
        try:
            return await asyncio.gather(
                *(
                    harbor_trial.run_rollout(
                        settings,
                        TASKS / "write-answer",
                        "step_0001",
                        coordination=coord,
                        group="train:1",
                    )
                    for _ in range(8)
                )
            )
        finally:
            stop.set()
            await watcher

    results = asyncio.run(scenario())
    assert [r.final.reward_value for r in results if r.final] == [1.0] * 8
    used = [r.hosts[0] for r in results]
    assert {used.count(h.docker_host) for h in fleet} == {4}, used  # least loaded: even
    assert peak == {h.docker_host: 2 for h in fleet}, peak  # each host at its limit, not over
    for daemon in daemons:
        assert _labelled(daemon, prefix) == []
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            filled_config(
                **{
                    "runtime_info.input.harbor_agent.pod_name_prefix": prefix,
                    "runtime_info.input.harbor_agent.environment_import_path": REMOTE,
                    "runtime_info.input.harbor_agent.docker_hosts": [
                        {"docker_host": h.docker_host, "docker_cert_path": h.docker_cert_path}
                        for h in fleet
                    ],
                }
            )
        )
    )
    dry = CliRunner().invoke(app, ["clean", "--config", str(config), "--pods", "--dry-run"])
    said = " ".join(dry.output.split())
    for h in fleet:
        assert f"no sandbox container labelled harbor-run={prefix} on {h.docker_host}" in said


def test_a_daemon_dying_mid_step_loses_no_trial_and_no_reward(
    tmp_path: Path, daemons: list[TlsDaemon], runtime: str
) -> None:
    prefix = f"hvt-fleet-{uuid.uuid4().hex[:6]}"
    dying, survivor = daemons
    fleet = _fleet(daemons, limit=3)
    settings = _settings(tmp_path, prefix, runtime, fleet, retries=2)
    local = docker.from_env(timeout=120)

    async def scenario() -> tuple[list[harbor_trial.RolloutResult], dict[str, str]]:
        coord = TrialCoordinator(
            max_concurrent=6,
            tick_sec=0.05,
            fleet=Fleet(list(fleet)),
            probe=ping_daemon,
            probe_interval_sec=2,
        )
        rollouts = [
            asyncio.create_task(
                harbor_trial.run_rollout(
                    settings,
                    TASKS / "write-answer",
                    "step_0002",
                    coordination=coord,
                    group="train:2",
                )
            )
            for _ in range(6)
        ]
        while not coord.fleet.hosts[dying.host].running:  # trials are on it: kill it
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        await asyncio.to_thread(local.containers.get(dying.container).stop, timeout=1)
        results = await asyncio.gather(*rollouts)
        return results, coord.fleet.out()

    try:
        results, out = asyncio.run(scenario())
    finally:
        local.containers.get(dying.container).start()  # the module's other tests may use it
        local.close()
    assert [r.final.reward_value for r in results if r.final] == [1.0] * 6, [
        (r.hosts, r.final and r.final.termination) for r in results
    ]
    moved = [r for r in results if r.hosts[0] == dying.host]
    assert moved, [r.hosts for r in results]
    assert all(r.hosts[-1] == survivor.host for r in moved), [r.hosts for r in moved]
    assert out.get(dying.host, "").startswith("health check failed"), out
    assert _labelled(survivor, prefix) == []


def test_sandbox_check_runs_the_oracle_on_every_host(
    tmp_path: Path, daemons: list[TlsDaemon]
) -> None:
    """`hvt sandbox check` on the fleet: each task once per host, each host within its limit,
    the table naming each host; every oracle trial gets reward 1."""
    prefix = f"hvt-fleet-{uuid.uuid4().hex[:6]}"
    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS / "write-answer", tasks / "write-answer")
    hosts = [
        {"docker_host": d.host, "docker_cert_path": str(d.good_client), "max_concurrent_trials": 1}
        for d in daemons
    ]
    config = check_config(
        tmp_path,
        prefix,
        **{
            "runtime_info.input.harbor_agent.environment_import_path": REMOTE,
            "runtime_info.input.harbor_agent.docker_hosts": hosts,
        },
    )
    result = CliRunner().invoke(
        app,
        ["sandbox", "check", "--config", str(config), "--tasks", str(tasks),
         "--trials-dir", str(tmp_path / "trials")],
    )  # fmt: skip
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "oracle on 1 task(s) x 2 host(s)" in said
    assert "2 of 2 oracle trials got reward 1" in said
    for daemon in daemons:
        assert daemon.host in said
        assert _labelled(daemon, prefix) == []
