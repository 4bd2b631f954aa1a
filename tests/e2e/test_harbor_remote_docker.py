"""Real Harbor sandboxes and trials on a TLS-only Docker daemon (RemoteDockerEnvironment) and on
this machine's engine (Harbor's own DockerEnvironment and ours), with the oracle agent.

The TLS daemon is a second dockerd on 127.0.0.1 (tests/helpers/tls_dockerd.py): no image of
this machine's engine is there until the code under test puts it there. The agent runtime here
is a tiny stand-in image (a /opt/custom-agent-runtime/claude-code tree whose bin/claude prints a
version); test_harbor_claude_code.py uses the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from harbor_patch.environments import agent_runtime
from harbor_patch.environments.docker_daemon import DaemonConfigError, DockerDaemon
from tests.helpers.prerequisites import require_images
from tests.helpers.timing import scaled
from tests.helpers.tls_dockerd import DOCKERD_IMAGE, TlsDaemon, tls_dockerd
from verl_patch import harbor_trial
from verl_patch.rollout_settings import RolloutSettings, RuntimeMount
from verl_patch.tail_kill import TailKillPolicy
from verl_patch.termination import Termination
from verl_patch.trial_coordinator import TrialCoordinator

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
BASE = "local/debian:bookworm"
MINI = "hvt-e2e-rl/mini-runtime"
REMOTE = "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"
RUNTIME_PATH = agent_runtime.DEFAULT_MOUNT_PATH
MINI_DOCKERFILE = f"""FROM {BASE}
ARG VARIANT=1
RUN mkdir -p {RUNTIME_PATH}/bin \\
 && printf '#!/bin/sh\\necho "9.9.%s (Claude Code)"\\n' "$VARIANT" > {RUNTIME_PATH}/bin/claude \\
 && chmod 755 {RUNTIME_PATH}/bin/claude
"""


@pytest.fixture(scope="module")
def local(docker_engine: None) -> Iterator[docker.DockerClient]:
    require_images(BASE)
    client = docker.from_env(timeout=120)
    yield client
    client.close()


def build_mini(variant: str) -> str:
    tag = f"{MINI}:{variant}"
    args = ["--network=none", "--build-arg", f"VARIANT={variant}", "-t", tag, "-"]
    subprocess.run(
        ["docker", "build", "-q", *args],
        input=MINI_DOCKERFILE.encode(),
        check=True,
        capture_output=True,
    )
    return tag


@pytest.fixture(scope="module")
def mini_runtime(local: docker.DockerClient) -> Iterator[str]:
    tag = build_mini("1")
    yield tag
    _drop_runtime(local, tag)


def _drop_runtime(client: docker.DockerClient, tag: str) -> None:
    with contextlib.suppress(docker.errors.DockerException):
        volume = agent_runtime.volume_name(client.images.get(tag).id)
        for name in (volume + agent_runtime.READY_SUFFIX, volume):
            with contextlib.suppress(docker.errors.DockerException):
                client.volumes.get(name).remove(force=True)
        client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def tls(
    tmp_path_factory: pytest.TempPathFactory, local: docker.DockerClient
) -> Iterator[TlsDaemon]:
    require_images(DOCKERD_IMAGE)
    with tls_dockerd(tmp_path_factory.mktemp("tlsd")) as daemon:
        remote = DockerDaemon(daemon.host, daemon.good_client).client()
        remote.images.load(local.images.get(BASE).save(named=True))  # the task images' base
        remote.close()
        yield daemon


def _settings(tmp_path: Path, prefix: str, **overrides: Any) -> RolloutSettings:
    values: dict[str, Any] = {
        "trials_dir": tmp_path / "trials",
        "model_name": "unused-by-oracle",
        "agent_name": "oracle",
        "override_cpus": 1,
        "override_memory_mb": 512,
        "max_retries": 0,
        "pod_name_prefix": prefix,
    }
    values.update(overrides)
    return RolloutSettings(**values)


def _remote_kwargs(daemon: TlsDaemon, runtime: str, prefix: str, certs: Path | None = None) -> dict:
    return {
        "docker_host": daemon.host,
        "docker_cert_path": str(certs or daemon.good_client),
        "agent_runtime_image": runtime,
        "pod_name_prefix": prefix,
    }


def _labelled(client: docker.DockerClient, prefix: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"harbor-run={prefix}"})


# -- configuration errors: no daemon needed ---------------------------------------------------


def test_plain_tcp_and_missing_certificates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DaemonConfigError, match="without TLS gives root"):
        DockerDaemon.resolve("tcp://10.0.0.5:2375", tls_verify=False, environ={})
    with pytest.raises(DaemonConfigError, match=r"lacks ca\.pem, cert\.pem, key\.pem"):
        DockerDaemon.resolve("tcp://10.0.0.5:2376", cert_path=tmp_path, environ={})
    with pytest.raises(DaemonConfigError, match="ssh:// is not supported"):
        DockerDaemon.resolve("ssh://me@host", environ={})
    insecure = DockerDaemon.resolve("tcp://127.0.0.1:2375", tls_verify=False, allow_insecure=True)
    assert insecure.cli_flags() == ("--host", "tcp://127.0.0.1:2375")
    no_certs = {"DOCKER_CERT_PATH": str(tmp_path / "empty")}
    test_net = DockerDaemon.resolve("tcp://10.0.0.5:2375", allow_insecure=True, environ=no_certs)
    assert test_net.cert_dir is None  # allowed explicitly, and no certificates to use
    env = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_CERT_PATH": str(tmp_path)}
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    daemon = DockerDaemon.resolve(environ=env)
    assert daemon.cli_flags()[:3] == ("--host", "tcp://h:2376", "--tlsverify")
    assert f"{tmp_path.resolve()}/key.pem" in daemon.cli_flags()


# -- the TLS daemon -----------------------------------------------------------------------------


def test_sandbox_on_tls_daemon_labels_limits_runtime_and_copy_back(
    tmp_path: Path, tls: TlsDaemon, local: docker.DockerClient, mini_runtime: str
) -> None:
    from harbor.models.task.config import EnvironmentConfig as TaskEnvironment
    from harbor.models.trial.paths import TrialPaths

    from harbor_patch.environments.remote_docker import RemoteDockerEnvironment

    prefix = f"hvt-e2e-{uuid.uuid4().hex[:6]}"
    paths = TrialPaths(trial_dir=tmp_path / "trial")
    paths.mkdir()
    env = RemoteDockerEnvironment(
        environment_dir=TASKS / "write-answer" / "environment",
        environment_name="write-answer",
        session_id=f"{prefix}-sandbox__env",
        trial_paths=paths,
        task_env_config=TaskEnvironment(cpus=1, memory_mb=512),
        override_cpus=0.5,
        override_memory_mb=300,
        auto_mounts=[
            {"type": "bind", "source": str(paths.agent_dir), "target": "/logs/agent"},
            {"type": "bind", "source": str(paths.verifier_dir), "target": "/logs/verifier"},
        ],
        **_remote_kwargs(tls, mini_runtime, prefix),
    )
    assert not env.capabilities.mounted
    remote = DockerDaemon(tls.host, tls.good_client).client()

    async def scenario() -> dict[str, Any]:
        await env.start(force_build=True)
        try:
            (container,) = _labelled(remote, prefix)
            assert not _labelled(local, prefix)  # every docker command went to the TLS daemon
            version = await env.exec("$CUSTOM_AGENT_RUNTIME_ROOT/bin/claude --version")
            write = await env.exec(f"touch {RUNTIME_PATH}/probe", user="root")
            src = tmp_path / "in.txt"
            src.write_text("copied both ways\n")
            await env.upload_file(src, "/app/in.txt")
            await env.exec("tr a-z A-Z < /app/in.txt > /logs/agent/out.txt")
            await env.download_dir("/logs/agent", tmp_path / "back")
            return {"attrs": container.attrs, "version": version, "write": write}
        finally:
            await env.stop(delete=True)

    seen = asyncio.run(scenario())
    attrs = seen["attrs"]
    labels = attrs["Config"]["Labels"]
    assert labels["harbor-run"] == prefix and labels["app"] == "harbor-sandbox"
    assert labels["harbor-owner-pid"] == str(os.getpid())
    assert labels["harbor-session"].startswith(prefix)
    host_config = attrs["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 300 * 1024 * 1024
    mounts = attrs["Mounts"]
    assert not [m for m in mounts if m["Type"] == "bind"]  # nothing of this machine's disk
    (runtime,) = [m for m in mounts if m["Destination"] == RUNTIME_PATH]
    assert runtime["Type"] == "volume" and runtime["RW"] is False
    assert runtime["Name"].startswith(agent_runtime.VOLUME_PREFIX)
    assert f"CUSTOM_AGENT_RUNTIME_ROOT={RUNTIME_PATH}" in attrs["Config"]["Env"]
    assert "9.9.1 (Claude Code)" in (seen["version"].stdout or "")
    assert seen["write"].return_code != 0 and "Read-only" in (seen["write"].stdout or "")
    assert (tmp_path / "back" / "out.txt").read_text() == "COPIED BOTH WAYS\n"
    # torn down: containers and the project network gone; the staged runtime stays for reuse
    assert not _labelled(remote, prefix)
    assert not remote.networks.list(filters={"label": f"harbor-run={prefix}"})
    remote.volumes.get(runtime["Name"])
    remote.volumes.get(runtime["Name"] + agent_runtime.READY_SUFFIX)
    remote.close()


def test_parallel_trials_on_tls_daemon(tmp_path: Path, tls: TlsDaemon, mini_runtime: str) -> None:
    prefix = f"hvt-e2e-{uuid.uuid4().hex[:6]}"
    settings = _settings(
        tmp_path,
        prefix,
        env_import_path=REMOTE,
        env_kwargs=_remote_kwargs(tls, mini_runtime, prefix),
    )
    tasks = ["write-answer", "wrong-answer", "check-runtime"]

    async def scenario() -> list[harbor_trial.RolloutResult]:
        coordination = TrialCoordinator(max_concurrent=3)
        return await asyncio.gather(
            *(
                harbor_trial.run_rollout(
                    settings, TASKS / t, "step_0007", coordination=coordination, group="train:7"
                )
                for t in tasks
            )
        )

    results = dict(zip(tasks, asyncio.run(scenario()), strict=True))
    for name, result in results.items():
        report = result.final
        assert report is not None and report.exception_type is None, (name, report)
        assert report.termination is Termination.AGENT_COMPLETED
        trial = report.trial_dir
        assert trial.parent == tmp_path / "trials" / "step_0007"
        assert (trial / "verifier" / "test-stdout.txt").is_file()  # copied back, not mounted
        assert (trial / "agent" / "oracle.txt").is_file()
    assert results["write-answer"].final.reward_value == 1.0
    wrong = results["wrong-answer"].final
    assert wrong.reward_value == 0.0 and wrong.reward.extra["answered"] == 1.0
    checks = results["check-runtime"].final.reward.extra
    assert checks == {
        "reward": 1.0,
        "runtime_present": 1.0,
        "runtime_read_only": 1.0,
        "runtime_runs": 1.0,
    }
    remote = DockerDaemon(tls.host, tls.good_client).client()
    assert not _labelled(remote, prefix)
    stagers = remote.containers.list(all=True, filters={"name": agent_runtime.STAGER_SUFFIX})
    assert not stagers
    remote.close()


STAGE_ONE = """
import json, sys
from harbor_patch.environments import agent_runtime
from harbor_patch.environments.docker_daemon import DockerDaemon
from pathlib import Path
daemon = DockerDaemon(sys.argv[1], Path(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()  # start together
staged = agent_runtime.ensure_runtime_volume(daemon, sys.argv[3], poll_sec=0.2)
print(json.dumps({"volume": staged.volume, "here": staged.staged_here}))
"""


def test_runtime_staging_is_atomic_across_processes(
    tmp_path: Path, tls: TlsDaemon, local: docker.DockerClient
) -> None:
    tag = build_mini(uuid.uuid4().hex[:8])  # a fresh image: nothing staged yet
    try:
        remote = DockerDaemon(tls.host, tls.good_client).client()
        remote.images.load(local.images.get(tag).save(named=True))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", STAGE_ONE, tls.host, str(tls.good_client), tag],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = []
        for proc in procs:
            out, err = proc.communicate(timeout=scaled(120))
            assert proc.returncode == 0, err
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
        assert len({o["volume"] for o in outcomes}) == 1
        assert sum(o["here"] for o in outcomes) == 1  # exactly one process copied the tree
        volume = outcomes[0]["volume"]
        remote.volumes.get(volume + agent_runtime.READY_SUFFIX)
        assert not remote.containers.list(all=True, filters={"name": volume + "-stager"})
        listing = remote.containers.run(
            tag,
            ["ls", "/rt/bin"],
            volumes={volume: {"bind": "/rt", "mode": "ro"}},
            network_mode="none",
            remove=True,
        )
        assert listing.decode().split() == ["claude"]
        remote.close()
    finally:
        _drop_runtime(local, tag)


def test_wrong_client_certificate_fails_setup_and_is_retried(
    tmp_path: Path, tls: TlsDaemon, mini_runtime: str
) -> None:
    prefix = f"hvt-e2e-{uuid.uuid4().hex[:6]}"
    settings = _settings(
        tmp_path,
        prefix,
        env_import_path=REMOTE,
        env_kwargs=_remote_kwargs(tls, mini_runtime, prefix, certs=tls.foreign_client),
        max_retries=1,
    )
    result = asyncio.run(harbor_trial.run_rollout(settings, TASKS / "write-answer", "step_0001"))
    assert len(result.attempts) == 2  # retried once: no verifier result
    final = result.final
    assert final is not None and final.termination is Termination.ENV_SETUP_FAILED
    assert final.reward_value == 0.0 and not final.has_reward
    assert final.exception_type == "RuntimeStagingError"
    assert "rejected this client's certificate" in (final.exception_message or "")
    assert [a.trial_dir.name for a in result.attempts][1].endswith("-r1")


# -- this machine's engine ----------------------------------------------------------------------


def test_harbor_docker_environment_with_runtime_overlay(
    tmp_path: Path, local: docker.DockerClient, mini_runtime: str
) -> None:
    prefix = f"hvt-e2e-{uuid.uuid4().hex[:6]}"
    settings = _settings(
        tmp_path,
        prefix,
        overlay_runtime=RuntimeMount(
            mini_runtime, RUNTIME_PATH, agent_runtime.DEFAULT_IMAGE_SUBPATH
        ),
    )
    assert settings.uses_stock_docker

    async def scenario() -> list[harbor_trial.RolloutResult]:
        return await asyncio.gather(
            harbor_trial.run_rollout(settings, TASKS / "check-runtime", "step_0002"),
            harbor_trial.run_rollout(settings, TASKS / "write-answer", "step_0002"),
        )

    check, write = asyncio.run(scenario())
    assert check.final is not None and check.final.reward_value == 1.0, check.final.reward
    assert write.final is not None and write.final.reward_value == 1.0
    assert not _labelled(local, prefix)


def test_tail_killer_stops_the_straggler_and_its_sandbox(
    tmp_path: Path, local: docker.DockerClient
) -> None:
    prefix = f"hvt-e2e-{uuid.uuid4().hex[:6]}"
    settings = _settings(
        tmp_path,
        prefix,
        env_import_path=REMOTE,
        env_kwargs={"docker_host": "unix:///var/run/docker.sock", "pod_name_prefix": prefix},
    )
    coordinator = TrialCoordinator(
        max_concurrent=2, policy=TailKillPolicy(target=0.5, grace_sec=3, min_tasks=2), tick_sec=0.2
    )
    seen_running: list[int] = []

    async def watch() -> None:
        while True:
            seen_running.append(len(_labelled(local, prefix)))
            await asyncio.sleep(1)

    async def scenario() -> list[harbor_trial.RolloutResult]:
        watcher = asyncio.create_task(watch())
        try:
            return await asyncio.gather(
                *(
                    harbor_trial.run_rollout(
                        settings,
                        TASKS / task,
                        "step_0003",
                        coordination=coordinator,
                        group="train:3",
                        poll_sec=0.5,
                    )
                    for task in ("write-answer", "slow-answer")
                )
            )
        finally:
            watcher.cancel()

    fast, slow = asyncio.run(asyncio.wait_for(scenario(), timeout=scaled(240)))
    assert fast.final is not None and fast.final.reward_value == 1.0 and not fast.tail_killed
    assert slow.tail_killed and slow.final is not None
    assert slow.final.termination is Termination.TIMEOUT
    assert slow.final.reward_value == 0.0
    assert slow.final.exception_type == "CancelledError"
    assert (slow.final.trial_dir / "result.json").is_file()
    assert max(seen_running) >= 1 and not _labelled(local, prefix)  # the sandbox was removed
    summary = harbor_trial.summary(slow)
    assert summary["termination"] == "timeout" and summary["tail_killed"] is True
