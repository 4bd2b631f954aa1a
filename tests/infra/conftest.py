"""Image fixtures: `make repos image` once per session, then containers per test module.

The images are built on the test bed's stand-in base (local/python:3.12-bookworm) and reused
across the session; a second session rebuilds only what changed (BuildKit cache).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = "local/python:3.12-bookworm"
PREFIX = "verl-swe-rl"
IMAGES = {t: f"{PREFIX}/{t}:latest" for t in ("trainer", "proxy", "agent-runtime")}


def _docker_ok() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def images(pytestconfig: pytest.Config) -> dict[str, str]:
    """Build (or refresh from cache) the three images once; the build log shows live."""
    if not _docker_ok():
        pytest.skip("no Docker engine (fix: make testbed)")
    if not _image_exists(STAND_IN):
        pytest.skip(f"the stand-in base {STAND_IN} is missing (fix: make testbed)")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    hvt = str(Path(sys.executable).with_name("hvt"))
    with capture.global_and_fixture_disabled():  # type: ignore[union-attr]
        print("\n[infra] make repos image (first build ~5 min; then cached)", flush=True)
        started = time.monotonic()
        subprocess.run([hvt, "repos"], cwd=ROOT, check=True)
        subprocess.run(
            ["make", "--no-print-directory", "image", f"BASE_IMAGE={STAND_IN}"],
            cwd=ROOT,
            check=True,
        )
        print(f"[infra] images ready in {time.monotonic() - started:.0f} s", flush=True)
    return IMAGES


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
    from hvt.lockfile import read_pins

    return read_pins(ROOT / "locks" / lock)
