"""The preflight check that every sandbox host already has the dataset's task images.

Registered into `hvt dryrun` / `hvt launch` by the command line (hvt.commands.preflight), since
the preflight itself does not import Harbor. For each host of the fleet (or the one daemon), the
tasks of `data.train_index` and `data.val_index` whose image (the content tag a trial would start
from, harbor_patch.environments.env_image) is not on the host are counted: a warning names the
host, the count and the first few tasks, with `hvt sandbox warm` as the remedy. Not a failure:
such a trial still builds its image, only slower, and the first step waits on it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from harbor_patch.environments import env_image
from harbor_patch.environments.docker_daemon import DockerDaemon
from hvt.config.scan import HUMAN_MARKER
from hvt.preflight.check import Check, Context, ok, skip, warn
from hvt.preflight.trees import input_path
from hvt.run.tasks_index import TaskIndexError, read_task_paths
from hvt.sandbox.check import hosts_and_limits
from hvt.sandbox.warm import WarmError, require_warmable
from verl_patch.rollout_settings import RolloutSettings

NAME = "sandbox.images"
SHOWN = 5


def dataset_tasks(ctx: Context) -> list[Path]:
    data = ctx.cfg.inputs.data
    tasks: list[Path] = []
    for value in (data.train_index, data.val_index):
        path = input_path(ctx, value)
        if HUMAN_MARKER not in (value, data.data_dir) and path.is_file():
            tasks += [t for t in read_task_paths(path) if t not in tasks]
    return tasks


def _daemon(settings: RolloutSettings, host: str) -> DockerDaemon:
    """The daemon of `host` as its trials reach it (a fleet host, else the configured one)."""
    kwargs = settings.for_host(host).env_kwargs
    return DockerDaemon.resolve(
        kwargs.get("docker_host"),
        kwargs.get("docker_cert_path"),
        allow_insecure=bool(kwargs.get("allow_insecure")),
    )


def check_task_images(ctx: Context) -> Iterator[Check]:
    settings = RolloutSettings.from_run_config(
        ctx.cfg, trials_dir=Path(tempfile.gettempdir()) / "hvt-preflight"
    )
    try:
        require_warmable(settings)
    except WarmError as exc:
        yield skip(NAME, f"no warmed images for this environment: {str(exc).split(';')[0]}")
        return
    try:
        tasks = dataset_tasks(ctx)
    except TaskIndexError as exc:
        yield skip(NAME, str(exc))
        return
    here = [t for t in tasks if t.is_dir()]
    if not here:
        yield skip(NAME, f"none of the {len(tasks)} task directories of the index is on this "
                   "machine (an index written with --root-as is read in the trainer)")  # fmt: skip
        return
    wanted = {t: env_image.task_image(t, settings.extra_compose) for t in here}
    for host, _ in hosts_and_limits(settings):
        name = f"{NAME}[{host}]"
        try:
            client = _daemon(settings, host).client(timeout=30)
            try:
                present = {tag for image in client.images.list() for tag in image.tags}
            finally:
                client.close()
        except Exception as exc:  # backend.docker says why in full
            yield skip(name, f"cannot list its images ({type(exc).__name__}); see backend.docker")
            continue
        missing = [t.name for t, image in wanted.items() if image not in present]
        if not missing:
            yield ok(name, f"all {len(wanted)} task images are there")
            continue
        shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
        yield warn(
            name,
            f"{len(missing)} of {len(wanted)} task images missing ({shown}): those trials build "
            "first, and the first step waits on them",
            "hvt sandbox warm --tasks <the tasks directory> (builds them on every host)",
        )
