"""`hvt clean`: stops the bundle's own processes and files, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hvt.cli import app
from tests.conftest import filled_config
from tests.helpers.processes import free_port, listener

runner = CliRunner()


def _config(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(filled_config(**overrides)))
    return path


def _clean(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["clean", "--config", str(config), *args])
    return result.exit_code, result.output


def _layout(wd: Path, tmp_path: Path) -> None:
    for d in (
        "logs",
        "checkpoints/swe-lego-live-rl/exp/global_step_5",
        "wandb/offline-run-1",
        "run",
        "harbor_trials/swe-lego-live-rl/exp/step_0000/t1",
        "harbor_trials/other-project/exp/step_0000/t1",
    ):
        (wd / d).mkdir(parents=True, exist_ok=True)
    (wd / "logs" / "exp.log").write_text("step:1 - a:1\n")
    (wd / "logs" / "exp_vllm.log").write_text("tok/s\n")
    (wd / "logs" / "notes.txt").write_text("mine\n")
    (wd / "checkpoints/swe-lego-live-rl/exp/global_step_5/model.pt").write_text("w")
    (wd / "run" / "litellm.pid").write_text("1\n")
    (tmp_path / "ray-hvt-test" / "session_latest").mkdir(parents=True)


def test_stops_ours_and_leaves_a_foreign_listener(tmp_path: Path, workdir: Path) -> None:
    ours_port, foreign_port = free_port(), free_port()
    config = _config(tmp_path, **{"runtime_info.input.infrastructure.litellm_port": foreign_port})
    with listener(ours_port, workdir) as ours, listener(foreign_port, None) as foreign:
        code, out = _clean(config)
        assert code == 0, out
        assert ours.wait(timeout=15) is not None  # stopped
        assert foreign.poll() is None, "a process the bundle did not start was touched"
        assert f"port {foreign_port} is held by" in out and "left alone" in out


def test_dry_run_changes_nothing(tmp_path: Path, workdir: Path) -> None:
    _layout(workdir, tmp_path)
    port = free_port()
    with listener(port, workdir) as ours:
        code, out = _clean(_config(tmp_path), "--all", "--dry-run")
        assert code == 0, out
        assert ours.poll() is None
    assert "would stop this bundle's processes" in out
    assert "would remove 2 log file(s)" in out
    assert (workdir / "logs" / "exp.log").exists()
    assert (workdir / "run").exists()
    assert (workdir / "harbor_trials" / "swe-lego-live-rl").exists()


def test_default_removes_state_but_keeps_logs_trials_checkpoints(
    tmp_path: Path, workdir: Path
) -> None:
    _layout(workdir, tmp_path)
    code, out = _clean(_config(tmp_path))
    assert code == 0, out
    assert not (workdir / "run").exists()
    assert not (tmp_path / "ray-hvt-test").exists()
    assert (workdir / "logs" / "exp.log").exists()
    assert (workdir / "harbor_trials" / "swe-lego-live-rl").exists()
    assert "kept: checkpoints" in out


def test_logs_and_trials_flags(tmp_path: Path, workdir: Path) -> None:
    _layout(workdir, tmp_path)
    code, out = _clean(_config(tmp_path), "--logs", "--trials")
    assert code == 0, out
    assert not list((workdir / "logs").glob("*.log"))
    assert (workdir / "logs" / "notes.txt").exists()
    assert not (workdir / "harbor_trials" / "swe-lego-live-rl").exists()
    assert (workdir / "harbor_trials" / "other-project").exists(), "another project's trials"
    assert (workdir / "checkpoints/swe-lego-live-rl/exp/global_step_5/model.pt").exists()
    assert (workdir / "wandb" / "offline-run-1").exists()


@pytest.mark.parametrize("prefix", ["", "*", "swe-*", "a,b"])
def test_pods_refuses_empty_or_wildcard_prefix(tmp_path: Path, workdir: Path, prefix: str) -> None:
    config = _config(tmp_path, **{"runtime_info.input.harbor_agent.pod_name_prefix": prefix})
    code, out = _clean(config, "--pods")
    assert code == 2
    assert "pod_name_prefix" in out


def test_check_prefix_refuses_patterns() -> None:
    from hvt.run.clean import CleanError, check_prefix

    assert check_prefix("swe-lego-live-rl") == "swe-lego-live-rl"
    for bad in ("", "*", "a*", "x=y", "a b", "A"):
        with pytest.raises(CleanError, match="pod_name_prefix"):
            check_prefix(bad)


def test_nothing_to_clean(tmp_path: Path, workdir: Path) -> None:
    code, out = _clean(_config(tmp_path))
    assert code == 0
    assert "nothing of this bundle's to clean" in out
