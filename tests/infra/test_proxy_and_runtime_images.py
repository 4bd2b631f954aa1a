"""The proxy and agent-runtime images."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra.conftest import inspect, lock_versions, run

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PY = "/opt/venv/bin/python"
RUNTIME = "/opt/custom-agent-runtime/claude-code"
TASK_IMAGE = "local/debian:bookworm"  # a task container with no node of its own
TARGET_IMAGE = "local/python:3.12-bookworm"  # the relay test's server and client


@pytest.fixture(scope="module")
def proxy(container_of: Any) -> Any:
    return container_of("proxy")


def test_proxy_is_non_root_with_its_own_locked_venv(proxy: Any, images: dict[str, str]) -> None:
    assert inspect(images["proxy"])["Config"]["User"] == "1000:1000"
    assert proxy.user().uid == 1000
    locked = lock_versions("proxy.lock")
    for dist in ("litellm", "rich", "certifi", "pydantic"):
        have = proxy.check_output(
            f"{PY} -c 'import importlib.metadata as m; print(m.version(\"{dist}\"))'"
        )
        assert have == locked[dist], dist
    assert "harbor" not in locked  # rich pins keep harbor out of the proxy venv


def test_proxy_runs_our_package_editable(proxy: Any) -> None:
    where = proxy.check_output(f"cd /tmp && {PY} -c 'import hvt; print(hvt.__file__)'")
    assert where == "/workspace/repos/harbor-verl-train/src/hvt/__init__.py"


def test_proxy_entrypoint_execs_hvt(images: dict[str, str]) -> None:
    assert inspect(images["proxy"])["Config"]["Entrypoint"] == ["/entrypoint/proxy.sh"]
    out = run(images["proxy"], "version", timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, "0.1.0"), out.stderr


def test_agent_runtime_reports_claude_and_node(images: dict[str, str]) -> None:
    out = run(images["agent-runtime"], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("claude-code 2.1.330, node v22.")
    assert inspect(images["agent-runtime"])["Config"]["User"] == "1000:1000"


@pytest.fixture(scope="module")
def runtime_volume(images: dict[str, str]) -> Iterator[str]:
    """A named volume filled from the image, as compose does for the task containers."""
    name = f"hvt-infra-runtime-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{name}:/opt/custom-agent-runtime",
            images["agent-runtime"],
        ],
        check=True,
        capture_output=True,
    )
    yield name
    subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True)


def test_claude_runs_in_a_task_container_without_node(runtime_volume: str) -> None:
    bare = subprocess.run(
        ["docker", "run", "--rm", TASK_IMAGE, "sh", "-c", "command -v node || echo none"],
        capture_output=True,
        text=True,
    )
    assert bare.stdout.strip() == "none"
    script = (
        f". {RUNTIME}/runtime-env.sh && command -v claude && command -v node "
        "&& claude --version && node -e 'console.log(process.version)'"
    )
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--user",
            "1234:1234",
            "-v",
            f"{runtime_volume}:/opt/custom-agent-runtime:ro",
            TASK_IMAGE,
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert f"{RUNTIME}/bin/claude" in lines and f"{RUNTIME}/bin/node" in lines
    assert "2.1.330" in out.stdout and "(Claude Code)" in out.stdout
    assert any(line.startswith("v22.") for line in lines)


def test_egress_relay_runs_from_the_agent_runtime_image(images: dict[str, str]) -> None:
    """The sandboxes' egress relay as RemoteDockerEnvironment starts it (sandbox_egress.overlay:
    python3 from this image, nobody, read-only, no capabilities) forwards to its target."""
    from harbor_patch.environments import sandbox_egress

    spec = sandbox_egress.overlay(
        {}, sandbox_egress.ProxyEndpoint("target", 8000), images["agent-runtime"], "unused"
    )["services"][sandbox_egress.RELAY_SERVICE]
    tag = uuid.uuid4().hex[:8]
    network = f"hvt-infra-relaynet-{tag}"
    target, relay = f"hvt-infra-target-{tag}", f"hvt-infra-relay-{tag}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", target, "--network", network, "--network-alias",
             "target", TARGET_IMAGE, "python3", "-m", "http.server", "8000"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["docker", "run", "-d", "--name", relay, "--network", network, "--network-alias",
             "relay", "--user", spec["user"], "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges:true", "--entrypoint", spec["entrypoint"][0],
             images["agent-runtime"], *spec["entrypoint"][1:], *spec["command"]],
            check=True, capture_output=True,
        )  # fmt: skip
        client = (
            "import time, urllib.request\n"
            "for _ in range(60):\n"
            "    try:\n"
            "        print(urllib.request.urlopen('http://relay:8787/', timeout=5).status); break\n"
            "    except OSError:\n"
            "        time.sleep(1)\n"
        )
        out = subprocess.run(
            ["docker", "run", "--rm", "--network", network, TARGET_IMAGE, "python3", "-c", client],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        logs = subprocess.run(["docker", "logs", relay], capture_output=True, text=True)
        assert out.stdout.split() == ["200"], (out.stdout, out.stderr, logs.stdout, logs.stderr)
        assert "egress relay: :8787 -> target:8000" in logs.stdout
    finally:
        subprocess.run(["docker", "rm", "-f", target, relay], capture_output=True)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
