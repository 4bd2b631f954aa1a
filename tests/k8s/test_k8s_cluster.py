"""KubernetesEnvironment against a real cluster (opt-in: needs KUBECONFIG).

Settings (environment variables):
  KUBECONFIG                   the cluster (required; these tests skip without it)
  HVT_K8S_TEST_NAMESPACE       namespace to create sandbox pods in (default rl-sandboxes)
  HVT_K8S_TEST_IMAGE           a task image the cluster can pull, with bash, tar and base64
                               (default debian:bookworm-slim)
  HVT_K8S_TEST_RUNTIME_IMAGE   optional: the agent-runtime image, to check its image volume
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.optin,  # may skip under CI=true (tests/conftest.py)
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="needs a Kubernetes cluster: set KUBECONFIG (and HVT_K8S_TEST_NAMESPACE, "
        "HVT_K8S_TEST_IMAGE) to run the sandbox-pod tests",
    ),
]

NAMESPACE = os.environ.get("HVT_K8S_TEST_NAMESPACE", "rl-sandboxes")
IMAGE = os.environ.get("HVT_K8S_TEST_IMAGE", "debian:bookworm-slim")
RUNTIME_IMAGE = os.environ.get("HVT_K8S_TEST_RUNTIME_IMAGE") or None
TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
K8S = "harbor_patch.environments.kubernetes:KubernetesEnvironment"


def _core() -> Any:
    from kubernetes import client

    from harbor_patch.environments.kubernetes.kubernetes import api_client

    return client.CoreV1Api(api_client())


def _pods(prefix: str) -> list[Any]:
    return list(_core().list_namespaced_pod(NAMESPACE, label_selector=f"harbor-run={prefix}").items)


def _wait_gone(prefix: str, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pods(prefix):
            return True
        time.sleep(2)
    return False


def _environment(tmp_path: Path, prefix: str) -> Any:
    from harbor.models.task.config import EnvironmentConfig as TaskEnvironment
    from harbor.models.trial.paths import TrialPaths

    from harbor_patch.environments.kubernetes import KubernetesEnvironment

    env_dir = tmp_path / "environment"
    env_dir.mkdir()
    paths = TrialPaths(trial_dir=tmp_path / "trial")
    paths.mkdir()
    return KubernetesEnvironment(
        environment_dir=env_dir,
        environment_name="k8s-e2e",
        session_id=f"{prefix}__env",
        trial_paths=paths,
        task_env_config=TaskEnvironment(docker_image=IMAGE, cpus=1, memory_mb=512),
        namespace=NAMESPACE,
        pod_name_prefix=prefix,
        pod_startup_timeout_sec=300,
        active_deadline_seconds=900,
        agent_runtime_image=RUNTIME_IMAGE,
    )


def test_pod_lifecycle_exec_and_files(tmp_path: Path) -> None:
    prefix = f"hvt-k8s-{uuid.uuid4().hex[:6]}"
    env = _environment(tmp_path, prefix)

    async def scenario() -> dict[str, Any]:
        await env.start(force_build=False)
        try:
            (pod,) = _pods(prefix)
            hello = await env.exec('echo "$PWD $GREETING"', cwd="/tmp", env={"GREETING": "hi"})
            other = await env.exec("id -un", user="nobody")
            src = tmp_path / "in.txt"
            src.write_text("round trip\n")
            await env.upload_file(src, "/tmp/work/in.txt")
            await env.exec("tr a-z A-Z < /tmp/work/in.txt > /logs/agent/out.txt")
            await env.download_dir("/logs/agent", tmp_path / "back")
            runtime = await env.exec("$CUSTOM_AGENT_RUNTIME_ROOT/bin/claude --version")
            return {"pod": pod, "hello": hello, "other": other, "runtime": runtime}
        finally:
            await env.stop(delete=True)

    seen = asyncio.run(scenario())
    pod = seen["pod"]
    assert pod.metadata.labels["harbor-run"] == prefix
    assert pod.spec.active_deadline_seconds == 900
    assert seen["hello"].stdout.strip() == "/tmp hi"
    assert seen["other"].stdout.strip() == "nobody"
    assert (tmp_path / "back" / "out.txt").read_text() == "ROUND TRIP\n"
    if RUNTIME_IMAGE:
        assert seen["runtime"].return_code == 0, seen["runtime"].stderr
    assert _wait_gone(prefix)


def test_oracle_trial_on_a_pod(tmp_path: Path) -> None:
    from verl_patch import harbor_trial
    from verl_patch.rollout_settings import RolloutSettings

    task = tmp_path / "write-answer"
    shutil.copytree(TASKS / "write-answer", task)
    toml = (task / "task.toml").read_text()
    (task / "task.toml").write_text(
        toml.replace("[environment]\n", f'[environment]\ndocker_image = "{IMAGE}"\n')
    )
    prefix = f"hvt-k8s-{uuid.uuid4().hex[:6]}"
    settings = RolloutSettings(
        trials_dir=tmp_path / "trials",
        model_name="unused",
        agent_name="oracle",
        env_import_path=K8S,
        env_kwargs={"namespace": NAMESPACE, "pod_name_prefix": prefix},
        force_build=False,
        max_retries=0,
        pod_name_prefix=prefix,
    )
    result = asyncio.run(harbor_trial.run_rollout(settings, task, "step_0001"))
    assert result.final is not None and result.final.reward_value == 1.0, result.final
    assert _wait_gone(prefix)


HOLD_POD = """
import asyncio, sys, time
sys.path[:0] = [sys.argv[2]]
from pathlib import Path
from tests.k8s.test_k8s_cluster import _environment
env = _environment(Path(sys.argv[1]), sys.argv[3])
asyncio.run(env.start(force_build=False))
print("running", flush=True)
time.sleep(600)
"""


def test_pods_are_deleted_when_the_trainer_is_terminated(tmp_path: Path) -> None:
    prefix = f"hvt-k8s-{uuid.uuid4().hex[:6]}"
    root = str(Path(__file__).resolve().parents[2])
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_POD, str(tmp_path), root, prefix],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "running"
        assert len(_pods(prefix)) == 1
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
        assert _wait_gone(prefix)
    finally:
        if child.poll() is None:
            child.kill()
