"""What the tests need, built once per session before any test uses it (a pytest plugin,
registered from tests/conftest.py).

The pinned sources (`hvt repos`), the three images (`make image`) and the LiteLLM proxy venv
(`make proxy-venv`) are built here, with the build's output shown live (long waits show
progress). A prerequisite that cannot be met makes the tests that need it error with the
output: never a skip. The test bed itself (the Docker engine and the local/* base images) comes
from `make testbed`, which `.ci/run` runs first; when it is missing the tests say so and error.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HVT = Path(sys.executable).with_name("hvt")
STAND_IN = "local/python:3.12-bookworm"
PREFIX = "verl-swe-rl"
IMAGES = {t: f"{PREFIX}/{t}:latest" for t in ("trainer", "proxy", "agent-runtime")}
PROXY_VENV = Path(os.environ.get("HVT_PROXY_VENV", ROOT / ".venv-proxy"))
DOCKER_INFO_TIMEOUT_S = 180
TAIL_LINES = 60


def build_step(config: pytest.Config, what: str, cmd: list[str]) -> None:
    """Run one build command with its output shown live; fail with the output's tail."""
    capture = config.pluginmanager.getplugin("capturemanager")
    shown = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    started = time.monotonic()
    with shown:
        print(f"\n[prerequisites] {what}: {' '.join(cmd)}", flush=True)
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            print(line, end="", flush=True)
        code = proc.wait()
        print(
            f"[prerequisites] {what}: exit {code} in {time.monotonic() - started:.0f} s", flush=True
        )
    if code != 0:
        pytest.fail(
            f"{what} failed (`{' '.join(cmd)}`, exit {code}); its last lines:\n{''.join(tail)}",
            pytrace=False,
        )


def require_images(*names: str, remedy: str = "run `make testbed`") -> None:
    """Fail (not skip) when a local image is missing."""
    missing = [
        name
        for name in names
        if subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode
    ]
    if missing:
        pytest.fail(f"missing image(s) {', '.join(missing)} ({remedy})", pytrace=False)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine that answers. A slow one is waited for; a dead one is an error."""
    try:
        proc = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=DOCKER_INFO_TIMEOUT_S
        )
    except FileNotFoundError:
        pytest.fail("no docker CLI on PATH (run `make testbed`)", pytrace=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"`docker info` gave no answer within {DOCKER_INFO_TIMEOUT_S} s: the engine is hung "
            f"(see /var/log/dockerd.log; `make testbed` starts it); output so far: {exc.output!r}",
            pytrace=False,
        )
    if proc.returncode != 0:
        pytest.fail(
            f"`docker info` failed with exit {proc.returncode} (run `make testbed`):\n"
            f"{proc.stderr.strip()}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def repos(pytestconfig: pytest.Config) -> Path:
    """The pinned harbor and verl sources in repos/ (`hvt repos`; a no-op when in place)."""
    build_step(pytestconfig, "hvt repos", [str(HVT), "repos"])
    return ROOT / "repos"


@pytest.fixture(scope="session")
def images(pytestconfig: pytest.Config, docker_engine: None, repos: Path) -> dict[str, str]:
    """Build (or refresh from the build cache) the trainer, proxy and agent-runtime images once,
    on the base `make image` chooses (the public one, or offline the test bed's stand-in).

    HVT_TEST_IMAGES=prebuilt uses the images already tagged and builds nothing: for a second
    worktree whose tests must not retag `latest` under a run that is using it."""
    if os.environ.get("HVT_TEST_IMAGES") == "prebuilt":
        require_images(*IMAGES.values(), remedy="unset HVT_TEST_IMAGES to build them")
        return IMAGES
    build_step(
        pytestconfig,
        "make image (first build ~6 min; then cached)",
        ["make", "--no-print-directory", "image"],
    )
    require_images(*IMAGES.values(), remedy="`make image` passed but did not tag it")
    return IMAGES


@pytest.fixture(scope="session")
def proxy_venv(pytestconfig: pytest.Config) -> Path:
    """The LiteLLM proxy venv (`make proxy-venv`; a no-op when up to date). With
    HVT_TEST_IMAGES=prebuilt an existing HVT_PROXY_VENV is used as it is, like the images: a
    second worktree must not rebuild (and re-point) another checkout's venv."""
    prebuilt = os.environ.get("HVT_TEST_IMAGES") == "prebuilt"
    if prebuilt and (PROXY_VENV / "bin" / "litellm").exists():
        return PROXY_VENV
    build_step(
        pytestconfig,
        "make proxy-venv",
        ["make", "--no-print-directory", "proxy-venv", f"PROXY_VENV={PROXY_VENV}"],
    )
    if not (PROXY_VENV / "bin" / "litellm").exists():
        pytest.fail(f"`make proxy-venv` passed but {PROXY_VENV}/bin/litellm is missing")
    return PROXY_VENV
