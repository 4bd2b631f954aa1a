"""`hvt tasks index`: Harbor task dirs -> the parquet rows verl and the agent loop read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from hvt.cli import app
from hvt.run.tasks_index import TaskIndexError, discover, rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
runner = CliRunner()


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    root = tmp_path / "tasks"
    shutil.copytree(FIXTURES, root)
    (root / ".git").mkdir()  # hidden directories are not tasks
    (root / "README.md").write_text("not a task")
    return root


def test_index_writes_the_rows_verl_reads(tasks: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx" / "train.parquet"
    result = runner.invoke(app, ["tasks", "index", str(tasks), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 train task(s)" in result.output
    table = pq.read_table(out).to_pylist()
    names = [r["extra_info"]["instance_id"] for r in table]
    assert names == ["check-runtime", "slow-answer", "write-answer", "wrong-answer"]
    first = table[2]
    assert first["agent_name"] == "harbor_claude_code"
    assert first["prompt"] == [
        {"role": "user", "content": (tasks / "write-answer" / "instruction.md").read_text()}
    ]
    assert first["extra_info"] == {
        "index": 2,
        "instance_id": "write-answer",
        "harbor_task_path": str((tasks / "write-answer").resolve()),
        "split": "train",
    }
    assert first["reward_model"]["style"] == "harbor_verifier"
    assert not list(out.parent.glob(".*tmp"))  # atomic write leaves nothing behind


def test_val_split_root_as_limit_and_shuffle(tasks: Path, tmp_path: Path) -> None:
    out = tmp_path / "val.parquet"
    args = ["tasks", "index", str(tasks), "-o", str(out), "--split", "val"]
    args += ["--root-as", "/data/tasks", "--limit", "1", "--shuffle-seed", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = pq.read_table(out).to_pylist()
    name = row["extra_info"]["instance_id"]
    assert row["extra_info"]["harbor_task_path"] == f"/data/tasks/{name}"
    assert row["extra_info"]["split"] == "val"


def test_a_broken_task_is_named_and_nothing_is_written(tasks: Path, tmp_path: Path) -> None:
    (tasks / "wrong-answer" / "instruction.md").unlink()
    broken = tasks / "no-env"
    shutil.copytree(tasks / "write-answer", broken)
    (broken / "environment" / "Dockerfile").unlink()
    out = tmp_path / "train.parquet"
    result = runner.invoke(app, ["tasks", "index", str(tasks), "-o", str(out)])
    assert result.exit_code == 2
    assert "no-env: neither environment/Dockerfile nor [environment].docker_image" in result.output
    assert "wrong-answer: no instruction.md" in result.output
    assert not out.exists()


def test_bad_task_toml_and_missing_dir(tmp_path: Path) -> None:
    root = tmp_path / "tasks"
    shutil.copytree(FIXTURES / "write-answer", root / "t1")
    (root / "t1" / "task.toml").write_text("[environment\n")
    with pytest.raises(TaskIndexError, match=r"t1: task\.toml does not parse"):
        discover(root)
    with pytest.raises(TaskIndexError, match="not a directory"):
        discover(tmp_path / "nope")
    (root / "t1").rename(tmp_path / "elsewhere")
    with pytest.raises(TaskIndexError, match="no task directories"):
        discover(root)


def test_unknown_split_is_refused() -> None:
    with pytest.raises(TaskIndexError, match="--split 'test'"):
        rows(discover(FIXTURES), split="test")
