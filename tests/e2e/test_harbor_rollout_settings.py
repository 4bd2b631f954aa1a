"""config.yaml -> what a rollout hands Harbor (agent, environment, limits) for each backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hvt.config.model import RunConfig
from tests.conftest import filled_config
from verl_patch.harbor_trial import build_trial_config
from verl_patch.rollout_settings import STOCK_DOCKER, RolloutSettings

REMOTE = "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"
K8S = "harbor_patch.environments.kubernetes:KubernetesEnvironment"
ENV = {"HVT_TRIALS_DIR": "/data/harbor_trials/proj/exp-1", "HVT_PROXY_URL": "http://10.0.0.2:8002"}


def config(**overrides: Any) -> RunConfig:
    keys = {f"runtime_info.input.{k}": v for k, v in overrides.items()}
    return RunConfig.model_validate(filled_config(**keys))


def test_remote_docker_backend(tmp_path: Path) -> None:
    cfg = config(
        **{
            "harbor_agent.environment_import_path": REMOTE,
            "harbor_agent.docker_host": "tcp://sandbox-1:2376",
            "harbor_agent.docker_cert_path": "/etc/verl-swe-rl/docker-tls",
            "harbor_agent.max_iterations": 42,
            "harbor_agent.temperature": 0.8,
            "harbor_agent.pod_name_prefix": "run-a",
            "harbor_runtime.num_workers": 24,
            "harbor_runtime.tail_kill_target": 0.95,
        }
    )
    s = RolloutSettings.from_run_config(cfg, ENV)
    assert s.trials_dir == Path("/data/harbor_trials/proj/exp-1")
    assert s.env_kwargs == {
        "docker_host": "tcp://sandbox-1:2376",
        "docker_cert_path": "/etc/verl-swe-rl/docker-tls",
        "allow_insecure": False,
        "agent_runtime_image": "verl-swe-rl/agent-runtime:latest",
        "agent_runtime_mount_path": "/opt/custom-agent-runtime/claude-code",
        "agent_runtime_image_subpath": "opt/custom-agent-runtime/claude-code",
        "pod_name_prefix": "run-a",
        "proxy_url": "http://10.0.0.2:8002",
    }
    assert s.sandbox_network == "proxy-only" and s.proxy_url == "http://10.0.0.2:8002"
    assert s.agent_kwargs == {
        "max_turns": 42,
        "runtime_root": "/opt/custom-agent-runtime/claude-code",
        "temperature": 0.8,
        "credential_ttl_sec": 2400.0 + 1800.0,  # max_timeout_sec x 1.0, plus the margin
        "proxy_url": "http://10.0.0.2:8002",
    }
    assert s.uses_own_agent and not s.uses_stock_docker and s.overlay_runtime is None
    assert (s.max_concurrent, s.tail_kill.target) == (24, 0.95)

    trial = build_trial_config(s, tmp_path / "task", s.trials_dir / "step_0001", "task-1")
    assert trial.agent.import_path == "harbor_patch.agents.image_mounted_claude_code:ClaudeCode"
    assert trial.agent.model_name == "vllm_model"
    assert trial.agent.kwargs["max_turns"] == 42
    assert trial.environment.import_path == REMOTE and trial.environment.type is None
    assert (trial.environment.override_cpus, trial.environment.override_memory_mb) == (1, 8192)
    assert trial.agent.override_timeout_sec == 2400 and trial.agent.max_timeout_sec == 2400
    assert not trial.verifier.disable
    assert "LITELLM" not in trial.model_dump_json()  # no key in what Harbor writes to disk


def test_kubernetes_backend() -> None:
    cfg = config(
        **{
            "harbor_agent.environment_import_path": K8S,
            "harbor_agent.host_path_mounts": [
                {"host_path": "/data/rebench", "mount_path": "/opt/rebench-v2"}
            ],
            "k8s.kubeconfig": "/secrets/kube/config",
            "k8s.namespace": "sandboxes",
        }
    )
    s = RolloutSettings.from_run_config(cfg, ENV)
    assert s.env_kwargs["namespace"] == "sandboxes"
    assert s.env_kwargs["kubeconfig_path"] == "/secrets/kube/config"
    assert s.env_kwargs["active_deadline_seconds"] == 6000
    assert s.env_kwargs["host_path_mounts"] == [
        {
            "host_path": "/data/rebench",
            "mount_path": "/opt/rebench-v2",
            "read_only": True,
            "type": "Directory",
        }
    ]


def test_harbor_docker_environment_gets_the_overlay() -> None:
    stock = {
        "harbor_agent.environment_import_path": STOCK_DOCKER,
        "harbor_agent.sandbox_network": "public",  # Harbor's own cannot enforce proxy-only
    }
    s = RolloutSettings.from_run_config(config(**stock), ENV)
    assert s.env_import_path == STOCK_DOCKER and s.uses_stock_docker
    assert s.overlay_runtime is not None
    assert s.overlay_runtime.image == "verl-swe-rl/agent-runtime:latest"
    assert s.env_kwargs == {}
    none = RolloutSettings.from_run_config(
        config(**stock, **{"harbor_agent.runtime_image": ""}), ENV
    )
    assert none.overlay_runtime is None  # labels only


def test_proxy_url_falls_back_to_node0_ip_and_trials_dir_is_required() -> None:
    cfg = config(**{"infrastructure.node0_ip": "10.1.2.3", "infrastructure.litellm_port": 9002})
    s = RolloutSettings.from_run_config(cfg, {"HVT_TRIALS_DIR": "/t"})
    assert s.agent_kwargs["proxy_url"] == "http://10.1.2.3:9002"
    assert (
        "proxy_url"
        not in RolloutSettings.from_run_config(config(), {"HVT_TRIALS_DIR": "/t"}).agent_kwargs
    )
    with pytest.raises(ValueError, match="HVT_TRIALS_DIR is not set"):
        RolloutSettings.from_run_config(cfg, {})
