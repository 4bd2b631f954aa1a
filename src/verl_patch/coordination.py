"""One TrialCoordinator for the whole run, shared by verl's agent-loop workers (Ray actors in
separate processes) through a named Ray actor. Imports Ray lazily; no verl.

The actor is `hvt_trials_<8 hex of the trials dir>` in namespace `hvt`, created by the first
worker that asks (get_if_exists), an async actor so waiting trials do not block each other.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from verl_patch.rollout_settings import RolloutSettings
from verl_patch.sandbox_fleet import Fleet, FleetHost
from verl_patch.trial_coordinator import TrialCoordinator

NAMESPACE = "hvt"
MAX_CONCURRENCY = 100_000  # waiting trials are parked coroutines, not threads


def actor_name(settings: RolloutSettings) -> str:
    digest = hashlib.sha256(str(settings.trials_dir).encode()).hexdigest()[:8]
    return f"hvt_trials_{digest}"


class RayCoordination:
    """harbor_trial.Coordination over a Ray actor handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def acquire(self, group: str, trial_id: str) -> str | None:
        host = await self.handle.acquire.remote(group, trial_id)
        return None if host is None else str(host)

    async def reassign(self, group: str, trial_id: str, setup_failed: bool) -> str | None:
        host = await self.handle.reassign.remote(group, trial_id, setup_failed)
        return None if host is None else str(host)

    async def release(
        self, group: str, trial_id: str, finished: bool = True, setup_failed: bool | None = None
    ) -> str | None:
        lost = await self.handle.release.remote(group, trial_id, finished, setup_failed)
        return str(lost) if lost else None

    async def should_stop(self, group: str, trial_id: str) -> bool:
        return bool(await self.handle.should_stop.remote(group, trial_id))

    async def snapshot(self, group: str) -> dict[str, Any]:
        return dict(await self.handle.snapshot.remote(group))


_handles: dict[str, RayCoordination] = {}
_lock = threading.Lock()


def ray_coordination(settings: RolloutSettings) -> RayCoordination:
    """The run's coordinator actor (created by the first caller). The handle is kept for the
    life of this process: a non-detached actor dies with its last handle, and verl builds a
    new agent-loop object for every sample."""
    name = actor_name(settings)
    with _lock:
        if name not in _handles:
            import ray

            actor = ray.remote(TrialCoordinator).options(
                name=name,
                namespace=NAMESPACE,
                get_if_exists=True,
                max_concurrency=MAX_CONCURRENCY,
                num_cpus=0,
            )
            fleet = (
                Fleet(list(settings.fleet), settings.host_failure_threshold)
                if settings.fleet
                else None
            )
            handle = actor.remote(
                settings.max_concurrent, settings.tail_kill, fleet=fleet, probe=ping_daemon
            )
            _handles[name] = RayCoordination(handle)
        return _handles[name]


PING_TIMEOUT_SEC = 10


async def ping_daemon(host: FleetHost) -> str | None:
    """A fleet host's health check: the daemon answers a ping within PING_TIMEOUT_SEC."""
    import asyncio

    from harbor_patch.environments.docker_daemon import DockerDaemon

    def ping() -> None:
        daemon = DockerDaemon.resolve(host.docker_host, host.docker_cert_path)
        client = daemon.client(timeout=PING_TIMEOUT_SEC)
        try:
            client.ping()
        finally:
            client.close()

    try:
        await asyncio.wait_for(asyncio.to_thread(ping), PING_TIMEOUT_SEC + 5)
    except Exception as exc:  # any failure is the host's: refused, TLS, timeout, bad config
        return f"{type(exc).__name__}: {exc}"[:300]
    return None
