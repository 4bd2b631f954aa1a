"""entrypoint/venv-normalize.py: the build step that makes two builds' venvs identical."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = str(Path(sys.executable).with_name("uv"))


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "venv_normalize", ROOT / "entrypoint/venv-normalize.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lock_entries_keep_every_hash_of_a_pin() -> None:
    entries = _module()._lock_entries(ROOT / "locks" / "trainer.lock")
    cu13 = entries["nvidia-cutlass-dsl-libs-cu13"]
    assert cu13.startswith("nvidia-cutlass-dsl-libs-cu13==")
    assert cu13.count("--hash=sha256:") >= 1
    assert "# via" not in cu13


def test_strip_removes_uv_cache_json_and_its_record_line(tmp_path: Path) -> None:
    info = tmp_path / "demo-1.0.dist-info"
    info.mkdir()
    (info / "uv_cache.json").write_text('{"timestamp": 1}')
    (info / "RECORD").write_text(
        "demo/__init__.py,sha256=x,1\ndemo-1.0.dist-info/uv_cache.json,sha256=y,2\n"
        "demo-1.0.dist-info/RECORD,,\n"
    )
    _module().strip(tmp_path)
    assert not (info / "uv_cache.json").exists()
    assert "uv_cache.json" not in (info / "RECORD").read_text()
    assert "demo/__init__.py" in (info / "RECORD").read_text()


@pytest.mark.slow
def test_settle_makes_the_last_name_win(tmp_path: Path) -> None:
    """Two real wheels that ship the same top-level file: the later name's copy survives."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("clash-a", "clash-b"):
        src = tmp_path / name
        (src).mkdir()
        (src / "shared.py").write_text(f"WHO = {name!r}\n")
        (src / "pyproject.toml").write_text(
            "[build-system]\nrequires=['hatchling']\nbuild-backend='hatchling.build'\n"
            f"[project]\nname='{name}'\nversion='1.0'\n"
            "[tool.hatch.build.targets.wheel]\nonly-include=['shared.py']\n"
        )
        subprocess.run([UV, "build", "-q", "--wheel", "-o", str(wheels), str(src)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # install b first, then a: without settling, a's copy wins
    for name in ("clash-b", "clash-a"):
        subprocess.run([UV, "pip", "install", "-q", "--python", py, "--no-index", "--find-links",
                        str(wheels), name], check=True)  # fmt: skip
    lock = tmp_path / "lock.txt"
    hashes = {}
    for whl in wheels.glob("*.whl"):
        import hashlib

        hashes[whl.name.split("-")[0].replace("_", "-")] = hashlib.sha256(
            whl.read_bytes()
        ).hexdigest()
    lock.write_text(
        "".join(f"{n}==1.0 \\\n    --hash=sha256:{h}\n" for n, h in sorted(hashes.items()))
    )
    env_uv = tmp_path / "uv-wrapper"
    env_uv.write_text(f'#!/bin/sh\nexec {UV} "$@" --no-index --find-links {wheels}\n')
    env_uv.chmod(0o755)
    _module().settle(py, str(env_uv), lock)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert (site / "shared.py").read_text() == "WHO = 'clash-b'\n"
