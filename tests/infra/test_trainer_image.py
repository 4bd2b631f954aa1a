"""The trainer image: user, paths, editable installs, locked versions, tools, entrypoint."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import inspect, lock_versions, run

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PY = "/opt/venv/bin/python"


@pytest.fixture(scope="module")
def trainer(container_of: Any) -> Any:
    return container_of("trainer")


def test_runs_as_non_root_hvt(trainer: Any, images: dict[str, str]) -> None:
    assert inspect(images["trainer"])["Config"]["User"] == "1000:1000"
    user = trainer.user()
    assert (user.name, user.uid, user.gid) == ("hvt", 1000, 1000)
    assert trainer.run("id -u").stdout.strip() == "1000"


def test_venv_is_root_owned_and_read_only_for_the_user(trainer: Any) -> None:
    site = trainer.file("/opt/venv/lib/python3.12/site-packages")
    assert site.is_directory
    assert site.user == "root"
    assert trainer.run("test -w /opt/venv/lib/python3.12/site-packages").rc != 0
    assert trainer.run(f"{PY} -m pip --version").rc != 0  # no pip to mutate the locked venv


def test_repos_are_in_place_and_owned_by_the_user(trainer: Any) -> None:
    for name, probe in (
        ("verl", "verl/__init__.py"),
        ("harbor", "src/harbor/__init__.py"),
        ("harbor-verl-train", "src/hvt/__init__.py"),
    ):
        tree = trainer.file(f"/workspace/repos/{name}")
        assert tree.is_directory and tree.user == "hvt", name
        assert trainer.file(f"/workspace/repos/{name}/{probe}").is_file
    assert trainer.file("/workspace/repos/verl/.hvt-source.json").is_file  # made by hvt repos
    assert trainer.run("test -w /workspace/repos/verl/verl/__init__.py").rc == 0


@pytest.mark.parametrize(
    ("module", "tree"),
    [
        ("verl", "/workspace/repos/verl/verl/__init__.py"),
        ("harbor", "/workspace/repos/harbor/src/harbor/__init__.py"),
        ("hvt", "/workspace/repos/harbor-verl-train/src/hvt/__init__.py"),
        ("verl_patch", "/workspace/repos/harbor-verl-train/src/verl_patch/__init__.py"),
        ("harbor_patch", "/workspace/repos/harbor-verl-train/src/harbor_patch/__init__.py"),
    ],
)
def test_editable_modules_resolve_under_workspace_repos(
    trainer: Any, module: str, tree: str
) -> None:
    where = trainer.check_output(
        f"cd /tmp && {PY} -c 'import importlib.util as u; print(u.find_spec(\"{module}\").origin)'"
    )
    assert where == tree


def test_an_edit_in_repos_is_what_runs(trainer: Any) -> None:
    trainer.run("echo 'HVT_EDIT_MARK = 42' >> /workspace/repos/verl/verl/__init__.py")
    out = trainer.check_output(f"cd /tmp && {PY} -c 'import verl; print(verl.HVT_EDIT_MARK)'")
    assert out == "42"


@pytest.mark.parametrize(
    "dist", ["vllm", "torch", "transformers", "ray", "verl", "harbor", "certifi"]
)
def test_versions_equal_the_lock(trainer: Any, dist: str) -> None:
    want = lock_versions("trainer.lock")[dist]
    have = trainer.check_output(
        f"{PY} -c 'import importlib.metadata as m; print(m.version(\"{dist}\"))'"
    )
    assert have == want


def test_docker_cli_compose_and_kubectl(trainer: Any) -> None:
    assert "26.1.5" in trainer.check_output("docker --version")
    assert "2.26.1" in trainer.check_output("docker compose version")
    assert "v1.32.3" in trainer.check_output("kubectl version --client")
    assert trainer.file("/usr/local/bin/kubectl").user == "root"


def test_entrypoint_execs_hvt(images: dict[str, str]) -> None:
    assert inspect(images["trainer"])["Config"]["Entrypoint"] == ["/entrypoint/trainer.sh"]
    out = run(images["trainer"], "version", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0"


def test_default_command_verify_venv_passes(images: dict[str, str]) -> None:
    """`make verify-venv`: editable, locked, pip check, and vllm/torch/ray/verl/harbor import."""
    out = run(images["trainer"], timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "as locked" in out.stdout
    for module in ("vllm", "torch", "ray", "verl", "harbor"):
        assert module in out.stdout


def test_verify_venv_fails_on_a_shadowing_docker_folder(
    images: dict[str, str], tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow"
    (shadow / "docker").mkdir(parents=True)
    (shadow / "docker" / "__init__.py").write_text("# a folder named docker, not the SDK\n")
    shadow.chmod(0o755)
    (shadow / "docker").chmod(0o755)
    (shadow / "docker" / "__init__.py").chmod(0o644)
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{shadow}:/work:ro",
            "-w",
            "/work",
            images["trainer"],
            "verify-venv",
            "--import",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout
    assert "DockerClient" in out.stdout and "FAIL" in out.stdout


def test_verify_venv_fails_on_a_version_drift(images: dict[str, str]) -> None:
    """A lock that disagrees with the venv (as after `make lock` without a rebuild) fails."""
    script = (
        "sed 's/^idna==.*/idna==0.1 \\\\/' $HVT_LOCK_FILE > /tmp/drift.lock && "
        "exec /entrypoint/trainer.sh verify-venv --lock /tmp/drift.lock --import json"
    )
    out = run(images["trainer"], "-c", script, entrypoint="/bin/sh", timeout=300)
    assert out.returncode == 1, out.stdout
    assert "version drift" in out.stdout and "idna" in out.stdout
