"""Image helpers: the images come from the session fixture `images` (`make repos image`, once
per session, in tests/helpers/prerequisites.py), then containers per test module.

The images are built on the test bed's stand-in base (local/python:3.12-bookworm) and reused
across the session; a second session rebuilds only what changed (BuildKit cache).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.prerequisites import IMAGES, PREFIX, STAND_IN

__all__ = ["IMAGES", "PREFIX", "STAND_IN", "container_of", "inspect", "lock_versions", "run"]

ROOT = Path(__file__).resolve().parents[2]


def inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "image", "inspect", image], check=True, capture_output=True, text=True
    ).stdout
    data: list[dict[str, Any]] = json.loads(out)
    return data[0]


def run(image: str, *args: str, entrypoint: str | None = None, **kw: Any) -> Any:
    cmd = ["docker", "run", "--rm"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def container_of(images: dict[str, str]) -> Iterator[Any]:
    """Start a long-lived container of an image (entrypoint: sleep) and hand out its host."""
    import testinfra

    started: list[str] = []

    def start(target: str) -> Any:
        name = f"hvt-infra-{target}-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--entrypoint",
                "sleep",
                images[target],
                "infinity",
            ],
            check=True,
            capture_output=True,
        )
        started.append(name)
        return testinfra.get_host(f"docker://{name}")

    yield start
    for name in started:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def lock_versions(lock: str) -> dict[str, str]:
    from hvt.images.lockfile import read_pins

    return read_pins(ROOT / "locks" / lock)
