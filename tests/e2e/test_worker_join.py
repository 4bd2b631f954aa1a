"""`hvt worker` against a real Ray head: what a user sees when the join cannot work.

A real `ray start --head` with token auth (the run's token, as `hvt launch` makes it) on a
private port and temp dir; the worker is this venv's real `hvt worker`, on a run directory of
its own. A second node on the same host would need the head's fixed node ports, so the
successful join, the node wait and a lost node are shown with two containers instead
(`make smoke SMOKE_NODES=2`); here the two refusals a user meets first:

- a token that is not the run's: the head refuses it, the worker says so, names the token file
  and the fix, and exits 2 without leaving a Ray process behind;
- no head at the address: the worker waits with progress and, past infrastructure.node_join_timeout,
  stops naming the address and the config key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from hvt import ownership
from tests.conftest import filled_config
from tests.helpers.processes import free_port
from tests.helpers.timing import scaled

pytestmark = [pytest.mark.timeout(scaled(240))]

HVT = Path(sys.executable).with_name("hvt")
RAY = Path(sys.executable).with_name("ray")


def _config(tmp: Path, port: int, timeout: int) -> Path:
    path = tmp / "config.yaml"
    data = filled_config(
        **{
            "runtime_info.input.infrastructure.nnodes": 2,
            "runtime_info.input.infrastructure.ngpus_per_node": 1,
            "runtime_info.input.infrastructure.ray_port": port,
            "runtime_info.input.infrastructure.node_join_timeout": timeout,
            "runtime_info.input.training.sp_size": 1,
            "runtime_info.input.vllm.gen_tp": 1,
        }
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _env(workdir: Path, temp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HVT_"))}
    path = f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}"  # `ray` as in the image: on PATH
    return {
        **env,
        "PATH": path,
        "HVT_WORKDIR": str(workdir),
        "HVT_RAY_TEMP_DIR": str(temp),
        **extra,
    }


@pytest.fixture
def head(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real Ray head with token auth: (its port, the run's token)."""
    port = free_port()
    token = tmp_path / "head-token"
    token.write_text("a" * 64)
    temp = Path(tempfile.mkdtemp(prefix="hvt-rh-", dir="/tmp"))  # Ray's socket paths are short
    marker = tmp_path / "head-marker"
    env = {
        **ownership.marked_env(marker),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = [str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
           "--include-dashboard=false", "--num-cpus=1", "--disable-usage-stats"]  # fmt: skip
    started = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=scaled(90), check=False
    )
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield port, token
    finally:
        ownership.stop_ours(marker, timeout_s=scaled(10))  # by its marker: never `ray stop`


def _no_ray_left(workdir: Path) -> list[str]:
    return [" ".join(p.cmdline()[:3]) for p in ownership.our_processes(workdir)]


def test_a_token_that_is_not_the_runs_is_refused_with_its_file_and_fix(
    tmp_path: Path, head: tuple[int, Path]
) -> None:
    port, _ = head
    workdir = tmp_path / "run-dir"
    (workdir / "run").mkdir(parents=True)
    (workdir / "run" / "ray_auth_token").write_text("b" * 64)  # another run's token
    out = subprocess.run(
        [str(HVT), "worker", "--config", str(_config(tmp_path, port, 60)),
         "--head", f"127.0.0.1:{port}"],
        env=_env(workdir, tmp_path / "w", HVT_NODE_NAME="w1"),
        capture_output=True, text=True, timeout=scaled(150), check=False,
    )  # fmt: skip
    said = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, said[-3000:]
    assert f"the Ray head at 127.0.0.1:{port} refused this node's token" in said, said[-3000:]
    assert f"{workdir}/run/ray_auth_token" in said and "HVT_DATA_DIR" in said
    assert not _no_ray_left(workdir), _no_ray_left(workdir)
    temp = str(tmp_path / "w")
    started_here = [
        p.pid for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])
    ]
    assert not started_here, f"processes of the refused node still run: {started_here}"


def test_no_head_at_the_address_is_named_after_waiting_with_progress(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    workdir = tmp_path / "run-dir"
    out = subprocess.run(
        [str(HVT), "worker", "--config", str(_config(tmp_path, port, 20))],
        env=_env(workdir, tmp_path / "w", HVT_RAY_HEAD=f"127.0.0.1:{port}"),
        capture_output=True, text=True, timeout=scaled(120), check=False,
    )  # fmt: skip
    said = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, said
    assert f"waiting for the Ray head at 127.0.0.1:{port}" in said, said
    assert "infrastructure.node0_ip / HVT_RAY_HEAD): still not there after 2" in said, said
    assert "Connection refused" in said
