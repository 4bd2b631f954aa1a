"""compose.yaml and compose.cpu.yaml, as Docker Compose itself resolves them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="needs the docker CLI with the compose plugin (make testbed)",
)
ENV = {
    "HVT_DATA_DIR": "/srv/hvt/data",
    "MODELS_DIR": "/mnt/models",
    "DATASETS_DIR": "/mnt/ds",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}


def _config(
    *files: str, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()
) -> dict[str, Any]:
    cmd = ["docker", "compose", "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(ROOT / f)]
    for p in profiles:
        cmd += ["--profile", p]
    out = subprocess.run(
        [*cmd, "config", "--format", "json"],
        env=env or ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_gpu_stack() -> None:
    cfg = _config("compose.yaml")
    services = cfg["services"]
    assert set(services) == {"trainer", "litellm"}, "profiles keep wandb-sync and dashboard out"
    trainer = services["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert trainer["ipc"] == "host"
    assert trainer["ulimits"]["memlock"] == -1
    assert trainer["command"][0] == "launch"
    assert {s["source"] for s in trainer["secrets"]} == {
        "litellm_master_key",
        "proxy_signing_key",
        "wandb_api_key",
    }
    # the run directory at the same absolute path, so sandboxes can bind-mount trial dirs
    assert any(v["source"] == v["target"] == "/srv/hvt/data" for v in trainer["volumes"])
    ray = trainer["ports"][0]
    assert ray["host_ip"] == "127.0.0.1" and ray["target"] == 8265
    litellm = services["litellm"]
    assert litellm["ports"][0]["published"] == "8002"
    assert litellm["depends_on"]["trainer"]["condition"] == "service_started"
    assert "/health/liveliness" in " ".join(litellm["healthcheck"]["test"])
    assert {s["source"] for s in litellm["secrets"]} == {"litellm_master_key", "proxy_signing_key"}


def test_no_secret_values_in_compose() -> None:
    text = (ROOT / "compose.yaml").read_text() + (ROOT / "compose.cpu.yaml").read_text()
    cfg = _config("compose.yaml")
    for name, svc in cfg["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if any(w in key for w in ("KEY", "TOKEN", "PASSWORD", "SECRET")):
                assert key.endswith("_FILE"), f"{name}: {key} carries a secret value"
                assert str(value).startswith("/run/secrets/"), f"{name}: {key}={value}"
    assert "sk-" not in text


def test_profiles_add_wandb_and_dashboard() -> None:
    services = _config("compose.yaml", profiles=("wandb", "dashboard"))["services"]
    assert services["wandb-sync"]["command"][0] == "wandb-sync"
    assert services["wandb-sync"]["stop_grace_period"] == "2m0s"
    dash = services["dashboard"]["ports"][0]
    assert dash["host_ip"] == "127.0.0.1" and dash["target"] == 6006


def test_cpu_mode_drops_the_gpu_and_runs_the_smoke() -> None:
    env = {
        **ENV,
        "HVT_SMOKE_TLS_DIR": "/srv/hvt/data/docker-tls",
        "HVT_SANDBOX_DOCKERD_IMAGE": "local/dockerd:bookworm",
    }
    services = _config("compose.yaml", "compose.cpu.yaml", env=env)["services"]
    trainer = services["trainer"]
    assert "deploy" not in trainer or not trainer["deploy"].get("resources")
    assert trainer["command"] == [
        "launch",
        "--cpu-smoke",
        "--config",
        "/workspace/config/smoke.yaml",
    ]
    assert trainer["restart"] == "no"  # hvt smoke stack restarts it once, for the resume
    assert trainer["environment"]["HVT_CONFIG"] == "/workspace/config/smoke.yaml"
    # the smoke's second experiment: the same service on config/smoke-async.yaml
    second = _config(
        "compose.yaml",
        "compose.cpu.yaml",
        env={**env, "HVT_SMOKE_CONFIG": "/workspace/config/smoke-async.yaml"},
    )["services"]["trainer"]
    assert second["command"][-1] == second["environment"]["HVT_CONFIG"]
    assert second["command"][-1] == "/workspace/config/smoke-async.yaml"
    # the fleet of config/smoke.yaml: two TLS-only daemons the trainer waits for, its client
    # certificates mounted where docker_hosts[].docker_cert_path points
    assert set(trainer["depends_on"]) >= {"sandbox-a", "sandbox-b"}
    tls = [v for v in trainer["volumes"] if v["target"] == "/etc/verl-swe-rl/docker-tls"]
    assert [(v["source"], v["read_only"]) for v in tls] == [
        ("/srv/hvt/data/docker-tls/clients", True)
    ]
    for name in ("sandbox-a", "sandbox-b"):
        daemon = services[name]
        assert daemon["entrypoint"] == ["dockerd"]  # not the dind image's entrypoint script
        assert "--tlsverify" in daemon["command"] and "-H=tcp://0.0.0.0:2376" in daemon["command"]
        assert not daemon.get("ports")  # reached on the compose network only
        certs = [v for v in daemon["volumes"] if v["target"] == "/certs"]
        assert certs[0]["source"] == f"/srv/hvt/data/docker-tls/{name}"
    # each variable the smoke stack sets is named when it is missing (one at a time: compose
    # reports the first it meets, and its order is not fixed)
    for var in ("HVT_SMOKE_TLS_DIR", "HVT_SANDBOX_DOCKERD_IMAGE"):
        files = ["-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "compose.cpu.yaml")]
        missing = subprocess.run(
            ["docker", "compose", "--project-directory", str(ROOT), *files, "config"],
            env={k: v for k, v in env.items() if k != var}, capture_output=True, text=True,
            check=False,
        )  # fmt: skip
        assert missing.returncode != 0, var
        assert var in missing.stderr and "hvt smoke stack sets it" in missing.stderr


def test_missing_data_dir_names_the_variable() -> None:
    env = {k: v for k, v in ENV.items() if k != "HVT_DATA_DIR"}
    out = subprocess.run(
        [
            "docker",
            "compose",
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "compose.yaml"),
            "config",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "HVT_DATA_DIR" in out.stderr and "make env" in out.stderr


def test_env_example_covers_every_variable(tmp_path: Path) -> None:
    import re

    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "compose.yaml").read_text()))
    documented = {
        ln.split("=", 1)[0]
        for ln in (ROOT / ".env.example").read_text().splitlines()
        if "=" in ln and not ln.startswith("#")
    }
    missing = used - documented - {"DOCKER_SOCK"}
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_several_hosts_worker_and_the_host_network_overlay() -> None:
    """A worker host's `worker` service; compose.nodes.yaml puts the trainer nodes on the host's
    network with no published port and the Ray dashboard on loopback, and names HVT_NODE_IP."""
    env = {**ENV, "HVT_NODE_IP": "10.0.0.11", "HVT_NODE_NAME": "gpu2"}
    plain = _config("compose.yaml", env=env)["services"]
    assert "worker" not in plain, "the worker is a profile: a single host never starts it"
    services = _config("compose.yaml", "compose.nodes.yaml", env=env, profiles=("worker",))[
        "services"
    ]
    worker, trainer = services["worker"], services["trainer"]
    assert worker["command"] == ["worker", "--config", "/workspace/config/config.yaml"]
    assert worker["network_mode"] == trainer["network_mode"] == "host"
    assert not worker.get("ports") and not trainer.get("ports"), "nothing published"
    assert trainer["environment"]["HVT_RAY_DASHBOARD_HOST"] == "127.0.0.1"
    assert worker["environment"]["HVT_NODE_IP"] == "10.0.0.11"
    assert worker["environment"]["HVT_NODE_NAME"] == "gpu2"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert worker["restart"] == "unless-stopped", "it joins again when the head comes back"
    # the run directory at the same path: the shared directory of several hosts
    data = [v for v in worker["volumes"] if v["target"] == "/srv/hvt/data"]
    assert data and data[0]["source"] == "/srv/hvt/data"
    missing = subprocess.run(
        ["docker", "compose", "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml"),
         "-f", str(ROOT / "compose.nodes.yaml"), "config"],
        env=ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "set HVT_NODE_IP in .env" in missing.stderr


def test_one_proxy_per_node_reads_the_shared_replica_set() -> None:
    """Several hosts: each other host runs its own proxy (`node-proxy`, profile worker) beside
    its worker, not the trainer; every proxy and the head's discovery use the LiteLLM config in
    the shared run directory; the worker's trials call its own proxy."""
    env = {
        **ENV,
        "HVT_NODE_IP": "10.0.0.11",
        "HVT_NODE_NAME": "gpu2",
        "HVT_NODE_PROXY_URL": "http://10.0.0.11:8002",
    }
    plain = _config("compose.yaml", env=env)["services"]
    assert "node-proxy" not in plain, "a profile: a single host runs only litellm"
    services = _config("compose.yaml", "compose.nodes.yaml", env=env, profiles=("worker",))[
        "services"
    ]
    node, head = services["node-proxy"], services["litellm"]
    assert "depends_on" not in node, "a worker host has no trainer service to wait for"
    assert head["depends_on"]["trainer"]["condition"] == "service_started"
    shared = "/srv/hvt/data/litellm/config.yaml"
    for name in ("node-proxy", "litellm", "trainer"):
        assert services[name]["environment"]["HVT_LITELLM_CONFIG"] == shared, name
    assert node["environment"]["HVT_PROXY_NAME"] == "gpu2"  # in each trajectory record
    assert {p["published"] for p in node["ports"]} == {"8002"}
    assert node["command"] == head["command"] and node["image"] == head["image"]
    assert services["worker"]["environment"]["HVT_NODE_PROXY_URL"] == "http://10.0.0.11:8002"
    # one host: the named volume, no node proxy URL
    one = _config("compose.yaml", env=ENV)["services"]
    assert one["litellm"]["environment"]["HVT_LITELLM_CONFIG"] == "/shared/litellm/config.yaml"


def test_cpu_worker_node_joins_the_smoke_head() -> None:
    env = {
        **ENV,
        "HVT_SMOKE_TLS_DIR": "/srv/hvt/data/docker-tls",
        "HVT_SANDBOX_DOCKERD_IMAGE": "local/dockerd:bookworm",
        "HVT_SMOKE_CONFIG": "/workspace/config/smoke-2node.yaml",
    }
    services = _config("compose.yaml", "compose.cpu.yaml", env=env, profiles=("worker",))[
        "services"
    ]
    worker = services["worker"]
    assert worker["command"] == [
        "worker",
        "--cpu",
        "--config",
        "/workspace/config/smoke-2node.yaml",
    ]
    assert worker["environment"]["HVT_CONFIG"] == "/workspace/config/smoke-2node.yaml"
    assert worker["environment"]["HVT_RAY_HEAD"] == "trainer:6379"
    assert worker["environment"]["HVT_NODE_NAME"] == "trainer-1"
    assert services["trainer"]["environment"]["HVT_NODE_NAME"] == "trainer-0"
    # one proxy per node: the second node's on the next port, each named in its records
    assert worker["environment"]["HVT_NODE_PROXY_URL"] == "http://172.17.0.1:8003"
    proxy = services["node-proxy"]
    assert {p["published"] for p in proxy["ports"]} == {"8003"}
    assert proxy["environment"]["HVT_PROXY_NAME"] == "trainer-1"
    assert services["litellm"]["environment"]["HVT_PROXY_NAME"] == "trainer-0"
    assert proxy["command"] == ["proxy", "--config", "/workspace/config/smoke.yaml"]
    assert "deploy" not in worker or not worker["deploy"].get("resources")
    targets = {v["target"] for v in worker["volumes"]}
    assert {"/srv/hvt/data", "/workspace/smoke", "/etc/verl-swe-rl/docker-tls"} <= targets
