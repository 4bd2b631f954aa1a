"""The image a task's sandbox runs, named by its content, and whether a daemon already has it.

Harbor's DockerEnvironment builds `main` from the task's `environment/` on every trial start
(`force_build`), and its compose build file names no image, so each trial's compose project
tags its own copy. Here `main` is tagged `hvt-env/<task>:<digest>`, where the digest covers
what the build reads:

* Harbor's `environment_id`: the content hash of the task's environment directory (Dockerfile,
  build context, the task's own docker-compose.yaml) and its `docker_image`;
* every extra compose file of the run (`extra_docker_compose`, e.g. the BASE_IMAGE build
  argument of `HVT_TASK_BASE_IMAGE`), byte for byte.

The same task with the same build inputs gets the same tag on every host and in every run;
a changed Dockerfile, context file or build argument gets a new one. `hvt sandbox warm` builds
these tags on every sandbox host before training, and a trial whose tag is already on its
daemon starts from it without building (unless `environment_force_build` is true).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

REPOSITORY = "hvt-env"
DIGEST_CHARS = 20


def image_tag(environment_name: str, environment_id: str, build_inputs: Iterable[Path]) -> str:
    """`hvt-env/<task>:<digest>` for this environment and these extra compose files."""
    digest = hashlib.sha256(environment_id.encode())
    for path in build_inputs:
        digest.update(b"\0" + Path(path).read_bytes())
    name = re.sub(r"[^a-z0-9._-]+", "-", environment_name.lower()).strip("-._")[:100] or "task"
    return f"{REPOSITORY}/{name}:{digest.hexdigest()[:DIGEST_CHARS]}"


def task_image(task_dir: Path, build_inputs: Sequence[Path] = ()) -> str:
    """The image a trial of the task at `task_dir` starts from: the task's own `docker_image`,
    else its content tag (what RemoteDockerEnvironment computes from the same inputs)."""
    from harbor.environments.definition import environment_content_hash
    from harbor.models.task.task import Task

    task = Task(task_dir)
    own = task.config.environment.docker_image
    if own:
        return str(own)
    environment_id = environment_content_hash(task.paths.environment_dir, docker_image=None)
    return image_tag(task.short_name, environment_id, build_inputs)
