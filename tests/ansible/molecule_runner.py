"""Drive Molecule scenarios of ansible/molecule from pytest, step by step.

Each step's full output goes to a log file; a failing step raises with the tail of that log.
Progress (step, seconds) is printed to the terminal even while pytest captures output, since a
converge takes minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
STEP_TIMEOUT_S = 900


class MoleculeStepFailed(AssertionError):
    """A Molecule step exited non-zero; the message carries the end of its log."""


def molecule_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        NO_COLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
        ANSIBLE_NOCOWS="1",
        # the collections pinned in ansible/requirements.yml (see test_collections.py)
        ANSIBLE_COLLECTIONS_PATH=str(ANSIBLE_DIR / "collections"),
    )
    return env


# A dropped `docker exec` under load (runc "read init-p: connection reset by peer"); Ansible
# reports the host UNREACHABLE although nothing in the role failed.
TRANSIENT = "OCI runtime exec failed"


class Scenario:
    """One Molecule scenario; steps run in ansible/ with their output in log_dir."""

    def __init__(self, name: str, log_dir: Path, say: Callable[[str], None]) -> None:
        self.name = name
        self.log_dir = log_dir
        self.say = say
        self.timings: dict[str, float] = {}

    def run(self, step: str, *extra: str) -> str:
        text = self._run_once(step, *extra)
        if text is None:  # the container runtime dropped an exec: not the role's doing
            self.say(f"molecule {step} -s {self.name}: transient exec failure, running it again")
            text = self._run_once(step, *extra)
        if text is None:
            raise MoleculeStepFailed(
                f"molecule {step} -s {self.name}: exec into the test host "
                "failed twice (OCI runtime exec failed)"
            )
        return text

    def _run_once(self, step: str, *extra: str) -> str | None:
        """The step's log; None when it failed only because an exec into a host was dropped."""
        log = self.log_dir / f"{self.name}-{step}.log"
        started = time.monotonic()
        self.say(f"molecule {step} -s {self.name} ...")
        with log.open("w") as out:
            proc = subprocess.run(
                [str(VENV_BIN / "molecule"), step, "-s", self.name, *extra],
                cwd=ANSIBLE_DIR,
                env=molecule_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
        took = time.monotonic() - started
        self.timings[step] = self.timings.get(step, 0.0) + took
        text = log.read_text(errors="replace")
        self.say(f"molecule {step} -s {self.name}: rc={proc.returncode} in {took:.0f} s")
        if proc.returncode != 0:
            if TRANSIENT in text and "UNREACHABLE" in text and "FAILED!" not in text:
                return None
            tail = "\n".join(text.splitlines()[-80:])
            raise MoleculeStepFailed(
                f"molecule {step} -s {self.name} failed (rc={proc.returncode}); "
                f"full log: {log}\n{tail}"
            )
        return text
