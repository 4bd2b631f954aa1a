"""Run one rollout: a Harbor trial for a task, retried only when it left no verifier result,
under the run's concurrency limit and tail-killer. Imports Harbor lazily; no verl.

Layout: `<trials_dir>/<step_dir>/<task>-<8 hex>[-r<N>]/` per attempt (Harbor's trial dir:
result.json, agent/, verifier/, trial.log); the proxy writes proxy/litellm-trajectory.jsonl
there too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from hvt.trajectory.credentials import revoke
from verl_patch.rollout_settings import RolloutSettings
from verl_patch.termination import Termination, should_retry
from verl_patch.trial_coordinator import DEFAULT_HOST
from verl_patch.trial_outcome import TrialReport, read_trial

if TYPE_CHECKING:
    from harbor_patch.trial_network import SandboxNetworkPolicy

# Harbor imports LiteLLM, which otherwise fetches its model cost map from GitHub (unreachable
# from most clusters) with retries on every import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

log = logging.getLogger(__name__)


class Coordination(Protocol):
    """verl_patch.trial_coordinator.TrialCoordinator, in-process or behind a Ray actor."""

    async def acquire(self, group: str, trial_id: str) -> str | None: ...
    async def reassign(self, group: str, trial_id: str, setup_failed: bool) -> str | None: ...
    async def release(
        self, group: str, trial_id: str, finished: bool = True, setup_failed: bool | None = None
    ) -> str | None: ...
    async def should_stop(self, group: str, trial_id: str) -> bool: ...


@dataclass
class RolloutResult:
    rollout_id: str
    attempts: list[TrialReport] = field(default_factory=list)
    tail_killed: bool = False
    wall_sec: float = 0.0
    queued_sec: float = 0.0
    hosts: list[str] = field(default_factory=list)  # the sandbox host of each attempt
    host_lost: str | None = None  # the last attempt's host failed its health check under it

    @property
    def final(self) -> TrialReport | None:
        return self.attempts[-1] if self.attempts else None


def task_slug(task_path: str | Path) -> str:
    name = Path(str(task_path).rstrip("/")).name or "task"
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40] or "task"


def step_dir_name(step: int | None, split: str = "train") -> str:
    prefix = "val_step" if split == "val" else "step"
    return f"{prefix}_{step:04d}" if step is not None and step >= 0 else f"{prefix}_none"


def build_trial_config(
    settings: RolloutSettings,
    task_path: Path,
    trials_dir: Path,
    trial_name: str,
    extra_compose: list[Path] | None = None,
) -> Any:
    from harbor.models.trial.config import (
        AgentConfig,
        EnvironmentConfig,
        TaskConfig,
        TrialConfig,
        VerifierConfig,
    )

    agent = AgentConfig(
        name=None if settings.agent_import_path else settings.agent_name,
        import_path=settings.agent_import_path,
        model_name=settings.model_name,
        override_timeout_sec=settings.agent_override_timeout_sec,
        max_timeout_sec=settings.agent_max_timeout_sec,
        kwargs=dict(settings.agent_kwargs),
    )
    environment = EnvironmentConfig(
        type=None if settings.env_import_path else settings.env_type,
        import_path=settings.env_import_path,
        force_build=settings.force_build,
        delete=settings.delete,
        override_cpus=settings.override_cpus,
        override_memory_mb=settings.override_memory_mb,
        extra_docker_compose=list(extra_compose or []),
        kwargs=dict(settings.env_kwargs),
    )
    return TrialConfig(
        task=TaskConfig(path=task_path),
        trial_name=trial_name,
        trials_dir=trials_dir,
        agent=agent,
        environment=environment,
        verifier=VerifierConfig(disable=not settings.verifier_enabled),
        agent_timeout_multiplier=settings.agent_timeout_multiplier,
        agent_setup_timeout_multiplier=settings.agent_setup_timeout_multiplier,
        verifier_timeout_multiplier=settings.verifier_timeout_multiplier,
        environment_build_timeout_multiplier=settings.environment_build_timeout_multiplier,
    )


def sandbox_network_policy(settings: RolloutSettings) -> SandboxNetworkPolicy:
    """harbor_agent.sandbox_network with the proxy host it allows (from the proxy URL)."""
    from harbor_patch.trial_network import SandboxNetworkPolicy

    host = urlsplit(settings.proxy_url).hostname if settings.proxy_url else None
    return SandboxNetworkPolicy(settings.sandbox_network, host or "")  # type: ignore[arg-type]


_overlay_lock = threading.Lock()
_overlays: dict[tuple[Any, ...], Path] = {}


def stock_docker_overlay(settings: RolloutSettings) -> list[Path]:
    """For Harbor's own DockerEnvironment: a compose overlay with the sandbox labels and, when a
    runtime image is set, the runtime volume (staged on the daemon first) mounted read-only.
    Once per process. Blocking."""
    from harbor_patch import labels
    from harbor_patch.environments import agent_runtime, compose_overlay
    from harbor_patch.environments.docker_daemon import DockerDaemon

    runtime = settings.overlay_runtime
    key = (settings.overlay_docker_host, runtime, settings.pod_name_prefix)
    with _overlay_lock:
        if key not in _overlays:
            volume = None
            if runtime is not None:
                daemon = DockerDaemon.resolve(
                    settings.overlay_docker_host, settings.overlay_docker_cert_path
                )
                volume = agent_runtime.ensure_runtime_volume(
                    daemon, runtime.image, runtime.image_subpath
                ).volume
            spec = compose_overlay.overlay(
                labels.sandbox_labels(settings.pod_name_prefix),
                runtime_volume=volume,
                runtime_mount_path=runtime.mount_path if runtime else None,
            )
            directory = Path(tempfile.mkdtemp(prefix="hvt-compose-"))
            _overlays[key] = compose_overlay.write(directory / "docker-compose-hvt.json", spec)
        return [_overlays[key]]


async def run_attempt(
    settings: RolloutSettings,
    task_path: Path,
    trials_dir: Path,
    trial_name: str,
    should_stop: Callable[[], Awaitable[bool]] | None = None,
    poll_sec: float = 2.0,
) -> TrialReport:
    """One Harbor trial. `should_stop` is polled while it runs; True cancels it (Harbor then
    records the cancellation, stops and deletes the sandbox, and writes result.json)."""
    from harbor_patch.trial_network import create_trial

    trials_dir.mkdir(parents=True, exist_ok=True)
    trial_dir = trials_dir / trial_name
    try:
        extra = list(settings.extra_compose)
        if settings.uses_stock_docker:
            extra += await asyncio.to_thread(stock_docker_overlay, settings)
        config = build_trial_config(settings, task_path, trials_dir, trial_name, extra)
        trial = await create_trial(config, sandbox_network_policy(settings))
    except Exception as exc:  # bad task dir, bad kwargs, runtime staging: never reached the agent
        log.error("trial %s could not be created: %s", trial_name, exc)
        trial_dir.mkdir(parents=True, exist_ok=True)
        report = read_trial(trial_dir)
        report.exception_type = type(exc).__name__
        report.exception_message = str(exc)[:2000]
        (trial_dir / "exception.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        return report
    runner = asyncio.create_task(trial.run(), name=f"trial {trial_name}")
    killed = False
    try:
        while not runner.done():
            await asyncio.wait({runner}, timeout=poll_sec)
            # once: a second cancel would cut Harbor's own cleanup (sandbox stop) short
            if not killed and not runner.done() and should_stop is not None and await should_stop():
                log.warning("tail-killer: stopping trial %s", trial_name)
                killed = True
                runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            if not killed:
                raise
    finally:
        if not runner.done():  # we were cancelled from outside: let Harbor clean up first
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        revoke(trial_dir)  # the trial's proxy credential ends with it
    return read_trial(trial_dir, tail_killed=killed)


async def run_rollout(
    settings: RolloutSettings,
    task_path: str | Path,
    step_dir: str,
    *,
    coordination: Coordination | None = None,
    group: str = "train:none",
    poll_sec: float = 2.0,
) -> RolloutResult:
    """Run the task's trial, retrying (max_retries) only while no verifier result came back."""
    task = Path(task_path)
    if not (task / "task.toml").is_file():
        raise FileNotFoundError(
            f"harbor_task_path {task} has no task.toml (the dataset row's "
            "extra_info.harbor_task_path must be a Harbor task directory the trainer can read)"
        )
    rollout_id = f"{task_slug(task)}-{uuid.uuid4().hex[:8]}"
    result = RolloutResult(rollout_id)
    started = time.monotonic()
    trials_dir = settings.trials_dir / step_dir
    host: str | None = DEFAULT_HOST
    if coordination is not None:
        host = await coordination.acquire(group, rollout_id)
    result.queued_sec = time.monotonic() - started
    setup_failed: bool | None = None
    try:
        if host is None:  # the tail-killer stopped it before it got a slot
            result.tail_killed = True
            trial_dir = trials_dir / rollout_id
            trial_dir.mkdir(parents=True, exist_ok=True)
            result.attempts.append(read_trial(trial_dir, tail_killed=True))
            return result

        async def stop() -> bool:
            return coordination is not None and await coordination.should_stop(group, rollout_id)

        for attempt in range(settings.max_retries + 1):
            name = rollout_id if attempt == 0 else f"{rollout_id}-r{attempt}"
            result.hosts.append(host)
            report = await run_attempt(
                settings.for_host(host), task, trials_dir, name, stop, poll_sec
            )
            result.attempts.append(report)
            if report.tail_killed:
                result.tail_killed = True
                break
            termination = report.termination
            setup_failed = termination is Termination.ENV_SETUP_FAILED
            if not should_retry(termination, report.has_reward, attempt, settings.max_retries):
                break
            log.warning(
                "trial %s: no verifier result (%s: %s) on %s; retrying (%d/%d)",
                name,
                termination.value,
                report.exception_type or "no reward file",
                host,
                attempt + 1,
                settings.max_retries,
            )
            if coordination is not None:
                host = await coordination.reassign(group, rollout_id, setup_failed)
                setup_failed = None  # reported to the host it left
                if host is None:  # stopped while waiting for a host
                    result.tail_killed = True
                    break
        return result
    finally:
        result.wall_sec = time.monotonic() - started
        if coordination is not None:
            result.host_lost = await coordination.release(
                group, rollout_id, finished=not result.tail_killed, setup_failed=setup_failed
            )


def summary(result: RolloutResult) -> dict[str, Any]:
    final = result.final
    return {
        "rollout_id": result.rollout_id,
        "attempts": len(result.attempts),
        "termination": (final.termination if final else Termination.ENV_SETUP_FAILED).value,
        "reward": final.reward_value if final else 0.0,
        "has_reward": bool(final and final.has_reward),
        "tail_killed": result.tail_killed,
        "wall_sec": round(result.wall_sec, 3),
    }
