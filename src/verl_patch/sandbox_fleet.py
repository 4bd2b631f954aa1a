"""The sandbox hosts a run's trials are spread over (harbor_agent.docker_hosts).

Each host has its own limit (max_concurrent_trials). A trial goes to the healthy host with the
most room (fewest running trials for its limit, then the fewest placed so far, then the order of
the config). A host is taken out, with a warning, after `failure_threshold` sandbox setups in a
row failed on it, or when its health check fails; the health check brings it back. A trial whose
setup failed is placed on another host for its retry when one is healthy.

Pure bookkeeping, no asyncio, Ray or Docker import: the TrialCoordinator owns one Fleet and
waits and probes around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetHost:
    docker_host: str  # unix:///var/run/docker.sock or tcp://<host>:2376; the host's name too
    docker_cert_path: str | None = None
    max_concurrent_trials: int = 8


@dataclass
class HostState:
    spec: FleetHost
    running: set[str] = field(default_factory=set)
    placed: int = 0
    setup_failures: int = 0
    consecutive_failures: int = 0
    out_since: float | None = None
    out_reason: str = ""

    @property
    def healthy(self) -> bool:
        return self.out_since is None

    @property
    def load(self) -> float:
        return len(self.running) / self.spec.max_concurrent_trials


class Fleet:
    def __init__(
        self,
        hosts: Sequence[FleetHost],
        failure_threshold: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not hosts:
            raise ValueError("a fleet needs at least one host")
        names = [h.docker_host for h in hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"a host is listed twice in {names}")
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.hosts = {h.docker_host: HostState(h) for h in hosts}
        self.failure_threshold = failure_threshold
        self.clock = clock
        self.where: dict[str, str] = {}  # trial -> host it runs on
        # trial -> why its host was lost under it (its health check failed while it ran there)
        self.lost: dict[str, str] = {}

    def place(self, trial: str, avoid: Collection[str] = ()) -> str | None:
        """A host for the trial, or None while every usable host is full or out. Hosts in
        `avoid` (where its earlier attempts failed to start) are used only when no other
        host is healthy."""
        healthy = [s for s in self.hosts.values() if s.healthy]
        preferred = [s for s in healthy if s.spec.docker_host not in avoid] or healthy
        free = [s for s in preferred if len(s.running) < s.spec.max_concurrent_trials]
        if not free:
            return None
        order = list(self.hosts)
        best = min(free, key=lambda s: (s.load, s.placed, order.index(s.spec.docker_host)))
        best.running.add(trial)
        best.placed += 1
        self.where[trial] = best.spec.docker_host
        return best.spec.docker_host

    def free(self, trial: str, setup_failed: bool | None) -> str | None:
        """The trial left its host. setup_failed: its sandbox never started there (True), it
        ran (False), or unknown, e.g. stopped by the tail-killer (None). Returns the host."""
        name = self.where.pop(trial, None)
        self.lost.pop(trial, None)
        if name is None:
            return None
        state = self.hosts[name]
        state.running.discard(trial)
        if setup_failed is True:
            state.setup_failures += 1
            state.consecutive_failures += 1
            if state.healthy and state.consecutive_failures >= self.failure_threshold:
                self.take_out(name, f"{state.consecutive_failures} sandbox setups in a row failed")
        elif setup_failed is False:
            state.consecutive_failures = 0
        return name

    def lost_under(self, trial: str) -> str | None:
        """Why the trial's current host was lost while the trial ran there (its health check
        failed), or None. Read it before `free`, which forgets it."""
        return self.lost.get(trial)

    def take_out(self, name: str, reason: str, unreachable: bool = False) -> None:
        """unreachable: the health check failed (the daemon stopped answering), so the trials
        running there lost their host; a streak of failed setups does not say that."""
        state = self.hosts[name]
        if unreachable:
            for trial in state.running:
                self.lost.setdefault(trial, f"{name} {reason}")
        if state.healthy:
            state.out_since = self.clock()
            log.warning(
                "sandbox host %s taken out: %s; its trials go to the other hosts until its "
                "health check passes",
                name,
                reason,
            )
        state.out_reason = reason

    def bring_back(self, name: str) -> None:
        state = self.hosts[name]
        if not state.healthy:
            log.warning(
                "sandbox host %s is back after %.0f s (it was out: %s)",
                name,
                self.clock() - (state.out_since or self.clock()),
                state.out_reason,
            )
        state.out_since = None
        state.out_reason = ""
        state.consecutive_failures = 0

    def all_out(self) -> bool:
        return not any(s.healthy for s in self.hosts.values())

    def out(self) -> dict[str, str]:
        return {n: s.out_reason for n, s in self.hosts.items() if not s.healthy}

    def snapshot(self) -> dict[str, dict[str, int | bool | str]]:
        return {
            name: {
                "running": len(s.running),
                "limit": s.spec.max_concurrent_trials,
                "placed": s.placed,
                "setup_failures": s.setup_failures,
                "healthy": s.healthy,
                "out_reason": s.out_reason,
            }
            for name, s in self.hosts.items()
        }
