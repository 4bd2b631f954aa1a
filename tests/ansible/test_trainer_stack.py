"""trainer_stack (and the trainer play of provision.yml) on a real systemd host without a GPU.

Converges ansible/molecule/trainer_stack twice (the second run must change nothing): Docker
engine, nvidia_gpu skipping its device tasks, then the bundle, run profile, secrets, an image
loaded from an archive and `docker compose up -d`. The compose service runs as the trainer uid
and is healthy only if it can read the secret and the run profile.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import testinfra

from tests.ansible.conftest import converged
from tests.ansible.molecule_runner import ANSIBLE_DIR, MoleculeStepFailed, Scenario

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("hosts_available")]

HOST = "hvt-ans-stack"
BUNDLE = "/opt/verl-swe-rl"
TEST_KEY = "sk-molecule-not-a-real-key"


@pytest.fixture(scope="module")
def scenario(molecule_logs: Path, say: Callable[[str], None]) -> Iterator[Scenario]:
    yield from converged("trainer_stack", molecule_logs, say)


@pytest.fixture(scope="module")
def host(scenario: Scenario) -> testinfra.host.Host:
    return testinfra.get_host(f"docker://{HOST}")


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
    if not real.is_file():
        pytest.skip("no compose.yaml in this checkout yet")
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
