"""`hvt sandbox check`: Harbor's oracle agent on every task, on every sandbox host, before a run.

The oracle applies each task's reference solution, so the verifier must give reward 1. One
trial per task and host, through the same code path as the agent loop's trials
(`verl_patch.harbor_trial.run_rollout` with the run's settings: environment, limits, labels,
the BASE_IMAGE override), with no model call and no retry. It shows, before GPU hours are spent:

* every task builds and starts on every host of the fleet (`harbor_agent.docker_hosts`, else
  the one configured backend), and its image is then in that host's build cache;
* every verifier can give a reward of 1 (a task whose oracle fails trains on noise);
* each host within its own limit (`max_concurrent_trials`, else `harbor_runtime.num_workers`).

A table (task, host, reward, termination, seconds) and a summary follow; exit 1 when any trial
did not get reward 1, each failure naming its task, host and trial directory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from verl_patch import harbor_trial
from verl_patch.rollout_settings import RolloutSettings
from verl_patch.trial_coordinator import DEFAULT_HOST


@dataclass(frozen=True)
class Outcome:
    task: str
    host: str
    reward: float | None  # None: no verifier result
    termination: str
    seconds: float
    trial_dir: str
    exception: str | None = None

    @property
    def ok(self) -> bool:
        return self.reward == 1.0


def oracle_settings(settings: RolloutSettings) -> RolloutSettings:
    """The run's settings with Harbor's oracle agent: no model, no credential, no retry."""
    return replace(
        settings, agent_name="oracle", agent_import_path=None, agent_kwargs={}, max_retries=0
    )


def hosts_and_limits(settings: RolloutSettings) -> list[tuple[str, int]]:
    if settings.fleet:
        return [(h.docker_host, h.max_concurrent_trials) for h in settings.fleet]
    return [(DEFAULT_HOST, settings.max_concurrent)]


async def _one(
    settings: RolloutSettings, task: Path, host: str, limit: asyncio.Semaphore, step_dir: str
) -> Outcome:
    async with limit:
        started = time.monotonic()
        result = await harbor_trial.run_rollout(settings.for_host(host), task, step_dir)
    final = result.final
    return Outcome(
        task=task.name,
        host=host,
        reward=final.reward_value if final is not None and final.has_reward else None,
        termination=final.termination.value if final is not None else "no attempt",
        seconds=time.monotonic() - started,
        trial_dir=str(final.trial_dir) if final is not None else "",
        exception=final.exception_type if final is not None else None,
    )


async def run_checks(
    settings: RolloutSettings,
    tasks: list[Path],
    step_dir: str = "oracle",
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """One oracle trial per task and host, each host within its limit; in (host, task) order."""
    oracle = oracle_settings(settings)
    jobs = []
    for host, cap in hosts_and_limits(oracle):
        limit = asyncio.Semaphore(cap)
        jobs += [_one(oracle, task, host, limit, step_dir) for task in tasks]

    async def tracked(job: Awaitable[Outcome]) -> Outcome:
        outcome = await job
        if on_done is not None:
            on_done(outcome)
        return outcome

    return list(await asyncio.gather(*(tracked(j) for j in jobs)))
