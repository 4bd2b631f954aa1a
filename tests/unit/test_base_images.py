"""hvt.images.base_images: the choice between the public pinned images and the local
stand-ins (a pure function), the registry probe against real HTTP servers on 127.0.0.1, and
the smoke's build argument as Docker Compose merges it into Harbor's own build file."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hvt.images import base_images as bi
from tests.conftest import ROOT

ANSWERED = bi.Probe("https://registry-1.docker.io/v2/", True, "HTTP 401")
SILENT = bi.Probe("https://registry-1.docker.io/v2/", False, "Name or service not known")
BOTH_STAND_INS = {bi.STAND_IN_PYTHON, bi.STAND_IN_DOCKERD}


# -- choose: the pure function -------------------------------------------------------------------


def test_a_registry_that_answers_gives_the_public_images() -> None:
    for present in (set(), BOTH_STAND_INS):  # stand-ins present or not: public wins
        images = bi.choose(ANSWERED, present)
        assert images.source == "public"
        assert (images.python, images.dockerd) == (bi.PYTHON_BASE, bi.DOCKERD_IMAGE)
    assert images.line == (
        f"images: public (registry-1.docker.io answered) — {bi.PYTHON_BASE}, {bi.DOCKERD_IMAGE}"
    )


def test_no_registry_falls_back_to_the_stand_ins_and_says_why() -> None:
    images = bi.choose(SILENT, BOTH_STAND_INS)
    assert images.source == "local"
    assert (images.python, images.dockerd) == (bi.STAND_IN_PYTHON, bi.STAND_IN_DOCKERD)
    assert images.line == (
        "images: local stand-ins (no registry answered: registry-1.docker.io: Name or service "
        "not known) — local/python:3.12-bookworm, local/dockerd:bookworm"
    )


def test_no_registry_but_the_pinned_images_already_pulled_stays_public() -> None:
    images = bi.choose(SILENT, {bi.PYTHON_BASE, bi.DOCKERD_IMAGE, *BOTH_STAND_INS})
    assert images.source == "public"
    assert "both are on this engine" in images.reason
    assert bi.choose(SILENT, {bi.PYTHON_BASE, *BOTH_STAND_INS}).source == "local"


def test_neither_names_the_missing_images_and_both_fixes() -> None:
    with pytest.raises(bi.NoImagesError) as both:
        bi.choose(SILENT, set())
    text = str(both.value)
    assert "local/python:3.12-bookworm and local/dockerd:bookworm are missing" in text
    assert "make testbed" in text and "https://registry-1.docker.io/v2/" in text
    assert "Name or service not known" in text
    with pytest.raises(bi.NoImagesError) as one:
        bi.choose(SILENT, {bi.STAND_IN_PYTHON})
    assert "stand-in local/dockerd:bookworm is missing" in str(one.value)
    assert "local/python" not in str(one.value).split("missing")[0]


def test_hvt_images_forces_the_choice() -> None:
    assert bi.choose(None, set(), "public").reason == "HVT_IMAGES=public"
    assert bi.choose(SILENT, set(), "public").source == "public"
    forced = bi.choose(ANSWERED, BOTH_STAND_INS, "local")
    assert forced.source == "local" and forced.reason == "HVT_IMAGES=local"
    with pytest.raises(bi.NoImagesError, match=r"local/dockerd:bookworm is missing.*make testbed"):
        bi.choose(ANSWERED, {bi.STAND_IN_PYTHON}, "local")


def test_mode_from_the_environment() -> None:
    assert bi.mode_from({}) == "auto"
    assert bi.mode_from({"HVT_IMAGES": " Public "}) == "public"
    assert bi.mode_from({"HVT_IMAGES": "local"}) == "local"
    with pytest.raises(bi.NoImagesError, match="public, local or auto"):
        bi.mode_from({"HVT_IMAGES": "dockerhub"})


def test_stand_ins_are_recognised() -> None:
    assert bi.is_stand_in(bi.STAND_IN_PYTHON) and bi.is_stand_in("local/debian:bookworm")
    assert not bi.is_stand_in(bi.PYTHON_BASE) and not bi.is_stand_in(bi.DOCKERD_IMAGE)


# -- the copies of the references agree ----------------------------------------------------------


def _arg_default(dockerfile: Path) -> str:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    assert match, f"{dockerfile}: no ARG BASE_IMAGE=<default>"
    return match.group(1)


def test_the_pinned_references_agree_everywhere() -> None:
    assert re.fullmatch(r"python:3\.12-slim-bookworm@sha256:[0-9a-f]{64}", bi.PYTHON_BASE)
    assert re.fullmatch(r"docker:27\.5\.1-dind@sha256:[0-9a-f]{64}", bi.DOCKERD_IMAGE)
    assert _arg_default(ROOT / "Dockerfile") == bi.PYTHON_BASE
    tasks = sorted((ROOT / "config" / "smoke-tasks").glob("*/environment/Dockerfile"))
    assert len(tasks) >= 2
    for dockerfile in tasks:
        assert _arg_default(dockerfile) == bi.PYTHON_BASE, dockerfile
        assert "\nFROM ${BASE_IMAGE}\n" in dockerfile.read_text(), dockerfile
    for dockerfile in (ROOT / "tests" / "fixtures" / "tasks").glob("*/environment/Dockerfile"):
        assert "\nFROM ${BASE_IMAGE}\n" in dockerfile.read_text(), dockerfile
    images_doc = (ROOT / "docs" / "images.md").read_text()
    assert bi.DOCKERD_IMAGE.split("@")[0] in images_doc


# -- probe: real HTTP servers on 127.0.0.1 -------------------------------------------------------


class _Registry(BaseHTTPRequestHandler):
    status = 401

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        if self.status == 401:
            self.send_header("Www-Authenticate", 'Bearer realm="http://127.0.0.1/token"')
        body = b'{"errors":[{"code":"UNAUTHORIZED"}]}' if self.status == 401 else b"{}"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry(request: pytest.FixtureRequest) -> Iterator[str]:
    status = getattr(request, "param", 401)
    handler = type("Handler", (_Registry,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v2/"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_a_registry_that_answers_401(registry: str) -> None:
    result = bi.probe(registry, timeout=2)
    assert result == bi.Probe(registry, True, "HTTP 401")
    assert result.host.startswith("127.0.0.1:")


@pytest.mark.parametrize("registry", [200], indirect=True)
def test_probe_an_open_mirror_that_answers_200(registry: str) -> None:
    assert bi.probe(registry, timeout=2).answered


@pytest.mark.parametrize("registry", [503], indirect=True)
def test_probe_a_server_that_answers_503_is_no_registry(registry: str) -> None:
    result = bi.probe(registry, timeout=2)
    assert not result.answered and result.detail == "HTTP 503"


def test_probe_a_closed_port() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v2/"
    result = bi.probe(url, timeout=2)
    assert not result.answered and result.detail == "Connection refused"


def test_probe_a_server_that_never_answers_ends_by_its_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v2/"
        started = time.monotonic()
        result = bi.probe(url, timeout=0.5)
    assert time.monotonic() - started < 3
    assert not result.answered and result.detail == "timed out after 0.5 s"


def test_probe_refuses_other_schemes() -> None:
    assert not bi.probe("file:///etc/passwd").answered


# -- resolve and `hvt images`: the real engine, a local registry or none -------------------------


def _engine() -> object:
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"needs a Docker engine (make testbed): {exc}")
    return client


@pytest.mark.docker
def test_resolve_with_and_without_a_registry(registry: str) -> None:
    client = _engine()
    answered = bi.resolve({"HVT_REGISTRY_URL": registry}, client)
    assert answered.source == "public" and answered.reason == f"{registry[7:-4]} answered"
    closed = {"HVT_REGISTRY_URL": f"http://127.0.0.1:{_closed_port()}/v2/"}
    present = bi.present_images(client)
    if present >= BOTH_STAND_INS:  # the test bed
        fallback = bi.resolve(closed, client)
        assert fallback.source == "local" and "Connection refused" in fallback.reason
    else:
        with pytest.raises(bi.NoImagesError, match="make testbed"):
            bi.resolve(closed, client)


@pytest.mark.docker
def test_hvt_images_base_prints_the_reference_and_the_reason(registry: str) -> None:
    _engine()
    hvt = ROOT / ".venv" / "bin" / "hvt"
    if not hvt.exists():
        pytest.skip("needs the venv's hvt (make venv)")
    out = subprocess.run(
        [str(hvt), "images", "base"],
        env={"PATH": "/usr/bin:/bin", "HVT_REGISTRY_URL": registry},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == bi.PYTHON_BASE + "\n"
    assert out.stderr.startswith("images: public (127.0.0.1:")


# -- the smoke's build argument, merged by Docker Compose into Harbor's build file ---------------


@pytest.mark.docker
def test_the_smoke_overlay_passes_base_image_to_the_task_build(tmp_path: Path) -> None:
    from harbor.environments.docker import COMPOSE_BUILD_PATH

    from verl_patch.rollout_settings import base_image_overlay

    if not shutil.which("docker"):
        pytest.skip("needs the docker CLI with compose (make testbed)")
    assert base_image_overlay("", tmp_path) == ()
    (overlay,) = base_image_overlay(bi.STAND_IN_PYTHON, tmp_path / "o")
    context = ROOT / "config" / "smoke-tasks" / "sum-numbers" / "environment"
    cmd = ["docker", "compose", "-p", "hvt-base-image-test", "-f", str(COMPOSE_BUILD_PATH)]
    out = subprocess.run(
        [*cmd, "-f", str(overlay), "config", "--format", "json"],
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "CONTEXT_DIR": str(context)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    build = json.loads(out.stdout)["services"]["main"]["build"]
    assert build["context"] == str(context)
    assert build["args"] == {"BASE_IMAGE": bi.STAND_IN_PYTHON}
    if bi.STAND_IN_PYTHON not in bi.present_images(_engine(), [bi.STAND_IN_PYTHON]):
        return  # no stand-in to build on (and no registry on a test bed): the merge is checked
    # and the build takes it: FROM ${BASE_IMAGE} is the stand-in, offline
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "CONTEXT_DIR": str(context)}
    try:
        built = subprocess.run(
            [*cmd, "-f", str(overlay), "build", "--pull=false"],
            env={**env, "BUILDKIT_PROGRESS": "plain"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, built.stderr[-2000:]
        python = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network=none",
                "hvt-base-image-test-main",
                "python3",
                "-c",
                "print(sum(int(x) for x in open('/app/numbers.txt') if x.strip()))",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert python.stdout.strip() == "189", python.stderr
    finally:
        subprocess.run(
            ["docker", "image", "rm", "-f", "hvt-base-image-test-main"],
            capture_output=True,
            check=False,
        )


@pytest.mark.docker
@pytest.mark.slow
def test_a_smoke_task_builds_on_the_chosen_base_in_a_harbor_trial(tmp_path: Path) -> None:
    """What a smoke trial does: Harbor builds the task (its Dockerfile defaults to the public
    image) with the overlay's BASE_IMAGE; the oracle's answer must be verified in it."""
    import asyncio
    import uuid

    from verl_patch import harbor_trial
    from verl_patch.rollout_settings import RolloutSettings, base_image_overlay

    client = _engine()
    offline = not bi.probe().answered
    if offline and bi.STAND_IN_PYTHON not in bi.present_images(client, [bi.STAND_IN_PYTHON]):
        pytest.fail(f"no registry answers and {bi.STAND_IN_PYTHON} is missing (make testbed)")
    chosen = bi.choose(bi.probe(), bi.present_images(client))
    task = ROOT / "config" / "smoke-tasks" / "sum-numbers"
    prefix = f"hvt-base-{uuid.uuid4().hex[:6]}"
    settings = RolloutSettings(
        trials_dir=tmp_path / "trials",
        model_name="unused-by-oracle",
        agent_name="oracle",
        override_cpus=1,
        override_memory_mb=512,
        max_retries=0,
        pod_name_prefix=prefix,
        extra_compose=base_image_overlay(chosen.python, tmp_path / "overlay"),
    )
    result = asyncio.run(harbor_trial.run_rollout(settings, task, "step_0000"))
    assert result.final is not None and result.final.reward_value == 1.0, result.final
    if offline:  # without the overlay the Dockerfile's pinned public default cannot be pulled
        bare = RolloutSettings(**{**settings.__dict__, "extra_compose": ()})
        failed = asyncio.run(harbor_trial.run_rollout(bare, task, "step_0001"))
        assert failed.final is not None and failed.final.reward_value != 1.0
        message = failed.final.exception_message or ""
        assert "python:3.12-slim-bookworm@sha256:" in message, message[-2000:]
