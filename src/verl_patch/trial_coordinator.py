"""Coordinates the trials of a run across verl's agent-loop workers: how many run at once
(harbor_runtime.num_workers) and which ones the tail-killer stops.

verl 0.9.1 starts every sample of a batch at once in its agent-loop workers; without a limit a
step of 64 x 8 would start 512 sandboxes together. Each trial therefore takes a slot here
first. In a training run one instance lives in a named Ray actor (`agent_loop.py`), shared by
all workers; tests and single-process use run it in-process. Pure asyncio, no Ray import.

Trials are grouped per step ("train:12", "val:10"); the tail-kill policy applies per group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

from verl_patch.tail_kill import StepProgress, TailKillPolicy

MAX_GROUPS = 8  # old steps' bookkeeping is dropped beyond this


class TrialCoordinator:
    def __init__(
        self,
        max_concurrent: int,
        policy: TailKillPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_sec: float = 1.0,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.max_concurrent = max_concurrent
        self.policy = policy or TailKillPolicy()
        self.clock = clock
        self.tick_sec = tick_sec
        self.running: set[tuple[str, str]] = set()
        self.groups: OrderedDict[str, StepProgress] = OrderedDict()
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # bound to the loop that first uses it (the actor's)
            self._cond = asyncio.Condition()
        return self._cond

    def _group(self, group: str) -> StepProgress:
        progress = self.groups.get(group)
        if progress is None:
            progress = self.groups[group] = StepProgress(self.policy)
            while len(self.groups) > MAX_GROUPS:
                self.groups.popitem(last=False)
        return progress

    async def acquire(self, group: str, trial_id: str) -> bool:
        """Register the trial and wait for a slot. False: it was stopped while waiting."""
        progress = self._group(group)
        progress.register(trial_id, self.clock())
        cond = self._condition()
        async with cond:
            while True:
                progress.due(self.clock())
                if trial_id in progress.killed:
                    return False
                if len(self.running) < self.max_concurrent:
                    self.running.add((group, trial_id))
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=self.tick_sec)

    async def release(self, group: str, trial_id: str, finished: bool = True) -> None:
        """The trial is over (finished=True) or was stopped; its slot goes to the next one."""
        progress = self._group(group)
        if finished:
            progress.finish(trial_id, self.clock())
        cond = self._condition()
        async with cond:
            self.running.discard((group, trial_id))
            cond.notify_all()

    async def should_stop(self, group: str, trial_id: str) -> bool:
        progress = self._group(group)
        progress.due(self.clock())
        return trial_id in progress.killed

    async def snapshot(self, group: str) -> dict[str, float | int | None]:
        return {**self._group(group).snapshot(), "slots_in_use": len(self.running)}
