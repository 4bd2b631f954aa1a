"""`hvt sandbox check` on this machine's engine: Harbor's oracle agent on every task, through
the agent loop's trial code. A solvable task gets reward 1; a task whose oracle cannot solve it
fails the check, named with its host and trial directory. (On a fleet of TLS daemons:
tests/e2e/test_sandbox_fleet.py.)"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hvt.cli import app
from tests.conftest import filled_config

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def check_config(tmp_path: Path, prefix: str, **keys: object) -> Path:
    """A filled config for oracle trials (no agent runtime), plus `keys` (dotted paths)."""
    config = tmp_path / "config.yaml"
    base = {
        "runtime_info.input.harbor_agent.pod_name_prefix": prefix,
        "runtime_info.input.harbor_agent.runtime_image": "",
        # the oracle calls no model; egress control is tested in test_sandbox_egress.py
        "runtime_info.input.harbor_agent.sandbox_network": "public",
        "runtime_info.input.harbor_agent.environment_override_memory_mb": 512,
        "runtime_info.input.harbor_runtime.num_workers": 2,
    }
    config.write_text(yaml.safe_dump(filled_config(**{**base, **keys})))
    return config


def test_the_oracle_passes_a_solvable_task_and_names_an_unsolvable_one(
    tmp_path: Path, docker_engine: None
) -> None:
    tasks = tmp_path / "tasks"
    for name in ("write-answer", "wrong-answer"):
        shutil.copytree(TASKS / name, tasks / name)
    prefix = f"hvt-e2e-check-{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(
        app,
        ["sandbox", "check", "--config", str(check_config(tmp_path, prefix)), "--tasks", str(tasks),
         "--trials-dir", str(tmp_path / "trials")],
    )  # fmt: skip
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "oracle on 2 task(s) x 1 host(s): default (up to 2 at once)" in said
    assert "1 of 2 oracle trials got reward 1" in said
    assert "failed: wrong-answer on default: reward 0.0 (agent_completed)" in said
    assert "write-answer" in said and "1.00" in said
    only_good = tmp_path / "good"
    shutil.copytree(TASKS / "write-answer", only_good / "write-answer")
    ok = CliRunner().invoke(
        app,
        ["sandbox", "check", "--config", str(check_config(tmp_path, prefix)), "--tasks",
         str(only_good), "--trials-dir", str(tmp_path / "trials")],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "1 of 1 oracle trials got reward 1" in " ".join(ok.output.split())


def test_a_tasks_directory_without_tasks_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["sandbox", "check", "--config", str(check_config(tmp_path, "hvt-x")), "--tasks",
         str(tmp_path / "missing")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "not a directory" in result.output
