"""What nvidia_gpu would install, computed by the role's own variables on the control node.

The driver install itself needs a GPU host; these tests pin down the package names and version
pins it would ask apt for (a wrong pin would only show on a GPU host otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.ansible.ansible_runner import playbook


def plan(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    out = tmp_path / "plan.json"
    proc = playbook("nvidia_plan.yml", {"out": str(out), **extra})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_debian_uses_the_cuda_repository_with_branch_pinning(tmp_path: Path) -> None:
    p = plan(tmp_path)
    assert p["source"] == "cuda_repo"  # this machine is Debian
    assert p["driver"] == ["nvidia-driver-pinning-580", "nvidia-open"]
    major = Path("/etc/debian_version").read_text().split(".")[0].strip()
    assert p["cuda_repo_url"] == (
        f"https://developer.download.nvidia.com/compute/cuda/repos/debian{major}/x86_64"
    )
    assert p["kernel_headers"] == f"linux-headers-{os.uname().release}"


def test_exact_versions_pin_driver_and_all_toolkit_packages(tmp_path: Path) -> None:
    p = plan(
        tmp_path, nvidia_gpu_driver_version="580.95.05-1", nvidia_gpu_toolkit_version="1.18.0-1"
    )
    assert p["driver"] == ["nvidia-driver-pinning-580", "nvidia-open=580.95.05-1"]
    assert p["toolkit"] == [
        "nvidia-container-toolkit=1.18.0-1",
        "nvidia-container-toolkit-base=1.18.0-1",
        "libnvidia-container-tools=1.18.0-1",
        "libnvidia-container1=1.18.0-1",
    ]


def test_ubuntu_server_packages(tmp_path: Path) -> None:
    p = plan(
        tmp_path,
        nvidia_gpu_driver_source="canonical",
        nvidia_gpu_driver_branch="590",
        nvidia_gpu_driver_version="590.1-0ubuntu1",
    )
    assert p["driver"] == [
        "nvidia-headless-590-server-open=590.1-0ubuntu1",
        "nvidia-utils-590-server=590.1-0ubuntu1",
    ]
    p = plan(tmp_path, nvidia_gpu_driver_source="canonical", nvidia_gpu_driver_open=False)
    assert p["driver"] == ["nvidia-headless-580-server", "nvidia-utils-580-server"]
