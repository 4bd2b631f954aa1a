"""hvt verify-venv catches a venv that runs other code: real venvs made with uv, no mocks.

Each test builds a small Python 3.12 venv with the real docker SDK and editable installs of
tiny `verl` and `harbor` trees, then breaks it the way the seed's venv was broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hvt.cli import app

UV = str(Path(sys.executable).with_name("uv"))
SDK = ["docker==7.2.0", "requests==2.32.3", "urllib3==2.2.3", "idna==3.10",
       "charset-normalizer==3.4.0", "certifi==2024.8.30"]  # fmt: skip


def _tree(root: Path, name: str, version: str, src_layout: bool) -> Path:
    tree = root / name
    pkg = tree / "src" / name if src_layout else tree / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\nWHERE = __file__\n")
    packages = f'["src/{name}"]' if src_layout else f'["{name}"]'
    (tree / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['hatchling', 'editables']\nbuild-backend = 'hatchling.build'\n"
        f"[project]\nname = '{name}'\nversion = '{version}'\n"
        f"[tool.hatch.build.targets.wheel]\npackages = {packages}\n"
    )
    return tree


def _uv(*args: str) -> None:
    subprocess.run([UV, *args], check=True, capture_output=True, text=True)


@pytest.fixture
def venv(tmp_path: Path) -> dict[str, Path]:
    """A good venv: SDK from PyPI, verl and harbor editable from tmp/repos; its lock."""
    repos = tmp_path / "repos"
    verl = _tree(repos, "verl", "0.9.1", src_layout=False)
    harbor = _tree(repos, "harbor", "0.25.0", src_layout=True)
    # the seed's trap: verl's checkout has a top-level docker/ folder (no __init__.py)
    (verl / "docker").mkdir()
    (verl / "docker" / "Dockerfile.stable.vllm").write_text("FROM scratch\n")
    env = tmp_path / "venv"
    _uv("venv", "-q", "--python", sys.executable, str(env))
    py = env / "bin" / "python"
    _uv("pip", "install", "-q", "--python", str(py), *SDK)
    _uv(
        "pip", "install", "-q", "--python", str(py), "--no-deps", "-e", str(verl), "-e", str(harbor)
    )
    lock = tmp_path / "venv.lock"
    frozen = subprocess.run(
        [UV, "pip", "freeze", "--python", str(py), "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lock.write_text(frozen + "verl==0.9.1\nharbor==0.25.0\n")
    return {"python": py, "repos": repos, "lock": lock, "root": tmp_path}


def _verify(v: dict[str, Path], cwd: Path | None = None) -> tuple[int, str]:
    args = ["verify-venv", "--python", str(v["python"]), "--lock", str(v["lock"]),
            "--repos-root", str(v["repos"]), "--module", "verl", "--module", "harbor",
            "--dist", "verl", "--dist", "harbor", "--import", "verl", "--import", "harbor",
            "--overrides", str(v["root"] / "no-overrides.txt")]  # fmt: skip
    before = Path.cwd()
    os.chdir(cwd or v["root"])
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(before)
    return result.exit_code, result.output


def test_good_venv_passes(venv: dict[str, Path]) -> None:
    code, out = _verify(venv)
    assert code == 0, out
    assert "FAIL" not in out
    assert "as locked" in out


def test_editable_pointing_at_another_tree_fails(venv: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = _tree(tmp_path / "elsewhere", "verl", "0.9.1", src_layout=False)
    _uv("pip", "install", "-q", "--python", str(venv["python"]), "--no-deps", "-e", str(elsewhere))
    code, out = _verify(venv)
    assert code == 1
    assert "not under" in out
    assert "points at" in out and "elsewhere" in out


def test_regular_install_instead_of_editable_fails(venv: dict[str, Path]) -> None:
    _uv("pip", "install", "-q", "--python", str(venv["python"]), "--no-deps",
        str(venv["repos"] / "harbor"))  # fmt: skip
    code, out = _verify(venv)
    assert code == 1
    assert "not editable" in out


def test_shadowed_docker_package_fails(venv: dict[str, Path], tmp_path: Path) -> None:
    """A docker/ package in the working directory wins over the SDK for `python -c`."""
    workdir = tmp_path / "work"
    (workdir / "docker").mkdir(parents=True)
    (workdir / "docker" / "__init__.py").write_text("# not the SDK\n")
    code, out = _verify(venv, cwd=workdir)
    assert code == 1
    assert "DockerClient" in out
    assert "FAIL" in out


def test_missing_sdk_behind_verl_docker_folder_fails(venv: dict[str, Path]) -> None:
    """Without the SDK, verl's docker/ folder imports as a namespace package: caught."""
    _uv("pip", "uninstall", "-q", "--python", str(venv["python"]), "docker")
    code, out = _verify(venv, cwd=venv["repos"] / "verl")
    assert code == 1
    assert "docker distribution is not installed" in out or "cannot import name" in out


def test_version_drift_fails(venv: dict[str, Path]) -> None:
    _uv("pip", "install", "-q", "--python", str(venv["python"]), "--no-deps", "idna==3.7")
    code, out = _verify(venv)
    assert code == 1
    assert "version drift" in out
    assert "idna" in out


def test_package_outside_the_lock_fails(venv: dict[str, Path]) -> None:
    _uv("pip", "install", "-q", "--python", str(venv["python"]), "--no-deps", "six==1.16.0")
    code, out = _verify(venv)
    assert code == 1
    assert "not in the lock" in out


def test_pip_check_conflict_fails_unless_overridden(venv: dict[str, Path]) -> None:
    # requests 2.32.3 needs charset-normalizer<4
    _uv("pip", "install", "-q", "--python", str(venv["python"]), "--no-deps",
        "charset-normalizer==1.4.1")  # fmt: skip
    lock_text = (
        venv["lock"].read_text().replace("charset-normalizer==3.4.0", "charset-normalizer==1.4.1")
    )
    venv["lock"].write_text(lock_text)
    code, out = _verify(venv)
    assert code == 1
    assert "pip check" in out and "charset-normalizer" in out
    (venv["root"] / "no-overrides.txt").write_text("charset-normalizer==1.4.1\n")
    code, out = _verify(venv)
    assert code == 0, out
    assert "allowed" in out and "overrides pin" in out


def test_broken_import_fails(venv: dict[str, Path]) -> None:
    (venv["repos"] / "harbor" / "src" / "harbor" / "__init__.py").write_text(
        "raise ImportError('x')\n"
    )
    code, out = _verify(venv)
    assert code == 1
    assert "ImportError" in out


def test_unreadable_lock_is_a_clear_error(venv: dict[str, Path]) -> None:
    venv["lock"].unlink()
    code, out = _verify(venv)
    assert code == 2
    assert "make lock" in out


@pytest.fixture(autouse=True)
def _need_uv() -> None:
    if not shutil.which(UV) and not Path(UV).is_file():
        pytest.skip("uv is not installed in this venv (make venv installs it)")
