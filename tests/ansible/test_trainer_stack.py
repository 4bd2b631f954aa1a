"""trainer_stack (and the trainer play of provision.yml) on two real systemd hosts without a GPU.

Converges ansible/molecule/trainer_stack twice (the second run must change nothing): Docker
engine, nvidia_gpu skipping its device tasks, then the bundle, run profile, secrets, an image
loaded from an archive and `docker compose up -d`. The two hosts are one Ray cluster: the head
(hvt-ans-stack) runs the trainer service, which runs as the trainer uid and is healthy only if
it can read the secret and the run profile; the other host runs only the worker service; Ray's
ports on each answer the other trainer host and nobody else.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import testinfra

from tests.ansible.conftest import converged
from tests.ansible.molecule_runner import ANSIBLE_DIR, MoleculeStepFailed, Scenario
from tests.helpers.timing import scaled

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("hosts_available")]

HOST = "hvt-ans-stack"
WORKER = "hvt-ans-stack-2"
BUNDLE = "/opt/verl-swe-rl"
TEST_KEY = "sk-molecule-not-a-real-key"


@pytest.fixture(scope="module")
def scenario(molecule_logs: Path, say: Callable[[str], None]) -> Iterator[Scenario]:
    yield from converged("trainer_stack", molecule_logs, say)


@pytest.fixture(scope="module")
def host(scenario: Scenario) -> testinfra.host.Host:
    return testinfra.get_host(f"docker://{HOST}")


@pytest.fixture(scope="module")
def worker(scenario: Scenario) -> testinfra.host.Host:
    return testinfra.get_host(f"docker://{WORKER}")


def _address(name: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    out = subprocess.run(
        ["docker", "inspect", "-f", fmt, name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def test_second_converge_changes_nothing(scenario: Scenario) -> None:
    scenario.run("idempotence")


def test_molecule_verify(scenario: Scenario) -> None:
    scenario.run("verify")


def test_gpu_tasks_skipped_with_a_message(scenario: Scenario, host: testinfra.host.Host) -> None:
    log = (scenario.log_dir / "trainer_stack-converge.log").read_text()
    assert "gpu_enabled is false, so the NVIDIA driver, kernel headers" in log
    assert (
        host.run("dpkg-query -W -f '${Package}\\n' | grep -E '^(nvidia|libnvidia|cuda)'").stdout
        == ""
    )
    assert "nvidia" not in host.file("/etc/docker/daemon.json").content_string


def test_bundle_and_run_profile(host: testinfra.host.Host) -> None:
    compose = host.file(f"{BUNDLE}/compose.yaml")
    expected = (ANSIBLE_DIR / "molecule/trainer_stack/bundle/compose.yaml").read_text()
    assert compose.content_string == expected
    profile = host.file(f"{BUNDLE}/config/config.yaml")
    assert profile.mode == 0o644 and "name: molecule" in profile.content_string


def test_secrets_are_files_only_the_trainer_uid_reads(host: testinfra.host.Host) -> None:
    secrets = host.file(f"{BUNDLE}/secrets")
    assert (secrets.mode, secrets.uid, secrets.gid) == (0o700, 1000, 1000)
    key = host.file(f"{BUNDLE}/secrets/litellm_master_key")
    assert (key.mode, key.uid) == (0o600, 1000)
    assert key.content_string == TEST_KEY
    # compose.yaml needs every secret file: an empty value is an empty file
    wandb = host.file(f"{BUNDLE}/secrets/wandb_api_key")
    assert (wandb.mode, wandb.uid, wandb.size) == (0o600, 1000, 0)
    # and secrets are nowhere else in the bundle
    leaked = host.run(f"grep -rl --exclude-dir=secrets --exclude-dir=images {TEST_KEY} {BUNDLE}")
    assert leaked.stdout == "", leaked.stdout


def read_env(host: testinfra.host.Host) -> dict[str, str]:
    env = host.file(f"{BUNDLE}/.env")
    assert (env.mode, env.user) == (0o600, "root")
    return dict(
        line.split("=", 1)
        for line in env.content_string.splitlines()
        if line and not line.startswith("#")
    )


def test_compose_environment_file(host: testinfra.host.Host) -> None:
    env = read_env(host)
    docker_gid = host.run("getent group docker | cut -d: -f3").stdout.strip()
    assert env["DOCKER_GID"] == docker_gid
    assert env["TRAINER_IMAGE"] == "local/debian:bookworm"  # trainer_stack_env, merged last
    assert (env["IMAGE_PREFIX"], env["IMAGE_TAG"]) == ("verl-swe-rl", "latest")
    assert env["DOCKER_TLS_DIR"] == "/etc/verl-swe-rl/docker-tls"
    assert env["KUBE_DIR"] == "/etc/verl-swe-rl/kube"
    data = host.file(env["HVT_DATA_DIR"])
    assert data.is_directory and (data.uid, data.mode) == (1000, 0o750)


def test_env_file_satisfies_the_real_compose_file(
    host: testinfra.host.Host, tmp_path: Path
) -> None:
    """The .env the role writes has every variable the bundle's real compose.yaml requires."""
    real = ANSIBLE_DIR.parent / "compose.yaml"
    (tmp_path / ".env").write_text(host.file(f"{BUNDLE}/.env").content_string)
    for name in ("litellm_master_key", "wandb_api_key"):
        (tmp_path / name).write_text("x")
    proc = subprocess.run(
        [
            "docker",
            "compose",
            "--project-directory",
            str(ANSIBLE_DIR.parent),
            "-f",
            str(real),
            "-f",
            str(real.with_name("compose.nodes.yaml")),  # the .env's COMPOSE_FILE: two hosts
            "--env-file",
            str(tmp_path / ".env"),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_stack_runs_as_the_trainer_uid(host: testinfra.host.Host) -> None:
    fmt = "'{{.Service}} {{.Health}}'"
    ps = host.run(f"docker compose --project-directory {BUNDLE} ps --format {fmt}")
    assert ps.stdout.split() == ["trainer", "healthy"], ps.stdout + ps.stderr
    uid = host.run(f"docker compose --project-directory {BUNDLE} exec -T trainer id -u")
    assert uid.stdout.strip() == "1000"


def test_missing_secret_stops_with_its_name(scenario: Scenario) -> None:
    with pytest.raises(MoleculeStepFailed) as failed:
        scenario.run("converge", "--", "-e", "vault_litellm_master_key=")
    assert "secret 'litellm_master_key' is empty" in str(failed.value)


def test_each_host_knows_its_place_in_the_cluster(
    host: testinfra.host.Host, worker: testinfra.host.Host
) -> None:
    head_ip, worker_ip = _address(HOST), _address(WORKER)
    head, other = read_env(host), read_env(worker)
    assert (head["HVT_NODE_NAME"], head["HVT_NODE_IP"]) == (HOST, head_ip)
    assert (other["HVT_NODE_NAME"], other["HVT_NODE_IP"]) == (WORKER, worker_ip)
    for env in (head, other):
        assert env["HVT_RAY_HEAD"] == f"{head_ip}:6379"
        assert env["NODE0_IP"] == head_ip, "the head's proxy, for the head's trials"
        assert env["COMPOSE_FILE"] == f"{BUNDLE}/compose.yaml:{BUNDLE}/compose.nodes.yaml"
    assert (head["COMPOSE_PROFILES"], other["COMPOSE_PROFILES"]) == ("", "worker")
    # one proxy per node: the other host's trials call its own proxy
    assert (head["HVT_NODE_PROXY_URL"], other["HVT_NODE_PROXY_URL"]) == (
        "",
        f"http://{worker_ip}:8002",
    )
    fmt = "'{{.Service}} {{.Health}}'"
    ps = worker.run(f"docker compose --project-directory {BUNDLE} ps --format {fmt}")
    assert sorted(ps.stdout.splitlines()) == ["node-proxy healthy", "worker healthy"], (
        ps.stdout + ps.stderr
    )


def _connects(host: testinfra.host.Host | None, address: str, port: int) -> bool:
    """Whether a TCP connection to address:port opens within 3 s (host None: from here)."""
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=3)"
    if host is None:
        proc = subprocess.run(["python3", "-c", code], capture_output=True, timeout=30, check=False)
        return proc.returncode == 0
    return bool(host.run(f"python3 -c {code!r}").rc == 0)


def test_rays_ports_answer_only_the_other_trainer_host(
    host: testinfra.host.Host, worker: testinfra.host.Host
) -> None:
    rules = host.run("nft list table inet verl_swe_rl_ray")
    assert rules.rc == 0 and _address(WORKER) in rules.stdout, rules.stdout + rules.stderr
    assert host.service("verl-swe-rl-ray-firewall.service").is_enabled
    head_ip = _address(HOST)
    listener = "nohup python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 &"
    for port in (6379, 6381, 12000, 7001):  # GCS, a node server, a worker's port; not Ray's
        host.run(listener.format(port=port))
    try:
        deadline = time.monotonic() + scaled(20)
        while not _connects(worker, head_ip, 7001) and time.monotonic() < deadline:
            time.sleep(0.5)
        for port in (6379, 6381, 12000):
            assert _connects(worker, head_ip, port), f"the other trainer host reaches :{port}"
            assert not _connects(None, head_ip, port), f"a host outside the cluster reached :{port}"
        assert _connects(None, head_ip, 7001), "a port that is not Ray's stays open"
    finally:
        host.run("pkill -f 'http.server' || true")
