"""The one-retry rule of tests/ansible/molecule_runner.py, without Docker: telling a `docker exec`
that the container runtime dropped under load from a real failure, and running the step again.

The Ansible output below is what ansible-core 2.21 with the community.docker.docker connection
and callback_result_format=yaml prints (as the Molecule scenarios set it), recorded against a
stand-in `docker` CLI that fails one chosen exec the way runc does under load (exit 126,
"OCI runtime exec failed: ... read init-p: connection reset by peer"). Paths are shortened.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible import molecule_runner
from tests.ansible.molecule_runner import (
    MoleculeStepFailed,
    Scenario,
    failed_results,
    run_ansible,
    transient_runtime_failure,
)

RUNC = (
    "OCI runtime exec failed: exec failed: unable to start container process: "
    "read init-p: connection reset by peer: unknown"
)
RECAP_FAILED = """
PLAY RECAP *********************************************************************
hvt-ans-gpu                : ok=0    changed=0    unreachable=0    failed=1    skipped=0
"""

# the exec running a module (pipelining on) was dropped
MODULE_DROPPED = f"""
PLAY [Converge] ****************************************************************

TASK [Gathering Facts] *********************************************************
[ERROR]: Task failed: Action failed: The following modules failed to execute: ansible.legacy.setup.

Task failed: Action failed.

<<< caused by >>>

The following modules failed to execute: ansible.legacy.setup.

fatal: [hvt-ans-gpu]: FAILED! =>
    ansible_facts: {{}}
    changed: false
    failed_modules:
        ansible.legacy.setup:
            changed: false
            failed: true
            module_stderr: |-
                {RUNC}
            module_stdout: ''
            msg: 'Module result deserialization failed: No start of json char found'
            rc: 126
    msg: 'The following modules failed to execute: ansible.legacy.setup.'
{RECAP_FAILED}"""

# the exec copying a module over (pipelining off) was dropped; note the blank line in the message
TRANSFER_DROPPED = f"""
TASK [Gathering Facts] *********************************************************
[ERROR]: Task failed: failed to transfer file /tmp/tmpk1 to ~/.ansible/tmp/x/AnsiballZ_setup.py:

{RUNC}

fatal: [hvt-ans-gpu]: FAILED! =>
    changed: false
    msg: |-
        Task failed: failed to transfer file /tmp/tmpk1 to ~/.ansible/tmp/x/AnsiballZ_setup.py:

        {RUNC}
{RECAP_FAILED}"""


def _tmpdir_failed(status: int) -> str:
    """The exec creating Ansible's remote temp dir failed: the host is UNREACHABLE, and Ansible
    shows only the exit status of `docker exec` (126: dropped by the runtime; 1: the container
    is not running)."""
    return f"""
TASK [nvidia_gpu : Check the inputs] *******************************************
[ERROR]: Task failed: Failed to create temporary directory. In some cases, you may have been
able to authenticate and ... Failed command was: ( umask 77 && mkdir -p "` echo ~/.ansible/tmp `"
), exited with result {status}
Origin: /work/main/ansible/roles/nvidia_gpu/tasks/main.yml:2:3

fatal: [hvt-ans-gpu]: UNREACHABLE! =>
    changed: false
    msg: 'Task failed: Failed to create temporary directory. In some cases, you may have
        been able to authenticate and did not have permissions on the target directory.
        Failed command was: ( umask 77 && mkdir -p "` echo /root/.ansible/tmp `"
        ), exited with result {status}'
    unreachable: true

PLAY RECAP *********************************************************************
hvt-ans-gpu                : ok=0    changed=0    unreachable=1    failed=0    skipped=0
"""


# the run the test expects to fail: the role's own input check
ASSERTION = """
TASK [Gathering Facts] *********************************************************
ok: [hvt-ans-gpu]

TASK [nvidia_gpu : Check the inputs] *******************************************
[ERROR]: Task failed: Action failed: hvt-ans-gpu: nvidia_gpu needs ..., nvidia_gpu_driver_branch
>= 580 (the trainer's torch is a cu130 build; got '535')
Origin: /work/main/ansible/roles/nvidia_gpu/tasks/main.yml:2:3

1 ---
2 - name: Check the inputs
    ^ column 3

fatal: [hvt-ans-gpu]: FAILED! =>
    assertion: nvidia_gpu_driver_branch | int >= nvidia_gpu_driver_min_branch | int
    changed: false
    evaluated_to: false
    msg: 'hvt-ans-gpu: nvidia_gpu needs ..., nvidia_gpu_driver_branch >= 580 (the trainer''s
        torch is a cu130 build; got ''535'')'

PLAY RECAP *********************************************************************
hvt-ans-gpu                : ok=1    changed=0    unreachable=0    failed=1    skipped=0
CRITICAL Ansible return code was 2, command was: ansible-playbook ... converge.yml
"""

IGNORED_FAILURE = """
TASK [docker_engine : Probe an optional thing] *********************************
[ERROR]: Task failed: Module failed: The command exited with a non-zero return code.

fatal: [hvt-ans-engine]: FAILED! =>
    changed: true
    cmd:
    - 'false'
    msg: The command exited with a non-zero return code.
    rc: 1
...ignoring
"""

LOOP_ITEM_DROPPED = f"""
TASK [Loop] ********************************************************************
changed: [hvt-ans-gpu] => (item=a)
[ERROR]: Task failed: Action failed: Module result deserialization failed: No start of json ...

failed: [hvt-ans-gpu] (item=b) =>
    ansible_loop_var: item
    changed: false
    item: b
    module_stderr: |-
        {RUNC}
    module_stdout: ''
    msg: 'Module result deserialization failed: No start of json char found'
    rc: 126
changed: [hvt-ans-gpu] => (item=c)
"""

# the default (JSON) result format, one result per line
JSON_DROPPED = (
    "TASK [Gathering Facts] ***\n"
    "fatal: [hvt-ans-gpu]: FAILED! => "
    + json.dumps({"changed": False, "module_stderr": RUNC, "msg": "MODULE FAILURE", "rc": 126})
    + "\n"
)
JSON_REAL = (
    "TASK [Install] ***\n"
    'fatal: [hvt-ans-gpu]: FAILED! => {"changed": false, "msg": "No package matching \'x\'"}\n'
)

IDEMPOTENCE_FAILED = f"""
TASK [docker_engine : Write daemon.json] ***************************************
changed: [hvt-ans-engine]
CRITICAL Idempotence test failed because of the following tasks:
*  => docker_engine : Write daemon.json
WARNING  An earlier run printed: {RUNC}
"""


@pytest.mark.parametrize(
    "output",
    [
        MODULE_DROPPED,
        TRANSFER_DROPPED,
        _tmpdir_failed(126),
        LOOP_ITEM_DROPPED,
        JSON_DROPPED,
        IGNORED_FAILURE + MODULE_DROPPED,  # an ignored failure does not count
        MODULE_DROPPED + MODULE_DROPPED.replace("hvt-ans-gpu", "hvt-ans-other"),  # two hosts
    ],
    ids=[
        "module-stderr",
        "file-transfer",
        "tmpdir-exit-126",
        "loop-item",
        "json-format",
        "after-an-ignored-failure",
        "on-two-hosts",
    ],
)
def test_a_dropped_exec_is_transient(output: str) -> None:
    assert transient_runtime_failure(output)


@pytest.mark.parametrize(
    "output",
    [
        ASSERTION,
        JSON_REAL,
        _tmpdir_failed(1),  # the container is gone: retrying will not bring it back
        MODULE_DROPPED + ASSERTION,  # one host dropped, the other failed for real
        IGNORED_FAILURE,
        IDEMPOTENCE_FAILED,  # the runtime's words, but no failed task result
        "ERROR! the playbook: converge.yml could not be found\n",
        "",
    ],
    ids=[
        "assertion",
        "module-error",
        "tmpdir-exit-1",
        "drop-and-real-failure",
        "only-ignored",
        "no-task-result",
        "playbook-error",
        "empty",
    ],
)
def test_a_real_failure_is_not_transient(output: str) -> None:
    assert not transient_runtime_failure(output)


def test_failed_results_are_whole_blocks() -> None:
    (result,) = failed_results(TRANSFER_DROPPED)
    assert result.startswith("fatal: [hvt-ans-gpu]: FAILED! =>")
    assert result.endswith(RUNC)  # past the blank line inside the message
    assert "PLAY RECAP" not in result
    (result,) = failed_results(ASSERTION)
    assert "got ''535''" in result and "CRITICAL" not in result


# -- the retry itself, with a stand-in command --------------------------------------------------

FAKE = """
import json, sys
from pathlib import Path
here = Path(sys.argv[1])
runs = here / "runs"
n = len(runs.read_text().splitlines()) + 1 if runs.exists() else 1
with runs.open("a") as f:
    f.write(f"{n} {sys.argv[2:]}\\n")
outputs = json.loads((here / "outputs.json").read_text())
text = outputs[min(n, len(outputs)) - 1]
print(text)
sys.exit(0 if text == "OK" else 2)
"""


def _fake(tmp_path: Path, *outputs: str) -> list[str]:
    """argv of a command printing outputs[0] on its first run, outputs[1] on its second, ...
    (exit 0 for "OK", else 2); its runs are counted in tmp_path/runs."""
    script = tmp_path / "fake_ansible.py"
    script.write_text(FAKE)
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    return [sys.executable, str(script), str(tmp_path)]


def _runs(tmp_path: Path) -> int:
    return len((tmp_path / "runs").read_text().splitlines())


def _run(
    argv: list[str], tmp_path: Path, said: list[str], log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_ansible(argv, cwd=tmp_path, env={}, timeout=60, log=log, say=said.append)


def test_a_dropped_exec_is_run_again_and_the_real_outcome_returned(tmp_path: Path) -> None:
    said: list[str] = []
    log = tmp_path / "nvidia_gpu-converge.log"
    proc = _run(_fake(tmp_path, MODULE_DROPPED, ASSERTION), tmp_path, said, log)
    assert _runs(tmp_path) == 2
    assert proc.returncode == 2 and "nvidia_gpu_driver_branch >= 580" in proc.stdout
    assert log.read_text() == proc.stdout
    assert RUNC in (tmp_path / "nvidia_gpu-converge.attempt1.log").read_text()  # kept
    assert len(said) == 1 and "running it again" in said[0]


@pytest.mark.parametrize("first", ["OK", ASSERTION, IDEMPOTENCE_FAILED])
def test_success_and_real_failures_run_once(tmp_path: Path, first: str) -> None:
    said: list[str] = []
    proc = _run(_fake(tmp_path, first, "OK"), tmp_path, said)
    assert _runs(tmp_path) == 1 and said == []
    assert proc.returncode == (0 if first == "OK" else 2)


def test_one_retry_only(tmp_path: Path) -> None:
    said: list[str] = []
    proc = _run(_fake(tmp_path, MODULE_DROPPED, TRANSFER_DROPPED, "OK"), tmp_path, said)
    assert _runs(tmp_path) == 2
    assert proc.returncode == 2 and "failed to transfer file" in proc.stdout
    assert "2 runs in a row" in said[-1]


def test_expected_failure_step_is_retried_and_still_fails_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What test_nvidia_gpu.py::test_old_driver_branch_is_refused goes through when the first
    converge loses an exec: the step runs again and fails with the role's own message."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv = _fake(tmp_path, MODULE_DROPPED, ASSERTION)
    molecule = bin_dir / "molecule"
    molecule.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
    molecule.chmod(0o755)
    monkeypatch.setattr(molecule_runner, "VENV_BIN", bin_dir)
    monkeypatch.setattr(molecule_runner, "ANSIBLE_DIR", tmp_path)
    said: list[str] = []
    scenario = Scenario("nvidia_gpu", tmp_path, said.append)
    with pytest.raises(MoleculeStepFailed) as failed:
        scenario.run("converge", "--", "-e", "nvidia_gpu_driver_branch=535")
    message = " ".join(str(failed.value).split())
    assert "nvidia_gpu_driver_branch >= 580" in message and "got ''535''" in message
    assert RUNC not in message
    assert _runs(tmp_path) == 2
    assert (
        (tmp_path / "runs")
        .read_text()
        .splitlines()[-1]
        .endswith("['converge', '-s', 'nvidia_gpu', '--', '-e', 'nvidia_gpu_driver_branch=535']")
    )
    assert any("running it again" in line for line in said)
