"""The Kubernetes sandbox without a cluster: the pod it would create (validated against the
Kubernetes OpenAPI schema and the client models), its entrypoint and exec wrapper (run for real
in a local container), kubeconfig errors, and deletion on signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client as k8s

from harbor_patch.environments import pod_spec
from harbor_patch.environments.kubernetes import KubernetesEnvironment
from harbor_patch.environments.kubernetes.kubernetes import api_client
from tests.helpers.timing import scaled

RUNTIME = "/opt/custom-agent-runtime/claude-code"
BASE = "local/debian:bookworm"


def settings(**overrides: Any) -> pod_spec.PodSettings:
    values: dict[str, Any] = {
        "name": pod_spec.pod_name("swe-lego-live-rl", "fix-bug-3f2a9c1d__env"),
        "namespace": "rl-sandboxes",
        "image": "registry.example/tasks/fix-bug@sha256:" + "a" * 64,
        "labels": {"app": "harbor-sandbox", "harbor-run": "swe-lego-live-rl"},
        "active_deadline_seconds": 6000,
        "cpus": 0.5,
        "memory_mb": 300,
        "memory_limit_factor": 1.5,
        "env": {"TASK_ENV": "1"},
        "workdir": "/app",
        "runtime_image": "verl-swe-rl/agent-runtime:abc1234",
        "host_path_mounts": [
            pod_spec.HostPathMount.parse(
                {"host_path": "/data/rebench", "mount_path": "/opt/rebench"}
            )
        ],
        "image_pull_secrets": ["regcred"],
        "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
    }
    values.update(overrides)
    return pod_spec.PodSettings(**values)


def test_pod_manifest_is_valid_for_the_kubernetes_api() -> None:
    manifest = pod_spec.manifest(pod_spec.build_pod(settings()))
    for version in ("1.31", "1.33", "1.35"):  # image volumes exist from 1.31
        kubernetes_validate.validate(manifest, version, strict=True)
    # and the client's own models read it back unchanged
    again = k8s.ApiClient().deserialize(json.dumps(manifest), "V1Pod", "application/json")
    assert pod_spec.manifest(again) == manifest


def test_pod_spec_contents() -> None:
    m = pod_spec.manifest(pod_spec.build_pod(settings()))
    assert m["metadata"]["labels"]["harbor-run"] == "swe-lego-live-rl"
    spec = m["spec"]
    assert spec["activeDeadlineSeconds"] == 6000
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["terminationGracePeriodSeconds"] == 1
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    (container,) = spec["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "300Mi"},
        "limits": {"cpu": "500m", "memory": "450Mi"},
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"TASK_ENV": "1", "CUSTOM_AGENT_RUNTIME_ROOT": RUNTIME}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["harbor-agent-runtime"]["image"] == {
        "reference": "verl-swe-rl/agent-runtime:abc1234",
        "pullPolicy": "IfNotPresent",
    }
    assert volumes["host-0"]["hostPath"] == {"path": "/data/rebench", "type": "Directory"}
    mounts = {v["mountPath"]: v for v in container["volumeMounts"]}
    assert mounts["/mnt/harbor-agent-runtime"]["readOnly"] is True
    assert mounts["/opt/rebench"]["readOnly"] is True
    assert "subPath" not in mounts["/mnt/harbor-agent-runtime"]  # image volumes reject it
    assert mounts["/logs"]["name"] == "harbor-logs"


def test_no_runtime_no_resources() -> None:
    m = pod_spec.manifest(
        pod_spec.build_pod(settings(runtime_image=None, cpus=None, memory_mb=None))
    )
    (container,) = m["spec"]["containers"]
    assert "resources" not in container
    assert all(v["name"] != "harbor-agent-runtime" for v in m["spec"]["volumes"])
    assert "ln -s" not in container["command"][2]


@pytest.mark.parametrize(
    "session",
    ["t__env", "A_Very/Odd Session__env", "x" * 200, "trailing-dash-" + "-" * 80],
)
def test_pod_names_are_dns_labels(session: str) -> None:
    name = pod_spec.pod_name("swe-lego-live-rl", session)
    assert len(name) <= 63 and name.startswith("swe-lego-live-rl-")
    assert all((c.isalnum() and c.islower()) or c.isdigit() or c == "-" for c in name)
    assert not name.endswith("-")
    assert name == pod_spec.pod_name("swe-lego-live-rl", session)  # stable


def test_bad_host_path_mount() -> None:
    with pytest.raises(ValueError, match="lacks 'mount_path'"):
        pod_spec.HostPathMount.parse({"host_path": "/x"})
    with pytest.raises(ValueError, match="must be absolute"):
        pod_spec.HostPathMount.parse({"host_path": "x", "mount_path": "/y"})


def _environment(tmp_path: Path, docker_image: str | None, **kwargs: Any) -> KubernetesEnvironment:
    from harbor.models.task.config import EnvironmentConfig as TaskEnvironment
    from harbor.models.trial.paths import TrialPaths

    env_dir = tmp_path / "environment"
    env_dir.mkdir(exist_ok=True)
    paths = TrialPaths(trial_dir=tmp_path / "trial")
    paths.mkdir()
    return KubernetesEnvironment(
        environment_dir=env_dir,
        environment_name="fix-bug",
        session_id="fix-bug-3f2a9c1d__env",
        trial_paths=paths,
        task_env_config=TaskEnvironment(docker_image=docker_image, cpus=2, memory_mb=4096),
        override_cpus=1,
        override_memory_mb=2048,
        **kwargs,
    )


def test_environment_builds_its_pod_from_the_task_and_kwargs(tmp_path: Path) -> None:
    env = _environment(
        tmp_path,
        "registry.example/tasks/fix-bug:1",
        namespace="sandboxes",
        pod_name_prefix="run-a",
        agent_runtime_image="verl-swe-rl/agent-runtime:1",
        active_deadline_seconds=900,
        host_path_mounts=[{"host_path": "/data", "mount_path": "/data", "read_only": False}],
    )
    assert env.type() == "kubernetes" and not env.capabilities.mounted
    m = pod_spec.manifest(pod_spec.build_pod(env.settings()))
    kubernetes_validate.validate(m, "1.33", strict=True)
    assert m["metadata"]["namespace"] == "sandboxes"
    assert m["metadata"]["name"].startswith("run-a-")
    labels = m["metadata"]["labels"]
    assert labels["harbor-run"] == "run-a" and labels["harbor-owner-pid"] == str(os.getpid())
    assert m["spec"]["activeDeadlineSeconds"] == 900
    (container,) = m["spec"]["containers"]
    assert container["image"] == "registry.example/tasks/fix-bug:1"
    assert container["resources"]["limits"] == {"cpu": "1000m", "memory": "2048Mi"}


def test_environment_without_a_prebuilt_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"set \[environment\].docker_image"):
        _environment(tmp_path, None)


def test_missing_kubeconfig_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match=r"no kubeconfig at .*nope\.yaml"):
        api_client(str(tmp_path / "nope.yaml"))


# -- the pod's shell pieces, run for real in a local container -----------------------------


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        subprocess.run(["docker", "image", "inspect", BASE], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs a Docker engine and {BASE} (run `make testbed`)")
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


def test_entrypoint_links_the_runtime_and_the_exec_wrapper_switches_users(
    tmp_path: Path,
) -> None:
    staged = tmp_path / "staged" / "opt" / "custom-agent-runtime" / "claude-code" / "bin"
    staged.mkdir(parents=True)
    (staged / "claude").write_text('#!/bin/sh\necho "2.9.9 (Claude Code)"\n')
    (staged / "claude").chmod(0o755)
    start = pod_spec.entrypoint(settings())[2].replace("exec sleep infinity", "true")
    check = KubernetesEnvironment.command_argv(
        'echo "$(id -un) $PWD $GREETING" && $CUSTOM_AGENT_RUNTIME_ROOT/bin/claude --version',
        cwd="/tmp",
        env={"GREETING": "it's me", "CUSTOM_AGENT_RUNTIME_ROOT": RUNTIME},
        user="nobody",
    )
    script = f"{start} && {' '.join(_quote(a) for a in check)}"
    result = _docker(
        "run", "--rm", "--network", "none",
        "-v", f"{tmp_path / 'staged'}:/mnt/harbor-agent-runtime:ro",
        BASE, "/bin/sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["nobody /tmp it's me", "2.9.9 (Claude Code)"]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# -- deletion on signals ---------------------------------------------------------------------

REAPER_CHILD = """
import sys, time
from pathlib import Path
from harbor_patch.environments import sandbox_reaper
marker = Path(sys.argv[1])
for i in range(3):
    sandbox_reaper.register(f"ns/pod-{i}", lambda i=i: marker.open("a").write(f"pod-{i}\\n"))
sandbox_reaper.unregister("ns/pod-1")
print("ready", flush=True)
time.sleep(60)
"""
SENT = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _fresh_signals() -> None:
    """In the child, before exec: the signals these tests send act as on a fresh process.

    Ignored signals and the blocked mask survive exec, so without this the child would take
    them from whoever started pytest: under `nohup` SIGHUP is ignored, after a shell's `&`
    SIGINT is. The reaper rightly keeps an ignored disposition, and the child would not die.
    """
    for signum in SENT:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SENT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sandboxes_are_deleted_when_the_process_is_signalled(
    tmp_path: Path, signum: signal.Signals
) -> None:
    marker = tmp_path / "deleted.txt"
    child = subprocess.Popen(
        [sys.executable, "-c", REAPER_CHILD, str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_fresh_signals,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    child.send_signal(signum)
    # the signal still ends the process (had it not, the child would exit 0 after its sleep)
    assert child.wait(timeout=scaled(30)) == -signum
    assert time.monotonic() - started < scaled(10)
    assert sorted(marker.read_text().split()) == ["pod-0", "pod-2"]


def test_sandboxes_are_deleted_at_exit(tmp_path: Path) -> None:
    marker = tmp_path / "deleted.txt"
    code = REAPER_CHILD.replace("time.sleep(60)", "sys.exit(3)")
    result = subprocess.run([sys.executable, "-c", code, str(marker)], capture_output=True)
    assert result.returncode == 3
    assert sorted(marker.read_text().split()) == ["pod-0", "pod-2"]
