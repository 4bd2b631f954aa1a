"""Coordinates the trials of a run across verl's agent-loop workers: how many run at once
(harbor_runtime.num_workers) and which ones the tail-killer stops.

verl 0.9.1 starts every sample of a batch at once in its agent-loop workers; without a limit a
step of 64 x 8 would start 512 sandboxes together. Each trial therefore takes a slot here
first. In a training run one instance lives in a named Ray actor (`agent_loop.py`), shared by
all workers; tests and single-process use run it in-process. Pure asyncio, no Ray import.

Trials are grouped per step ("train:12", "val:10"); the tail-kill policy applies per group.
Under `training.mode: colocate_async` about two steps' trials are in flight at once: a free slot
goes to the oldest step's waiting trials first (the step the trainer waits on), in the order
they asked, and the tail-killer of one step never touches another's trials.

Each trial also gets a sandbox host from the run's Fleet (harbor_agent.docker_hosts): `acquire`
returns its name, `reassign` moves a trial whose sandbox failed to start to another host for its
retry, and a background probe (injected: it needs Docker) checks the hosts' health. Without a
fleet there is one host, DEFAULT_HOST: the backend's own target, never probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from verl_patch.sandbox_fleet import Fleet, FleetHost
from verl_patch.tail_kill import StepProgress, TailKillPolicy

MAX_GROUPS = 8  # old steps' bookkeeping is dropped beyond this
DEFAULT_HOST = "default"  # no fleet: the environment's own daemon or cluster
# a host's health check: None when it answers, else why not (e.g. the ping's error)
Probe = Callable[[FleetHost], Awaitable[str | None]]


class NoHealthyHost(RuntimeError):
    """Every sandbox host has been out for longer than the coordinator waits."""


class TrialCoordinator:
    def __init__(
        self,
        max_concurrent: int,
        policy: TailKillPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_sec: float = 1.0,
        fleet: Fleet | None = None,
        probe: Probe | None = None,
        probe_interval_sec: float = 30.0,
        all_out_limit_sec: float = 600.0,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.max_concurrent = max_concurrent
        self.policy = policy or TailKillPolicy()
        self.clock = clock
        self.tick_sec = tick_sec
        self.fleet = fleet or Fleet([FleetHost(DEFAULT_HOST, None, max_concurrent)])
        self.probe = probe if fleet is not None else None
        self.probe_interval_sec = probe_interval_sec
        self.all_out_limit_sec = all_out_limit_sec
        self.running: set[tuple[str, str]] = set()
        self.tried: dict[str, set[str]] = {}  # trial -> hosts its earlier attempts failed on
        self.groups: OrderedDict[str, StepProgress] = OrderedDict()
        self.group_rank: dict[str, int] = {}  # group -> the order it was first seen in
        # (group, trial) waiting for a slot -> its place in line: (its group's rank, arrival)
        self.waiting: dict[tuple[str, str], tuple[int, int]] = {}
        self._ranks = itertools.count()
        self._arrivals = itertools.count()
        self._cond: asyncio.Condition | None = None
        self._prober: asyncio.Task[None] | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # bound to the loop that first uses it (the actor's)
            self._cond = asyncio.Condition()
        return self._cond

    def _group(self, group: str) -> StepProgress:
        progress = self.groups.get(group)
        if progress is None:
            progress = self.groups[group] = StepProgress(self.policy)
            self.group_rank[group] = next(self._ranks)
            while len(self.groups) > MAX_GROUPS:
                dropped, _ = self.groups.popitem(last=False)
                self.group_rank.pop(dropped, None)
        return progress

    async def acquire(self, group: str, trial_id: str) -> str | None:
        """Register the trial and wait for a slot and a host: the host's name, or None when
        the trial was stopped while waiting."""
        progress = self._group(group)
        progress.register(trial_id, self.clock())
        self._start_probing()
        cond = self._condition()
        key = (group, trial_id)
        async with cond:
            self.waiting[key] = (self.group_rank[group], next(self._arrivals))
            try:
                while True:
                    progress.due(self.clock())
                    if trial_id in progress.killed:
                        return None
                    if len(self.running) < self.max_concurrent and self._next_in_line(key):
                        host = self._place(trial_id)
                        if host is not None:
                            self.running.add(key)
                            return host
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(cond.wait(), timeout=self.tick_sec)
            finally:
                self.waiting.pop(key, None)
                cond.notify_all()  # the next in line may go now

    def _next_in_line(self, key: tuple[str, str]) -> bool:
        """Whether the waiting trial is the first in line: the oldest group's, earliest asked.
        A host for one waiter is a host for any (Fleet.place only prefers), so nobody behind a
        waiter that cannot be placed could be."""
        line = {k: v for k, v in self.waiting.items() if not self._killed(k)}
        return not line or line.get(key) == min(line.values())

    def _killed(self, key: tuple[str, str]) -> bool:
        progress = self.groups.get(key[0])
        return progress is not None and key[1] in progress.killed

    async def reassign(self, group: str, trial_id: str, setup_failed: bool) -> str | None:
        """The trial's attempt ended and it will be retried (it keeps its slot): it leaves its
        host (a failed setup counts against that host) and waits for a host, another one when
        one is healthy (the host may have died under it). None: stopped while waiting."""
        progress = self._group(group)
        cond = self._condition()
        async with cond:
            left = self.fleet.free(trial_id, setup_failed)
            if left is not None:
                self.tried.setdefault(trial_id, set()).add(left)
            cond.notify_all()
            while True:
                progress.due(self.clock())
                if trial_id in progress.killed:
                    return None  # the caller releases its slot
                host = self._place(trial_id)
                if host is not None:
                    return host
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=self.tick_sec)

    async def release(
        self, group: str, trial_id: str, finished: bool = True, setup_failed: bool | None = None
    ) -> str | None:
        """The trial is over (finished=True) or was stopped; its slot and its host go to the
        next one. setup_failed: see Fleet.free. Returns why its host was lost under its last
        attempt (a failed health check while it ran there), else None."""
        progress = self._group(group)
        if finished:
            progress.finish(trial_id, self.clock())
        cond = self._condition()
        async with cond:
            self.running.discard((group, trial_id))
            lost = self.fleet.lost_under(trial_id)
            self.fleet.free(trial_id, setup_failed)
            self.tried.pop(trial_id, None)
            cond.notify_all()
        return lost

    def _place(self, trial_id: str) -> str | None:
        host = self.fleet.place(trial_id, avoid=self.tried.get(trial_id, ()))
        if host is None and self.fleet.all_out():
            since = min(s.out_since or 0.0 for s in self.fleet.hosts.values())
            if self.clock() - since > self.all_out_limit_sec:
                raise NoHealthyHost(
                    f"every sandbox host has been out for more than {self.all_out_limit_sec:.0f}"
                    f" s: {self.fleet.out()}; fix the hosts or harbor_agent.docker_hosts"
                )
        return host

    def _start_probing(self) -> None:
        if self.probe is not None and self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            await self.probe_hosts()
            await asyncio.sleep(self.probe_interval_sec)

    async def probe_hosts(self) -> None:
        """One health check of every host: out when it fails, back when it passes."""
        if self.probe is None:
            return
        states = list(self.fleet.hosts.values())
        results = await asyncio.gather(
            *(self.probe(s.spec) for s in states), return_exceptions=True
        )
        cond = self._condition()
        async with cond:
            for state, result in zip(states, results, strict=True):
                error = (
                    f"{type(result).__name__}: {result}"
                    if isinstance(result, BaseException)
                    else result
                )
                name = state.spec.docker_host
                if error:
                    self.fleet.take_out(name, f"health check failed: {error}", unreachable=True)
                elif not state.healthy:
                    self.fleet.bring_back(name)
            cond.notify_all()

    async def should_stop(self, group: str, trial_id: str) -> bool:
        progress = self._group(group)
        progress.due(self.clock())
        return trial_id in progress.killed

    async def snapshot(self, group: str) -> dict[str, object]:
        return {
            **self._group(group).snapshot(),
            "slots_in_use": len(self.running),
            "hosts": self.fleet.snapshot(),
        }
