"""Egress control without Docker: the phase plan under `sandbox_network`, the compose overlay,
the relay (a real TCP relay on loopback), the environments' refusals and the config key.
The same policies inside real sandboxes: tests/e2e/test_sandbox_egress.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from harbor.models.task.config import (
    NetworkMode,
    NetworkPolicy,
    TaskConfig,
    VerifierEnvironmentMode,
)
from harbor.models.trial.config import AgentConfig, EnvironmentConfig, VerifierConfig
from harbor.trial.network_policy import resolve_trial_network_plan

from harbor_patch.environments import egress_relay, sandbox_egress
from harbor_patch.trial_network import SandboxNetworkPolicy, narrow_plan
from hvt.config import summary
from hvt.config.model import RunConfig
from tests.conftest import filled_config
from verl_patch.harbor_trial import sandbox_network_policy
from verl_patch.rollout_settings import RolloutSettings

PROXY = "10.0.0.2"
NONE = NetworkPolicy(network_mode=NetworkMode.NO_NETWORK)
PUBLIC = NetworkPolicy(network_mode=NetworkMode.PUBLIC)
ONLY_PROXY = NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=[PROXY])
PYPI = NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=["pypi.org"])


def _plan(toml: str, mode: str) -> Any:
    task = TaskConfig.model_validate_toml(toml)
    plan = resolve_trial_network_plan(
        task,
        AgentConfig(),
        EnvironmentConfig(),
        VerifierConfig(),
        None,
        verifier_mode=VerifierEnvironmentMode.SHARED,
    )
    return narrow_plan(plan, task, None, SandboxNetworkPolicy(mode, PROXY))  # type: ignore[arg-type]


def _phases(plan: Any) -> tuple[NetworkPolicy, NetworkPolicy, NetworkPolicy]:
    return plan.agent_env_baseline, plan.agent_phase, plan.verifier_phase


SILENT = ""
TASK_PUBLIC = '[environment]\nnetwork_mode = "public"\n'
TASK_NONE = '[environment]\nnetwork_mode = "no-network"\n'
TASK_ALLOW = '[environment]\nnetwork_mode = "allowlist"\nallowed_hosts = ["pypi.org"]\n'
VERIFIER_NONE = '[verifier]\nnetwork_mode = "no-network"\n'
VERIFIER_PUBLIC = '[verifier]\nnetwork_mode = "public"\n'
LEGACY_OFFLINE = "[environment]\nallow_internet = false\n"


@pytest.mark.parametrize(
    ("toml", "mode", "expected"),
    [
        # proxy-only: setup offline, agent to the proxy, verifier offline unless the task asks
        (SILENT, "proxy-only", (NONE, ONLY_PROXY, NONE)),
        (TASK_PUBLIC, "proxy-only", (NONE, ONLY_PROXY, PUBLIC)),
        (TASK_NONE, "proxy-only", (NONE, ONLY_PROXY, NONE)),
        (TASK_ALLOW, "proxy-only", (NONE, ONLY_PROXY, PYPI)),
        (VERIFIER_NONE, "proxy-only", (NONE, ONLY_PROXY, NONE)),
        (VERIFIER_PUBLIC, "proxy-only", (NONE, ONLY_PROXY, PUBLIC)),
        (TASK_PUBLIC + VERIFIER_NONE, "proxy-only", (NONE, ONLY_PROXY, NONE)),
        (LEGACY_OFFLINE, "proxy-only", (NONE, ONLY_PROXY, NONE)),
        # task: the task's own agent policy (plus the proxy when restricted)
        (SILENT, "task", (PUBLIC, PUBLIC, NONE)),
        (TASK_NONE, "task", (NONE, ONLY_PROXY, NONE)),
        (
            TASK_ALLOW,
            "task",
            (
                NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=["pypi.org"]),
                NetworkPolicy(
                    network_mode=NetworkMode.ALLOWLIST, allowed_hosts=["pypi.org", PROXY]
                ),
                NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=["pypi.org"]),
            ),
        ),
        (VERIFIER_PUBLIC, "task", (PUBLIC, PUBLIC, PUBLIC)),
        # public: Harbor's plan as it is (the task's own restrictions still apply)
        (SILENT, "public", (PUBLIC, PUBLIC, PUBLIC)),
        (TASK_NONE, "public", (NONE, NONE, NONE)),
        (VERIFIER_NONE, "public", (PUBLIC, PUBLIC, NONE)),
    ],
)
def test_phase_plan(toml: str, mode: str, expected: tuple[NetworkPolicy, ...]) -> None:
    assert _phases(_plan(toml, mode)) == expected


def test_agent_policy_of_the_task_cannot_widen_proxy_only() -> None:
    toml = '[agent]\nnetwork_mode = "public"\n'
    assert _plan(toml, "proxy-only").agent_phase == ONLY_PROXY
    assert _plan(toml, "task").agent_phase == PUBLIC


def test_policy_needs_a_known_mode_and_a_proxy_host() -> None:
    with pytest.raises(ValueError, match=r"harbor_agent\.sandbox_network is 'open'; use one of"):
        SandboxNetworkPolicy("open", PROXY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HVT_PROXY_URL"):
        SandboxNetworkPolicy("proxy-only", "")
    SandboxNetworkPolicy("public", "")  # public needs no proxy


def test_settings_carry_the_mode_and_the_proxy_host() -> None:
    cfg = RunConfig.model_validate(filled_config())
    env = {"HVT_TRIALS_DIR": "/t", "HVT_PROXY_URL": "http://10.0.0.2:8002"}
    settings = RolloutSettings.from_run_config(cfg, env)
    assert settings.sandbox_network == "proxy-only"
    assert settings.env_kwargs["proxy_url"] == "http://10.0.0.2:8002"
    assert sandbox_network_policy(settings) == SandboxNetworkPolicy("proxy-only", PROXY)


def test_a_node_with_its_own_proxy_sends_its_trials_there() -> None:
    """One proxy per node: a worker host's HVT_NODE_PROXY_URL (its own environment; the
    head's HVT_PROXY_URL is forwarded to every node) wins for the agent, the sandbox's egress
    and the allowlist; the head, without one, keeps its proxy."""
    from hvt.run.verl_command import FORWARDED_ENV
    from verl_patch.rollout_settings import NODE_PROXY_URL_ENV

    cfg = RunConfig.model_validate(filled_config())
    head = {"HVT_TRIALS_DIR": "/t", "HVT_PROXY_URL": "http://10.0.0.2:8002"}
    node = {**head, NODE_PROXY_URL_ENV: "http://10.0.0.3:8002"}
    assert RolloutSettings.from_run_config(cfg, head).env_kwargs["proxy_url"].endswith(".2:8002")
    settings = RolloutSettings.from_run_config(cfg, node)
    assert settings.env_kwargs["proxy_url"] == "http://10.0.0.3:8002"
    assert settings.proxy_url == "http://10.0.0.3:8002"
    assert sandbox_network_policy(settings) == SandboxNetworkPolicy("proxy-only", "10.0.0.3")
    assert NODE_PROXY_URL_ENV not in FORWARDED_ENV  # the head's would reach every node


# -- the compose overlay ---------------------------------------------------------------------


def test_proxy_endpoint_from_url() -> None:
    assert sandbox_egress.ProxyEndpoint.from_url("http://10.0.0.2:8002") == (
        sandbox_egress.ProxyEndpoint(PROXY, 8002)
    )
    assert sandbox_egress.ProxyEndpoint.from_url("http://Proxy.Example/").port == 80
    for bad in ("https://proxy:8002", "proxy:8002", "http://:8002"):
        with pytest.raises(sandbox_egress.EgressConfigError, match="HVT_PROXY_URL"):
            sandbox_egress.ProxyEndpoint.from_url(bad)


def test_overlay_makes_default_internal_and_adds_a_locked_down_relay() -> None:
    labels = {"harbor-run": "run-a"}
    proxy = sandbox_egress.ProxyEndpoint(PROXY, 8002)
    spec = sandbox_egress.overlay(labels, proxy, "verl-swe-rl/agent-runtime:latest", "hvt-egress-x")
    default = spec["networks"]["default"]
    assert default["internal"] is True
    assert default["driver_opts"] == {sandbox_egress.INHIBIT_IPV4: "true"}
    assert spec["networks"][sandbox_egress.EGRESS_NETWORK] == {
        "name": "hvt-egress-x",
        "labels": labels,
    }
    relay = spec["services"][sandbox_egress.RELAY_SERVICE]
    assert relay["networks"] == ["default", sandbox_egress.EGRESS_NETWORK]
    assert relay["command"] == [str(sandbox_egress.RELAY_PORT), PROXY, "8002"]
    assert relay["entrypoint"][:2] == ["python3", "-c"]
    assert "$" not in json.dumps(spec)  # compose would interpolate it
    assert relay["cap_drop"] == ["ALL"] and relay["read_only"] is True
    assert relay["user"] == sandbox_egress.RELAY_USER and relay["labels"] == labels
    assert sandbox_egress.relay_url() == f"http://hvt-egress-relay:{sandbox_egress.RELAY_PORT}"


def test_foreign_hosts_and_own_networking(tmp_path: Path) -> None:
    proxy = sandbox_egress.ProxyEndpoint(PROXY, 8002)
    assert sandbox_egress.foreign_hosts(["10.0.0.2", "10.0.0.2."], proxy) == []
    assert sandbox_egress.foreign_hosts(["pypi.org", PROXY], proxy) == ["pypi.org"]
    with pytest.raises(ValueError, match="sandbox_network: public"):
        sandbox_egress.refuse_foreign_hosts(["pypi.org"], proxy, "RemoteDockerEnvironment")
    compose = tmp_path / "docker-compose.yaml"
    compose.write_text(
        "services:\n  main: {}\n  db: {networks: [back]}\n  cache: {network_mode: host}\n"
    )
    assert sandbox_egress.services_with_own_networking([compose]) == ["db", "cache"]
    assert sandbox_egress.egress_network_name("Fix-Bug__AbC.1__env") == (
        "hvt-egress-fix-bug__abc.1__env"
    )
    assert sandbox_egress.policy_label("no-network") == "none"


# -- the relay -------------------------------------------------------------------------------


def test_relay_forwards_to_its_one_target_only() -> None:
    async def scenario() -> None:
        seen: list[bytes] = []

        async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            seen.append(data)
            writer.write(b"target:" + data)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(target, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket_port() as relay_port:
            relay = asyncio.create_task(egress_relay.serve(relay_port, "127.0.0.1", port))
            for _ in range(100):
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
                    break
                await asyncio.sleep(0.05)
            writer.write(b"GET http://elsewhere.example/ HTTP/1.0\r\n\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(200), 10)
            writer.close()
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        server.close()
        # whatever the client asks for, it talks to the target
        assert reply == b"target:GET http://elsewhere.example/ HTTP/1.0\r\n\r\n"
        assert seen == [b"GET http://elsewhere.example/ HTTP/1.0\r\n\r\n"]

    asyncio.run(scenario())


@contextlib.contextmanager
def socket_port() -> Any:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def test_relay_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert egress_relay.main(["x", "proxy", "8002"]) == 2
    assert "usage" in capsys.readouterr().err


# -- the environments refuse what they cannot enforce ---------------------------------------


def _docker_env(tmp_path: Path, **kwargs: Any) -> Any:
    from harbor.models.task.config import EnvironmentConfig as TaskEnvironment
    from harbor.models.trial.paths import TrialPaths

    from harbor_patch.environments.remote_docker import RemoteDockerEnvironment

    env_dir = tmp_path / "environment"
    env_dir.mkdir(exist_ok=True)
    (env_dir / "Dockerfile").write_text("FROM scratch\n")
    paths = TrialPaths(trial_dir=tmp_path / "trial")
    paths.mkdir()
    return RemoteDockerEnvironment(
        environment_dir=env_dir,
        environment_name="probe",
        session_id="probe-1__env",
        trial_paths=paths,
        task_env_config=TaskEnvironment(),
        docker_host="unix:///var/run/docker.sock",
        **kwargs,
    )


def test_docker_environment_enforces_proxy_policies_and_refuses_others(tmp_path: Path) -> None:
    runtime = {"agent_runtime_image": "verl-swe-rl/agent-runtime:latest"}
    env = _docker_env(
        tmp_path,
        proxy_url="http://10.0.0.2:8002",
        network_policy=NONE,
        phase_network_policies=[ONLY_PROXY, NONE],
        **runtime,
    )
    caps = env.capabilities
    assert caps.disable_internet and caps.network_allowlist and caps.dynamic_network_policy
    assert env.sandbox_proxy_url == sandbox_egress.relay_url()
    assert not env._enable_egress_control  # Harbor's gost sidecar is never started
    pypi = NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=["pypi.org"])
    with pytest.raises(
        ValueError, match=r"pypi\.org cannot be enforced by RemoteDockerEnvironment"
    ):
        _docker_env(tmp_path, proxy_url="http://10.0.0.2:8002", network_policy=pypi, **runtime)
    with pytest.raises(ValueError, match="HVT_PROXY_URL"):
        _docker_env(tmp_path, network_policy=NONE, **runtime)
    with pytest.raises(ValueError, match="runtime_image"):
        _docker_env(tmp_path, proxy_url="http://10.0.0.2:8002", network_policy=NONE)
    public = _docker_env(tmp_path)  # all public: no relay, the proxy is reached directly
    assert public.sandbox_proxy_url is None


def test_kubernetes_pods_carry_the_policy_label(tmp_path: Path) -> None:
    from harbor.models.task.config import EnvironmentConfig as TaskEnvironment
    from harbor.models.trial.paths import TrialPaths

    from harbor_patch.environments.kubernetes import KubernetesEnvironment

    paths = TrialPaths(trial_dir=tmp_path / "trial")
    paths.mkdir()
    (tmp_path / "environment").mkdir()
    common: dict[str, Any] = {
        "environment_dir": tmp_path / "environment",
        "environment_name": "probe",
        "session_id": "probe-1__env",
        "trial_paths": paths,
        "task_env_config": TaskEnvironment(docker_image="registry.example/probe:1"),
        "proxy_url": "http://10.0.0.2:8002",
    }
    env = KubernetesEnvironment(**common, network_policy=NONE, phase_network_policies=[ONLY_PROXY])
    assert env.settings().labels[sandbox_egress.EGRESS_LABEL] == "none"
    assert env.capabilities.dynamic_network_policy
    with pytest.raises(ValueError, match="KubernetesEnvironment"):
        KubernetesEnvironment(**common, network_policy=PYPI)


# -- the config key --------------------------------------------------------------------------


def test_summary_shows_the_effective_policy_per_backend() -> None:
    def text(**overrides: Any) -> str:
        keys = {f"runtime_info.input.{k}": v for k, v in overrides.items()}
        return summary.sandbox_network_text(RunConfig.model_validate(filled_config(**keys)))

    assert text().startswith("proxy-only: agent: proxy ")
    assert "relay on an internal compose network" in text()
    k8s = "harbor_patch.environments.kubernetes:KubernetesEnvironment"
    assert "NetworkPolicy" in text(**{"harbor_agent.environment_import_path": k8s})
    assert text(**{"harbor_agent.sandbox_network": "public"}).startswith("public:")
    assert "task's own policy" in text(**{"harbor_agent.sandbox_network": "task"})


def test_preflight_reports_the_policy_and_what_it_needs() -> None:
    from hvt.preflight.backend import check_sandbox_network
    from hvt.preflight.check import Status

    def check(env: dict[str, str], **overrides: Any) -> Any:
        keys = {f"runtime_info.input.{k}": v for k, v in overrides.items()}
        return check_sandbox_network(RunConfig.model_validate(filled_config(**keys)), env)

    good = check({"HVT_PROXY_URL": "http://10.0.0.2:8002"})
    assert good.status is Status.OK and good.detail.startswith("proxy-only: agent: proxy")
    assert check({}).detail.endswith("proxy address detected at launch")
    tls = check({"HVT_PROXY_URL": "https://proxy:8002"})
    assert tls.status is Status.FAIL and "HVT_PROXY_URL=http://" in tls.remedy
    no_runtime = check({}, **{"harbor_agent.runtime_image": ""})
    assert no_runtime.status is Status.FAIL and "runtime_image" in no_runtime.detail
    public = check(
        {"HVT_PROXY_URL": "https://proxy:8002"}, **{"harbor_agent.sandbox_network": "public"}
    )
    assert public.status is Status.OK
