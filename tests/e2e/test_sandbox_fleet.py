"""A fleet of two TLS sandbox daemons under real Harbor trials (oracle agent): trials spread
over both within each host's limit, none is left behind, and when one daemon dies mid-step its
trials finish on the other with their true rewards.

Each daemon is a dockerd in its own container on 127.0.0.1 (tests/helpers/tls_dockerd.py), so
stopping that container is a host dying. The run's coordinator is the one the agent loop uses
(TrialCoordinator with a Fleet and the Docker ping as its health check).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from typer.testing import CliRunner

from harbor_patch.environments import env_image
from harbor_patch.environments.docker_daemon import DockerDaemon
from hvt.cli import app
from hvt.run import tasks_index
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
        nothing = f"no sandbox container or network labelled harbor-run={prefix}"
        assert f"{nothing} on {h.docker_host}" in said


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


def _setup_seconds(trial_dir: str) -> float:
    timing = json.loads((Path(trial_dir) / "result.json").read_text())["environment_setup"]
    started, finished = (datetime.fromisoformat(timing[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def _image_checks(config: Path) -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(app, ["dryrun", "--config", str(config), "--json"])
    checks = json.loads(result.output)["checks"]
    return {c["name"]: c for c in checks if c["name"].startswith("sandbox.")}


def test_warm_builds_each_task_image_on_each_host_once_and_trials_start_from_it(
    tmp_path: Path, daemons: list[TlsDaemon]
) -> None:
    """`hvt sandbox warm` on the fleet: every task's image on both hosts; the second warm builds
    nothing; the preflight warns before and is satisfied after; a trial on a warmed host starts
    from the image without building, a trial of an unwarmed task builds (setup times printed:
    the README's cold and warm figures)."""
    prefix = f"hvt-fleet-{uuid.uuid4().hex[:6]}"
    marker = uuid.uuid4().hex  # new content: tags no earlier test or run has built
    tasks = tmp_path / "tasks"
    for name in ("write-answer", "wrong-answer", "check-runtime"):
        shutil.copytree(TASKS / name, tasks / name)
        (tasks / name / "environment" / "warm-marker").write_text(marker)
    cold_task = tmp_path / "cold" / "write-answer"
    shutil.copytree(tasks / "write-answer", cold_task)
    (cold_task / "environment" / "warm-marker").write_text(marker + "-cold")
    index = tasks_index.write_parquet(
        tasks_index.rows(tasks_index.discover(tasks)), tmp_path / "train.parquet"
    )
    hosts = [
        {"docker_host": d.host, "docker_cert_path": str(d.good_client), "max_concurrent_trials": 2}
        for d in daemons
    ]
    config = check_config(
        tmp_path,
        prefix,
        **{
            "runtime_info.input.harbor_agent.environment_import_path": REMOTE,
            "runtime_info.input.harbor_agent.docker_hosts": hosts,
            "runtime_info.input.data.train_index": str(index),
            "runtime_info.input.data.val_index": str(index),
        },
    )
    before = _image_checks(config)
    for d in daemons:
        said = before[f"sandbox.images[{d.host}]"]
        assert said["status"] == "warn" and "3 of 3 task images missing" in said["detail"], said
        assert "hvt sandbox warm" in said["remedy"]

    started = time.monotonic()
    first = CliRunner().invoke(
        app, ["sandbox", "warm", "--config", str(config), "--tasks", str(tasks)]
    )
    first_s = time.monotonic() - started
    said = " ".join(first.output.split())
    assert first.exit_code == 0, first.output
    assert "warming 3 task image(s) on 2 host(s)" in said
    assert (
        "6 image(s) on the hosts" in said and "6 built, 0 pulled, 0 already there, 0 failed" in said
    )
    started = time.monotonic()
    second = CliRunner().invoke(
        app, ["sandbox", "warm", "--config", str(config), "--tasks", str(tasks)]
    )
    second_s = time.monotonic() - started
    said = " ".join(second.output.split())
    assert second.exit_code == 0, second.output
    assert "0 built, 0 pulled, 6 already there, 0 failed" in said
    after = _image_checks(config)
    for d in daemons:
        said = after[f"sandbox.images[{d.host}]"]
        assert said["status"] == "ok" and "all 3 task images are there" in said["detail"], said
        assert _labelled(d, prefix) == []  # a warm starts no sandbox

    # trials with environment_force_build false (the default): the warmed task starts from its
    # image; the unwarmed one builds (and tags) its own
    on_a = _settings(tmp_path, prefix, "", _fleet(daemons[:1], limit=2), retries=0)
    settings = replace(
        replace(on_a, env_kwargs={"pod_name_prefix": prefix}).for_host(daemons[0].host),
        force_build=False,
    )

    async def both() -> list[harbor_trial.RolloutResult]:
        return list(
            await asyncio.gather(
                harbor_trial.run_rollout(settings, tasks / "write-answer", "step_0003"),
                harbor_trial.run_rollout(settings, cold_task, "step_0003"),
            )
        )

    warm_run, cold_run = asyncio.run(both())
    for run in (warm_run, cold_run):
        assert run.final is not None and run.final.reward_value == 1.0, run
    warm_log = (Path(warm_run.final.trial_dir) / "trial.log").read_text()
    cold_log = (Path(cold_run.final.trial_dir) / "trial.log").read_text()
    assert "starting from the warmed image hvt-env/write-answer:" in warm_log
    assert "starting from the warmed image" not in cold_log
    # both images stay on the host after their sandboxes are deleted: the built one for the
    # cold task's next trial, the warmed one for everyone
    host_a = DockerDaemon(daemons[0].host, daemons[0].good_client).client()
    try:
        tags = {tag for image in host_a.images.list() for tag in image.tags}
    finally:
        host_a.close()
    assert env_image.task_image(cold_task) in tags
    assert env_image.task_image(tasks / "write-answer") in tags
    print(  # the README's figures (pytest -s)
        f"\nwarm: first {first_s:.1f} s (6 built), second {second_s:.1f} s (none built); "
        f"environment setup of a trial: cold {_setup_seconds(cold_run.final.trial_dir):.1f} s, "
        f"warm {_setup_seconds(warm_run.final.trial_dir):.1f} s"
    )
