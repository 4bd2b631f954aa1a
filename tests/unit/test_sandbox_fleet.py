"""Trials spread over a fleet of sandbox hosts: limits per host, least-loaded placement, hosts
taken out after failed setups or a failed health check and brought back, retries elsewhere."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path

import pytest

from verl_patch import harbor_trial
from verl_patch.rollout_settings import RolloutSettings
from verl_patch.sandbox_fleet import Fleet, FleetHost
from verl_patch.trial_coordinator import DEFAULT_HOST, NoHealthyHost, TrialCoordinator
from verl_patch.trial_outcome import read_trial

A = FleetHost("tcp://sandbox-a:2376", "/certs/a", 2)
B = FleetHost("tcp://sandbox-b:2376", "/certs/b", 1)


def test_least_loaded_first_and_per_host_limits() -> None:
    fleet = Fleet([A, B])
    placed = [fleet.place(f"t{i}") for i in range(4)]
    # a and b both empty: a (listed first); then b (a is half full); then a; then both full
    assert placed == [A.docker_host, B.docker_host, A.docker_host, None]
    fleet.free("t1", setup_failed=False)
    assert fleet.place("t4") == B.docker_host


def test_a_host_is_taken_out_after_failed_setups_in_a_row(caplog: pytest.LogCaptureFixture) -> None:
    fleet = Fleet([A, B], failure_threshold=2)

    def attempt_on_a(trial: str, setup_failed: bool) -> None:
        assert fleet.place(trial, avoid={B.docker_host}) == A.docker_host
        with caplog.at_level(logging.WARNING):
            fleet.free(trial, setup_failed=setup_failed)

    attempt_on_a("t0", True)
    attempt_on_a("t1", False)  # a trial that ran resets the count
    attempt_on_a("t2", True)
    assert fleet.out() == {}  # one failure in a row: still in
    attempt_on_a("t3", True)
    assert fleet.out() == {A.docker_host: "2 sandbox setups in a row failed"}
    assert "sandbox host tcp://sandbox-a:2376 taken out" in caplog.text
    # out: nothing goes there, even for a trial that would rather avoid b
    assert fleet.place("t4", avoid={B.docker_host}) == B.docker_host
    assert fleet.place("t5") is None
    fleet.bring_back(A.docker_host)
    assert fleet.place("t5") == A.docker_host


def test_a_retry_avoids_the_host_that_failed_unless_it_is_the_only_one() -> None:
    fleet = Fleet([A, B])
    assert fleet.place("t0", avoid={A.docker_host}) == B.docker_host
    one = Fleet([A])
    assert one.place("t0", avoid={A.docker_host}) == A.docker_host


def test_no_fleet_means_one_default_host_with_the_run_limit() -> None:
    async def go() -> list[str | None]:
        coord = TrialCoordinator(max_concurrent=2, tick_sec=0.01)
        return [await coord.acquire("train:1", "t0"), await coord.acquire("train:1", "t1")]

    assert asyncio.run(go()) == [DEFAULT_HOST, DEFAULT_HOST]


def test_many_trials_never_exceed_a_host_limit_and_all_finish() -> None:
    hosts = [FleetHost("unix:///a.sock", None, 3), FleetHost("tcp://b:2376", "/b", 2)]
    peak: dict[str, int] = {h.docker_host: 0 for h in hosts}
    done: list[str] = []

    async def trial(coord: TrialCoordinator, name: str) -> None:
        host = await coord.acquire("train:1", name)
        assert host is not None
        running = coord.fleet.hosts[host].running
        peak[host] = max(peak[host], len(running))
        await asyncio.sleep(random.uniform(0, 0.02))
        await coord.release("train:1", name, setup_failed=False)
        done.append(name)

    async def go() -> TrialCoordinator:
        coord = TrialCoordinator(max_concurrent=10, tick_sec=0.005, fleet=Fleet(hosts))
        await asyncio.gather(*(trial(coord, f"t{i}") for i in range(60)))
        return coord

    coord = asyncio.run(go())
    assert len(done) == 60
    assert peak == {"unix:///a.sock": 3, "tcp://b:2376": 2}
    snap = coord.fleet.snapshot()
    assert {h: s["running"] for h, s in snap.items()} == {"unix:///a.sock": 0, "tcp://b:2376": 0}
    assert snap["unix:///a.sock"]["placed"] + snap["tcp://b:2376"]["placed"] == 60


def test_a_failed_setup_is_retried_on_the_other_host() -> None:
    async def go() -> tuple[str | None, str | None]:
        coord = TrialCoordinator(max_concurrent=4, tick_sec=0.01, fleet=Fleet([A, B]))
        first = await coord.acquire("train:1", "t0")
        second = await coord.reassign("train:1", "t0", setup_failed=True)
        await coord.release("train:1", "t0", setup_failed=False)
        return first, second

    assert asyncio.run(go()) == (A.docker_host, B.docker_host)


def test_the_health_check_takes_a_host_out_and_brings_it_back() -> None:
    answers = {A.docker_host: None, B.docker_host: "ConnectionError: no route to host"}

    async def probe(host: FleetHost) -> str | None:
        return answers[host.docker_host]

    async def go() -> tuple[dict[str, str], dict[str, str]]:
        coord = TrialCoordinator(max_concurrent=4, fleet=Fleet([A, B]), probe=probe)
        await coord.probe_hosts()
        first = coord.fleet.out()
        answers[B.docker_host] = None
        await coord.probe_hosts()
        return first, coord.fleet.out()

    first, after = asyncio.run(go())
    assert first == {B.docker_host: "health check failed: ConnectionError: no route to host"}
    assert after == {}


def test_a_host_lost_under_a_trial_is_reported_at_its_release() -> None:
    """A failed health check while a trial runs on the host: its release says so (the agent
    loop then keeps it out of the loss when it has no verifier result). A streak of failed
    setups takes a host out too, but code in a sandbox could cause that: not reported."""
    answers: dict[str, str | None] = {A.docker_host: None, B.docker_host: None}

    async def probe(host: FleetHost) -> str | None:
        return answers[host.docker_host]

    async def go() -> tuple[str | None, str | None, str | None]:
        coord = TrialCoordinator(max_concurrent=4, fleet=Fleet([A, B], 1), probe=probe)
        assert await coord.acquire("train:1", "t0") == A.docker_host
        assert await coord.acquire("train:1", "t1") == B.docker_host
        answers[A.docker_host] = "ConnectionError: refused"
        await coord.probe_hosts()
        lost = await coord.release("train:1", "t0")
        kept = await coord.release("train:1", "t1", setup_failed=True)  # b out by its streak
        # a retry after the loss starts clean: its own release reports nothing
        answers[A.docker_host] = None
        await coord.probe_hosts()
        assert await coord.acquire("train:1", "t2") == A.docker_host
        answers[A.docker_host] = "ConnectionError: refused"
        await coord.probe_hosts()
        answers[A.docker_host] = None
        await coord.probe_hosts()
        assert await coord.reassign("train:1", "t2", setup_failed=False) == B.docker_host
        return lost, kept, await coord.release("train:1", "t2")

    lost, kept, retried = asyncio.run(go())
    assert lost == f"{A.docker_host} health check failed: ConnectionError: refused"
    assert kept is None and retried is None


def test_a_probe_that_raises_counts_as_a_failed_check() -> None:
    async def probe(host: FleetHost) -> str | None:
        raise TimeoutError("ping took longer than 10 s")

    async def go() -> dict[str, str]:
        coord = TrialCoordinator(max_concurrent=1, fleet=Fleet([A]), probe=probe)
        await coord.probe_hosts()
        return coord.fleet.out()

    assert asyncio.run(go()) == {
        A.docker_host: "health check failed: TimeoutError: ping took longer than 10 s"
    }


def test_a_fleet_that_stays_down_fails_the_trial_with_the_reasons() -> None:
    now = [0.0]
    fleet = Fleet([A], clock=lambda: now[0])
    fleet.take_out(A.docker_host, "health check failed: refused")

    async def go() -> None:
        coord = TrialCoordinator(
            max_concurrent=1,
            tick_sec=0.01,
            clock=lambda: now[0],
            fleet=fleet,
            all_out_limit_sec=60,
        )
        waiter = asyncio.create_task(coord.acquire("train:1", "t0"))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # out, but not for long yet: it waits
        now[0] = 61.0
        await waiter

    with pytest.raises(NoHealthyHost, match="refused"):
        asyncio.run(go())


def test_a_fleet_lists_each_host_once() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        Fleet([A, A])


def _attempt_dir(trials_dir: Path, name: str, started: bool) -> Path:
    d = trials_dir / name
    d.mkdir(parents=True)
    if started:  # the sandbox ran, the agent ran, the verifier gave a reward
        (d / "verifier").mkdir()
        (d / "verifier" / "reward.txt").write_text("1")
    result = {
        "exception_info": None
        if started
        else {"exception_type": "RuntimeError", "exception_message": "daemon gone"},
        "environment_setup": {"started_at": "2026-12-01T06:00:00Z", "finished_at": None},
        "agent_execution": {"started_at": "2026-12-01T06:00:03Z"} if started else None,
    }
    (d / "result.json").write_text(json.dumps(result))
    return d


def test_run_rollout_retries_a_failed_setup_on_another_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent loop's path: the first attempt's sandbox fails to start on a, the retry runs
    on b with b's daemon and certificates, and both hosts' books are square afterwards."""
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.toml").write_text("")
    seen: list[dict[str, object]] = []

    async def attempt(
        settings: RolloutSettings, _task: Path, trials_dir: Path, name: str, *_: object
    ) -> object:
        seen.append(dict(settings.env_kwargs))
        started = settings.env_kwargs["docker_host"] == B.docker_host
        return read_trial(_attempt_dir(trials_dir, name, started))

    monkeypatch.setattr(harbor_trial, "run_attempt", attempt)
    settings = RolloutSettings(
        trials_dir=tmp_path / "trials",
        model_name="policy",
        env_import_path="harbor_patch.environments.remote_docker:RemoteDockerEnvironment",
        env_kwargs={"pod_name_prefix": "hvt"},
        fleet=(A, B),
    )

    async def go() -> tuple[harbor_trial.RolloutResult, TrialCoordinator]:
        coord = TrialCoordinator(max_concurrent=4, tick_sec=0.01, fleet=Fleet([A, B]))
        result = await harbor_trial.run_rollout(
            settings, task, "step_0001", coordination=coord, group="train:1"
        )
        return result, coord

    result, coord = asyncio.run(go())
    assert result.hosts == [A.docker_host, B.docker_host]
    assert [s["docker_host"] for s in seen] == [A.docker_host, B.docker_host]
    assert [s["docker_cert_path"] for s in seen] == ["/certs/a", "/certs/b"]
    assert result.final is not None and result.final.has_reward
    snap = coord.fleet.snapshot()
    assert snap[A.docker_host]["setup_failures"] == 1 and snap[B.docker_host]["setup_failures"] == 0
    assert snap[A.docker_host]["running"] == snap[B.docker_host]["running"] == 0
    assert coord.running == set()
