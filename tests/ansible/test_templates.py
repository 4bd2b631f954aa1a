"""docker_engine's daemon.json template: the one owner merges NVIDIA runtime, TLS and options.

Renders the real template with the role's defaults on the control node (no host needed).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.ansible.ansible_runner import playbook
from tests.ansible.molecule_runner import ANSIBLE_DIR, VENV_BIN, molecule_env


def render(tmp_path: Path, group: str | None = None, **extra: Any) -> dict[str, Any]:
    """The daemon.json the role writes for localhost, in inventory `group` if given."""
    out = tmp_path / "daemon.json"
    inventory = "localhost,"
    if group:
        inventory = str(tmp_path / "hosts.yml")
        Path(inventory).write_text(
            json.dumps({"all": {"children": {group: {"hosts": {"localhost": {}}}}}})
        )
    proc = playbook("render_daemon_json.yml", {"out": str(out), **extra}, inventory=inventory)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_defaults_have_no_runtime_no_tls_no_listener(tmp_path: Path) -> None:
    assert render(tmp_path) == {
        "log-driver": "json-file",
        "log-opts": {"max-file": "5", "max-size": "50m"},
    }


def test_gpu_host_gets_the_nvidia_runtime(tmp_path: Path) -> None:
    cfg = render(tmp_path, gpu_enabled=True)
    assert cfg["runtimes"] == {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
    assert "default-runtime" not in cfg
    cfg = render(tmp_path, gpu_enabled=True, docker_engine_nvidia_default_runtime=True)
    assert cfg["default-runtime"] == "nvidia"


def test_sandbox_host_gets_tls_keys_but_no_hosts(tmp_path: Path) -> None:
    cfg = render(tmp_path, docker_engine_tls=True)
    assert cfg["tls"] is True and cfg["tlsverify"] is True
    assert (cfg["tlscacert"], cfg["tlscert"], cfg["tlskey"]) == (
        "/etc/docker/tls/ca.pem",
        "/etc/docker/tls/server-cert.pem",
        "/etc/docker/tls/server-key.pem",
    )
    assert "hosts" not in cfg


def test_a_registry_mirror_for_the_sandbox_hosts_pulls(tmp_path: Path) -> None:
    mirrors = ["https://mirror.internal:5000"]
    cfg = render(tmp_path, docker_engine_registry_mirrors=mirrors)
    assert cfg["registry-mirrors"] == mirrors
    assert "registry-mirrors" not in render(tmp_path)


def test_hosts_that_run_sandboxes_get_address_pools_for_hundreds_of_networks(
    tmp_path: Path,
) -> None:
    """Each sandbox takes two networks (compose's and the egress relay's): Docker's built-in
    pools (about 30 networks) would stop a host at ~15 sandboxes."""
    pools = [{"base": "172.20.0.0/14", "size": 24}]  # 2 ** (24 - 14) = 1024 networks
    for group in ("sandbox_docker", "trainer"):
        assert render(tmp_path, group=group)["default-address-pools"] == pools, group
    assert "default-address-pools" not in render(tmp_path, group="monitoring")
    assert "default-address-pools" not in render(
        tmp_path, group="sandbox_docker", docker_engine_default_address_pools=[]
    )
    mine = [{"base": "10.99.0.0/16", "size": 26}]
    cfg = render(tmp_path, group="sandbox_docker", docker_engine_default_address_pools=mine)
    assert cfg["default-address-pools"] == mine


def test_everything_merged_with_user_options_last(tmp_path: Path) -> None:
    cfg = render(
        tmp_path,
        gpu_enabled=True,
        docker_engine_tls=True,
        docker_engine_storage_driver="vfs",
        docker_engine_daemon_options={
            "log-opts": {"max-size": "10m"},
            "runtimes": {"runsc": {"path": "/usr/bin/runsc"}},
            "default-shm-size": "1G",
        },
    )
    assert cfg["log-opts"] == {"max-file": "5", "max-size": "10m"}  # merged, not replaced
    assert set(cfg["runtimes"]) == {"nvidia", "runsc"}
    assert cfg["storage-driver"] == "vfs" and cfg["tlsverify"] is True
    assert cfg["default-shm-size"] == "1G"


def _ansible(*args: str) -> subprocess.CompletedProcess[str]:
    env = molecule_env()
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    return subprocess.run(
        [str(VENV_BIN / args[0]), *args[1:]],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_example_inventory_parses() -> None:
    proc = _ansible("ansible-inventory", "-i", "inventory/example/hosts.yml", "--list")
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert {"trainer", "sandbox_docker", "k8s_control"} <= set(inv["all"]["children"])
    assert inv["_meta"]["hostvars"]["gpu1"]["gpu_enabled"] is True
    assert inv["_meta"]["hostvars"]["sandbox1"]["docker_tls_port"] == 2376


def test_provision_playbook_syntax() -> None:
    proc = _ansible(
        "ansible-playbook", "--syntax-check", "-i", "inventory/example/hosts.yml", "provision.yml"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
