"""Drive Molecule scenarios of ansible/molecule from pytest, step by step.

Each step's full output goes to a log file; a failing step raises with the tail of that log.
Progress (step, seconds) is printed to the terminal even while pytest captures output, since a
converge takes minutes.

Every Molecule or Ansible command the tests run goes through `run_ansible`, which runs it a
second time when the first run failed only because the container runtime dropped a
`docker exec` into a test host (`transient_runtime_failure`). That holds for runs that are
expected to fail too: their expected message must come from the role, not from runc.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
STEP_TIMEOUT_S = 900
ATTEMPTS = 2  # one more run after a dropped exec; a second drop in a row is reported


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


# -- telling a dropped exec from a real failure -----------------------------------------------

# How a `docker exec` that the container runtime dropped under load shows in a task result of the
# community.docker.docker connection (ansible-core 2.21, see tests/unit/test_ansible_retry.py):
#  - module_stderr / "failed to transfer file" carry runc's own words, "OCI runtime exec failed:
#    exec failed: unable to start container process: read init-p: connection reset by peer";
#  - when the exec that creates Ansible's remote temp directory is the one dropped, the host is
#    UNREACHABLE and only the docker CLI's exit status 126 ("could not invoke") is shown. A host
#    whose container is gone fails that exec with status 1 instead, and is not retried.
TRANSIENT_RUNTIME_ERRORS = (
    re.compile(r"OCI runtime exec failed"),
    re.compile(r"read init-p: connection reset by peer"),
    re.compile(r"Failed to create temporary directory\..*?exited with result 126\b", re.S),
)

# The start of one failed task result: `fatal: [host]: FAILED! =>`, `fatal: [host]: UNREACHABLE!
# =>`, or a loop item's `failed: [host] (item=...) =>`. The result follows on that line (JSON) or
# on the indented lines below it (YAML).
_RESULT_HEAD = re.compile(r"^(?:fatal|failed): \[[^\]]+\].*?=>")
_IGNORED = "...ignoring"


def failed_results(output: str) -> list[str]:
    """The failed task results in Ansible output that count: not the ignored ones, and not the
    "One or more items failed" summary of a loop (its items are results of their own)."""
    lines = output.splitlines()
    results: list[str] = []
    i = 0
    while i < len(lines):
        if not _RESULT_HEAD.match(lines[i]):
            i += 1
            continue
        block = [lines[i]]
        i += 1
        # the YAML result is indented, and may hold blank lines; a pretty-printed JSON one ends
        # with a `}` in column 0
        while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace() or lines[i] == "}"):
            block.append(lines[i])
            i += 1
        ignored = i < len(lines) and lines[i].strip() == _IGNORED
        text = "\n".join(block).rstrip()
        if not ignored and "One or more items failed" not in text:
            results.append(text)
    return results


def transient_runtime_failure(output: str) -> bool:
    """True when a failed Ansible/Molecule run failed only because the container runtime dropped
    an exec: it has failed task results, and every one of them is such a drop.

    False for anything else: a task that failed on its own (an assert, a module error, the
    expected failure of a test), a failure that Ansible prints without a task result (a syntax
    error, Molecule's idempotence check, a crash), or a run with both a drop and a real failure.
    """
    results = failed_results(output)
    return bool(results) and all(
        any(p.search(result) for p in TRANSIENT_RUNTIME_ERRORS) for result in results
    )


# -- running the commands ------------------------------------------------------------------------


def _print(msg: str) -> None:
    print(msg, flush=True)


def _run_once(
    argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float, log: Path | None
) -> subprocess.CompletedProcess[str]:
    if log is None:
        return subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    with log.open("w") as out:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, log.read_text(errors="replace"), ""
    )


def run_ansible(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    log: Path | None = None,
    what: str | None = None,
    say: Callable[[str], None] = _print,
) -> subprocess.CompletedProcess[str]:
    """Run a command that runs Ansible (molecule, ansible-playbook, make provision-...); run it
    once more when it failed only because the container runtime dropped an exec.

    With `log`, stdout and stderr go to that file and come back as the result's stdout; the log
    of a dropped attempt is kept next to it as <stem>.attempt<n><suffix>. The result is that of
    the last run: the caller decides what its exit status means.
    """
    what = what or " ".join([Path(argv[0]).name, *argv[1:]])
    for attempt in range(1, ATTEMPTS + 1):
        proc = _run_once(argv, cwd, env, timeout, log)
        dropped = proc.returncode != 0 and transient_runtime_failure(proc.stdout + proc.stderr)
        if not dropped:
            return proc
        if attempt == ATTEMPTS:
            say(f"{what}: the container runtime dropped an exec in {ATTEMPTS} runs in a row")
            return proc
        if log is not None:
            log.replace(log.with_name(f"{log.stem}.attempt{attempt}{log.suffix}"))
        say(f"{what}: the container runtime dropped an exec, not the role; running it again")
    raise AssertionError("not reached")


class Scenario:
    """One Molecule scenario; steps run in ansible/ with their output in log_dir."""

    def __init__(self, name: str, log_dir: Path, say: Callable[[str], None]) -> None:
        self.name = name
        self.log_dir = log_dir
        self.say = say
        self.timings: dict[str, float] = {}

    def run(self, step: str, *extra: str) -> str:
        """Run `molecule <step>` and return its log; raise MoleculeStepFailed if it fails (after
        the one extra run that a dropped exec gets)."""
        what = f"molecule {step} -s {self.name}"
        log = self.log_dir / f"{self.name}-{step}.log"
        started = time.monotonic()
        self.say(f"{what} ...")
        proc = run_ansible(
            [str(VENV_BIN / "molecule"), step, "-s", self.name, *extra],
            cwd=ANSIBLE_DIR,
            env=molecule_env(),
            timeout=STEP_TIMEOUT_S,
            log=log,
            what=what,
            say=self.say,
        )
        took = time.monotonic() - started
        self.timings[step] = self.timings.get(step, 0.0) + took
        self.say(f"{what}: rc={proc.returncode} in {took:.0f} s")
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-80:])
            raise MoleculeStepFailed(
                f"{what} failed (rc={proc.returncode}); full log: {log}\n{tail}"
            )
        return proc.stdout
