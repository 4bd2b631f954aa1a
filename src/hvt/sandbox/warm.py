"""`hvt sandbox warm`: every task's environment image on every sandbox host, before training.

SWE task images are 1-3 GB each; a cold host spends the first step building or pulling them.
Warming builds (or pulls, for a task that names its own `docker_image`) the image a trial of
each task would start from, on each host of the fleet (`harbor_agent.docker_hosts`, else the
one configured daemon), through the trial's own environment: Harbor's `Trial.create` with the
run's settings (compose files, BASE_IMAGE override, limits), then
`RemoteDockerEnvironment.build_image`, which builds and starts nothing else. The image is
tagged by content (`hvt-env/<task>:<digest>`, harbor_patch.environments.env_image), so:

* a second warm finds every tag present and builds nothing;
* a trial on a warmed host starts from the tag without building (`environment_force_build:
  false`, the default); a changed task or build argument is a new tag and builds once.

Each host builds up to its own limit at once (`max_concurrent_trials`, else
`harbor_runtime.num_workers`), further capped by `parallel`.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from hvt.sandbox.check import hosts_and_limits, oracle_settings
from verl_patch import harbor_trial
from verl_patch.rollout_settings import REMOTE_DOCKER_MODULE, RolloutSettings

REMOTE_DOCKER = f"{REMOTE_DOCKER_MODULE}:RemoteDockerEnvironment"


class WarmError(ValueError):
    """The configuration cannot be warmed; the message names the key and the fix."""


@dataclass(frozen=True)
class Warmed:
    task: str
    host: str
    image: str | None
    source: str  # present | built | pulled | failed
    size_bytes: int
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def require_warmable(settings: RolloutSettings) -> None:
    if settings.env_import_path == REMOTE_DOCKER:
        return
    if (settings.env_import_path or "").startswith("harbor_patch.environments.kubernetes"):
        raise WarmError(
            "harbor_agent.environment_import_path is the Kubernetes environment: sandbox pods "
            "pull their images through the cluster's nodes; pre-pull them there (a DaemonSet, "
            "or the registry mirror of docs/provisioning.md); `hvt sandbox warm` is for Docker "
            "hosts"
        )
    raise WarmError(
        f"harbor_agent.environment_import_path is {settings.env_import_path!r}, which builds on "
        "every trial and names no image to warm; set it to "
        f"{REMOTE_DOCKER} (it serves the local socket as well as TLS hosts and fleets)"
    )


async def warm_one(
    settings: RolloutSettings, task: Path, host: str, scratch: Path, rebuild: bool = False
) -> Warmed:
    """Build or find `task`'s image on `host` through the trial's own environment."""
    from harbor.trial.trial import Trial

    started = time.monotonic()
    on_host = settings.for_host(host)
    name = f"warm-{harbor_trial.task_slug(task)}-{uuid.uuid4().hex[:8]}"
    try:
        config = harbor_trial.build_trial_config(
            on_host, task, scratch, name, list(on_host.extra_compose)
        )
        trial = await Trial.create(config)
        environment = trial.agent_environment
        size = await environment.build_image(rebuild=rebuild)
        return Warmed(task.name, host, environment.main_image, str(environment.image_source),
                      size, time.monotonic() - started)  # fmt: skip
    except Exception as exc:  # reported per task and host; the others go on
        return Warmed(task.name, host, None, "failed", 0, time.monotonic() - started,
                      f"{type(exc).__name__}: {str(exc).strip()[-1500:]}")  # fmt: skip
    finally:
        shutil.rmtree(scratch / name, ignore_errors=True)


async def warm(
    settings: RolloutSettings,
    tasks: list[Path],
    parallel: int = 4,
    rebuild: bool = False,
    on_done: Callable[[Warmed], None] | None = None,
) -> list[Warmed]:
    """Every task on every host, each host within min(its limit, parallel); in (host, task)
    order."""
    require_warmable(settings)
    plain = oracle_settings(settings)  # Trial.create makes an agent too: the oracle needs nothing
    scratch = Path(tempfile.mkdtemp(prefix="hvt-warm-"))
    jobs: list[Awaitable[Warmed]] = []
    for host, cap in hosts_and_limits(plain):
        limit = asyncio.Semaphore(max(1, min(cap, parallel)))

        async def limited(task: Path, host: str = host, limit: asyncio.Semaphore = limit) -> Warmed:
            async with limit:
                outcome = await warm_one(plain, task, host, scratch, rebuild)
            if on_done is not None:
                on_done(outcome)
            return outcome

        jobs += [limited(task) for task in tasks]
    try:
        return list(await asyncio.gather(*jobs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True)
class Summary:
    images: int  # distinct (host, image) pairs now on the hosts
    built: int
    pulled: int
    present: int
    failed: int
    gigabytes: float  # their total size (layers shared between images are counted per image)
    seconds: float

    @classmethod
    def of(cls, outcomes: list[Warmed], seconds: float) -> Summary:
        sizes = {(o.host, o.image): o.size_bytes for o in outcomes if o.ok}
        count = collections.Counter(o.source for o in outcomes)
        return cls(
            images=len(sizes),
            built=count["built"],
            pulled=count["pulled"],
            present=count["present"],
            failed=count["failed"],
            gigabytes=sum(sizes.values()) / 1e9,
            seconds=seconds,
        )
