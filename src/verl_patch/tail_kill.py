"""The tail-killer policy: once a target fraction of a step's trials is done, give the rest a
grace period, then stop whoever is still running (the slowest trials, which hold the whole
step back while the GPUs idle).

Config (runtime_info.input.harbor_runtime):
  tail_kill_target     1.0 = off; 0.95 = start the grace period when 95% of the trials are done
  tail_kill_grace_sec  how long the remaining trials still get after that
  tail_kill_min_tasks  steps with fewer trials are never cut (small steps, validation subsets)

Pure logic with an injected clock; `trial_coordinator` applies it across trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TailKillPolicy:
    target: float = 1.0
    grace_sec: float = 180.0
    min_tasks: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"tail_kill_target must be in (0, 1], got {self.target}")
        if self.grace_sec < 0 or self.min_tasks < 0:
            raise ValueError("tail_kill_grace_sec and tail_kill_min_tasks must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.target < 1.0

    def needed(self, total: int) -> int:
        """Trials that must be done before the grace period starts."""
        return max(1, math.ceil(self.target * total - 1e-9))


@dataclass
class StepProgress:
    """One step's (or one validation round's) trials as the tail-killer sees them."""

    policy: TailKillPolicy
    started: dict[str, float] = field(default_factory=dict)  # trial id -> registration time
    finished: set[str] = field(default_factory=set)
    killed: set[str] = field(default_factory=set)
    threshold_at: float | None = None

    @property
    def total(self) -> int:
        return len(self.started)

    @property
    def done(self) -> int:
        return len(self.finished)

    def register(self, trial_id: str, now: float) -> None:
        self.started.setdefault(trial_id, now)

    def finish(self, trial_id: str, now: float) -> None:
        if trial_id in self.started:
            self.finished.add(trial_id)
        self._update(now)

    def _update(self, now: float) -> None:
        p = self.policy
        if (
            self.threshold_at is None
            and p.enabled
            and self.total >= max(1, p.min_tasks)
            and self.done >= p.needed(self.total)
        ):
            self.threshold_at = now

    def due(self, now: float) -> list[str]:
        """Trials to stop now, oldest first; each is returned once (then counted killed)."""
        self._update(now)
        if self.threshold_at is None or now - self.threshold_at < self.policy.grace_sec:
            return []
        victims = sorted(
            (t for t in self.started if t not in self.finished and t not in self.killed),
            key=lambda t: (self.started[t], t),
        )
        self.killed.update(victims)
        return victims

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "total": self.total,
            "done": self.done,
            "killed": len(self.killed),
            "running": self.total - self.done - len(self.killed - self.finished),
            "threshold_at": self.threshold_at,
        }
