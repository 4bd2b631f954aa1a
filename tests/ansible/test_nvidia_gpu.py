"""nvidia_gpu on a real systemd host without a GPU, and its input checks.

Converges ansible/molecule/nvidia_gpu twice (gpu_enabled: false): the device tasks skip and say
so, nothing NVIDIA is installed and daemon.json carries no nvidia runtime. A driver branch
below 580 stops the run with a message naming the variable. The driver install, the reboot
handling and the nvidia-smi check need a GPU host (docs/provisioning.md, "GPU hosts").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ansible.conftest import converged
from tests.ansible.molecule_runner import MoleculeStepFailed, Scenario

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("hosts_available")]


@pytest.fixture(scope="module")
def scenario(molecule_logs: Path, say: Callable[[str], None]) -> Iterator[Scenario]:
    yield from converged("nvidia_gpu", molecule_logs, say)


def test_device_tasks_skip_and_say_so(scenario: Scenario) -> None:
    log = (scenario.log_dir / "nvidia_gpu-converge.log").read_text()
    assert "hvt-ans-gpu: gpu_enabled is false, so the NVIDIA driver, kernel headers," in log
    assert "Install and check the GPU stack" in log  # the include was reached and skipped
    assert "Install the NVIDIA driver" not in log


def test_second_converge_changes_nothing(scenario: Scenario) -> None:
    scenario.run("idempotence")


def test_molecule_verify(scenario: Scenario) -> None:
    scenario.run("verify")


def test_old_driver_branch_is_refused(scenario: Scenario) -> None:
    # A converge that loses an exec to the container runtime is run again by Scenario.run, as
    # every step is (molecule_runner.run_ansible): the failure seen here is the role's own.
    with pytest.raises(MoleculeStepFailed) as failed:
        scenario.run("converge", "--", "-e", "nvidia_gpu_driver_branch=535")
    message = " ".join(str(failed.value).split())
    assert "nvidia_gpu_driver_branch >= 580" in message
    assert "got '535'" in message
