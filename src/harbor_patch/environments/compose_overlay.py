"""A docker compose overlay for Harbor sandboxes: labels, and the agent runtime mounted read-only.

Harbor merges `-f` files in order; this overlay comes last. It

* labels every service of the project (main and any task-defined sidecar) and the project
  network with `harbor-run=<prefix>` and the owner labels, so `hvt clean --pods` finds them;
* stops containers after 1 s instead of 10 (nothing in a sandbox needs a graceful stop);
* names the image of `main` (`main_image`, env_image.py) when the environment gives one, so a
  build tags it by content and a warmed host starts from it;
* mounts the staged runtime volume (declared external: compose never creates or deletes it)
  read-only at the runtime mount path of `main`, and tells the agent where it is
  (CUSTOM_AGENT_RUNTIME_ROOT).

It works for Harbor's own DockerEnvironment too (as an `extra_docker_compose` file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

MAIN_SERVICE = "main"
RUNTIME_ROOT_ENV = "CUSTOM_AGENT_RUNTIME_ROOT"
# Harbor's `main` runs `sleep infinity` as PID 1, which ignores SIGTERM: without this every
# teardown waits Docker's default 10 s before SIGKILL. Sandboxes are thrown away anyway.
STOP_GRACE = "1s"


def service_names(compose_files: Iterable[Path]) -> list[str]:
    """`main` plus every service the task's own compose files define."""
    names = [MAIN_SERVICE]
    for path in compose_files:
        document = yaml.safe_load(Path(path).read_text()) or {}
        services = document.get("services") if isinstance(document, dict) else None
        if isinstance(services, dict):
            names += [str(name) for name in services if str(name) not in names]
    return names


def overlay(
    labels: Mapping[str, str],
    services: Iterable[str] = (MAIN_SERVICE,),
    runtime_volume: str | None = None,
    runtime_mount_path: str | None = None,
    main_image: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "services": {
            name: {"labels": dict(labels), "stop_grace_period": STOP_GRACE} for name in services
        },
        "networks": {"default": {"labels": dict(labels)}},
    }
    if main_image:
        spec["services"].setdefault(MAIN_SERVICE, {"labels": dict(labels)})["image"] = main_image
    if runtime_volume:
        if not runtime_mount_path or not runtime_mount_path.startswith("/"):
            raise ValueError(
                f"agent_runtime_mount_path must be an absolute path, got {runtime_mount_path!r}"
            )
        main = spec["services"].setdefault(MAIN_SERVICE, {"labels": dict(labels)})
        main["volumes"] = [
            {
                "type": "volume",
                "source": runtime_volume,
                "target": runtime_mount_path,
                "read_only": True,
                "volume": {"nocopy": True},
            }
        ]
        main["environment"] = {RUNTIME_ROOT_ENV: runtime_mount_path}
        spec["volumes"] = {runtime_volume: {"external": True, "name": runtime_volume}}
    return spec


def write(path: Path, spec: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=True))
    tmp.replace(path)
    return path
