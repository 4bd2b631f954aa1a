"""The collections pinned in ansible/requirements.yml are the ones Ansible resolves.

`make venv` installs the PyPI package `ansible` (pinned in pyproject.toml), which bundles these
collections; `make ansible-collections` can install the same pins from Galaxy into
ansible/collections. Either way, the version Ansible uses must be the pinned one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.ansible.molecule_runner import ANSIBLE_DIR, VENV_BIN, molecule_env


def test_resolved_collections_match_the_pins() -> None:
    pins = {
        c["name"]: c["version"]
        for c in yaml.safe_load((ANSIBLE_DIR / "requirements.yml").read_text())["collections"]
    }
    env = molecule_env()
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "list", "--format", "json"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    by_path: dict[str, dict[str, dict[str, str]]] = json.loads(proc.stdout)
    # the first path (in search order) that holds a collection is the one Ansible loads
    resolved: dict[str, tuple[str, str]] = {}
    for path, collections in by_path.items():
        for name, info in collections.items():
            resolved.setdefault(name, (info["version"], path))
    for name, version in pins.items():
        assert name in resolved, f"{name} is pinned in requirements.yml but not installed"
        assert resolved[name][0] == version, (
            f"{name}: Ansible loads {resolved[name][0]} from {resolved[name][1]}, "
            f"requirements.yml pins {version}"
        )


def test_installed_collections_dir_is_ignored_by_git() -> None:
    proc = subprocess.run(
        ["git", "check-ignore", "-q", str(ANSIBLE_DIR / "collections" / "x")],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0
    assert Path(ANSIBLE_DIR / ".." / ".gitignore").resolve().is_file()
