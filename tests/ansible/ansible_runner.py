"""Run ansible-playbook / ansible-galaxy from the venv against the control node itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.ansible.molecule_runner import ANSIBLE_DIR, VENV_BIN, molecule_env, run_ansible

PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"


def playbook(
    name: str, extra_vars: dict[str, Any], timeout: float = 300, inventory: str = "localhost,"
) -> subprocess.CompletedProcess[str]:
    """Run tests/ansible/playbooks/<name> (once more after a dropped container exec, like every
    Ansible run of these tests: see molecule_runner.run_ansible); `inventory` is a host list
    or an inventory file that holds localhost."""
    env = molecule_env()
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    env["ANSIBLE_BECOME"] = "false"
    return run_ansible(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            inventory,
            str(PLAYBOOKS / name),
            "-e",
            json.dumps({"ansible_python_interpreter": sys.executable, **extra_vars}),
        ],
        cwd=ANSIBLE_DIR,
        env=env,
        timeout=timeout,
        what=f"ansible-playbook {name}",
    )
