"""Tail-kill policy (pure, fake clock) and the trial coordinator (concurrency + tail-kill)."""

from __future__ import annotations

import asyncio

import pytest

from verl_patch.tail_kill import StepProgress, TailKillPolicy
from verl_patch.trial_coordinator import TrialCoordinator


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _step(policy: TailKillPolicy, n: int) -> StepProgress:
    progress = StepProgress(policy)
    for i in range(n):
        progress.register(f"t{i:02d}", now=float(i) / 100)
    return progress


def test_off_by_default() -> None:
    policy = TailKillPolicy()
    assert not policy.enabled
    progress = _step(policy, 40)
    for i in range(39):
        progress.finish(f"t{i:02d}", now=10)
    assert progress.due(now=10_000) == []


def test_kills_the_stragglers_after_the_grace_period() -> None:
    progress = _step(TailKillPolicy(target=0.9, grace_sec=180, min_tasks=10), 20)
    for i in range(17):
        progress.finish(f"t{i:02d}", now=100)
    assert progress.threshold_at is None  # 17/20 < 18 needed
    assert progress.due(now=500) == []
    progress.finish("t17", now=600)  # 18/20: the grace period starts
    assert progress.threshold_at == 600
    assert progress.due(now=779) == []
    assert progress.due(now=780) == ["t18", "t19"]  # oldest first
    assert progress.due(now=900) == []  # each once
    assert progress.snapshot()["killed"] == 2


def test_a_straggler_finishing_in_the_grace_period_is_spared() -> None:
    progress = _step(TailKillPolicy(target=0.5, grace_sec=10, min_tasks=1), 4)
    progress.finish("t00", now=1)
    progress.finish("t01", now=2)
    progress.finish("t03", now=5)
    assert progress.due(now=12) == ["t02"]


def test_small_steps_are_never_cut() -> None:
    progress = _step(TailKillPolicy(target=0.5, grace_sec=0, min_tasks=32), 8)
    for i in range(7):
        progress.finish(f"t{i:02d}", now=1)
    assert progress.due(now=1000) == []


@pytest.mark.parametrize(
    ("target", "total", "needed"), [(0.95, 512, 487), (0.5, 3, 2), (0.9, 10, 9)]
)
def test_needed(target: float, total: int, needed: int) -> None:
    assert TailKillPolicy(target=target).needed(total) == needed


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_bad_target(bad: float) -> None:
    with pytest.raises(ValueError, match="tail_kill_target"):
        TailKillPolicy(target=bad)


def test_coordinator_limits_concurrency() -> None:
    async def scenario() -> int:
        coord = TrialCoordinator(max_concurrent=2, tick_sec=0.01)
        peak = 0
        running = 0

        async def trial(i: int) -> None:
            nonlocal peak, running
            assert await coord.acquire("train:1", f"t{i}")
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            await coord.release("train:1", f"t{i}")

        await asyncio.gather(*(trial(i) for i in range(7)))
        snap = await coord.snapshot("train:1")
        assert snap["done"] == 7 and snap["slots_in_use"] == 0
        return peak

    assert asyncio.run(scenario()) == 2


def test_coordinator_stops_running_and_queued_stragglers() -> None:
    clock = Clock()

    async def scenario() -> dict[str, str]:
        coord = TrialCoordinator(
            max_concurrent=2,
            policy=TailKillPolicy(target=0.4, grace_sec=30, min_tasks=4),
            clock=clock,
            tick_sec=0.01,
        )
        outcome: dict[str, str] = {}

        async def fast(name: str) -> None:
            assert await coord.acquire("train:3", name)
            await coord.release("train:3", name)
            outcome[name] = "done"

        async def slow(name: str) -> None:
            if not await coord.acquire("train:3", name):
                outcome[name] = "stopped while queued"
                return
            while not await coord.should_stop("train:3", name):
                await asyncio.sleep(0.01)
            await coord.release("train:3", name, finished=False)
            outcome[name] = "stopped while running"

        slow_task = asyncio.create_task(slow("s1"))
        await asyncio.sleep(0.02)  # s1 holds a slot
        await fast("f1")
        await fast("f2")  # 2 of 5 done once s2, s3 register: >= 40%, the grace starts
        queued = asyncio.create_task(slow("s2"))
        blocker = asyncio.create_task(slow("s3"))  # s3 takes the second slot; s2 waits
        await asyncio.sleep(0.05)
        clock.now = 29
        await asyncio.sleep(0.05)
        assert not slow_task.done()
        clock.now = 31
        await asyncio.wait_for(asyncio.gather(slow_task, queued, blocker), timeout=5)
        return outcome

    outcome = asyncio.run(scenario())
    assert outcome["f1"] == outcome["f2"] == "done"
    assert outcome["s1"] == "stopped while running"
    assert sorted([outcome["s2"], outcome["s3"]]) == [
        "stopped while queued",
        "stopped while running",
    ]


def test_two_steps_in_flight_share_the_limit_the_older_step_goes_first_and_is_cut_alone() -> None:
    """colocate_async: step 4's trials start while step 3's still run and wait. The limit holds
    across both, a free slot goes to step 3's waiting trial first (the step the trainer waits
    on) even when step 4's asked earlier, and step 3's tail-kill stops step 3's stragglers
    only."""
    clock = Clock()

    async def scenario() -> tuple[list[str], dict[str, str], int]:
        coord = TrialCoordinator(
            max_concurrent=3,
            policy=TailKillPolicy(target=0.5, grace_sec=30, min_tasks=4),
            clock=clock,
            tick_sec=0.01,
        )
        started: list[str] = []
        outcome: dict[str, str] = {}
        running = peak = 0
        finish = {name: asyncio.Event() for name in "cdpqrs"}

        async def trial(group: str, name: str) -> None:
            nonlocal running, peak
            if await coord.acquire(group, name) is None:
                outcome[name] = "stopped while queued"
                return
            started.append(name)
            running += 1
            peak = max(peak, running)
            while name not in finish or not finish[name].is_set():
                if await coord.should_stop(group, name):
                    running -= 1
                    await coord.release(group, name, finished=False)
                    outcome[name] = "stopped while running"
                    return
                await asyncio.sleep(0.01)
            running -= 1
            await coord.release(group, name)
            outcome[name] = "done"

        async def settle() -> None:
            await asyncio.sleep(0.08)

        tasks = [asyncio.create_task(trial("train:3", n)) for n in "abc"]  # a, b straggle
        await settle()  # a, b, c run
        tasks += [asyncio.create_task(trial("train:4", n)) for n in "pqrs"]
        await settle()  # step 4 waits
        tasks.append(asyncio.create_task(trial("train:3", "d")))  # a worker slow to start it
        await settle()
        assert started == ["a", "b", "c"], started
        finish["c"].set()
        await settle()
        assert started == ["a", "b", "c", "d"], started  # step 3's d before step 4's p
        finish["d"].set()  # 2 of step 3's 4 done: its grace period starts now (t=0)
        await settle()
        assert started[4:] == ["p"], started  # the freed slot: step 4's first
        clock.now = 31.0  # step 3's grace is over: a and b are stopped, step 4 keeps running
        await settle()
        assert outcome.get("a") == outcome.get("b") == "stopped while running", outcome
        assert sorted(started[5:]) == ["q", "r"], started
        for name in "pqrs":
            finish[name].set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        return started, outcome, peak

    started, outcome, peak = asyncio.run(scenario())
    assert peak == 3, peak
    assert started == ["a", "b", "c", "d", "p", *started[5:7], "s"], started
    assert {n: outcome[n] for n in "cdpqrs"} == dict.fromkeys("cdpqrs", "done")
