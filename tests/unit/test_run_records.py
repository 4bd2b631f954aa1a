"""Run records: the append-only ledger and per-run archives; launch's lock and names."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from hvt.config.model import RunConfig
from hvt.config.run_paths import RunPaths
from hvt.run import records as run_records
from hvt.run.launch import LaunchError, RunLock, auto_exp_name, resolve_exp_name, tee
from tests.conftest import filled_config


@pytest.fixture
def paths(tmp_path: Path) -> RunPaths:
    return RunPaths(tmp_path / "wd", "proj", "exp")


def test_ledger_is_append_only_and_ids_increase(tmp_path: Path, paths: RunPaths) -> None:
    config = tmp_path / "config.yaml"
    data = filled_config(**{"runtime_info.input.credentials.wandb_api_key": "sk-live-abcdef123"})
    config.write_text(yaml.safe_dump(data))
    t0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    first = run_records.record(paths, config, "exp-a", 0, t0, t0 + timedelta(minutes=5))
    before = (paths.artifacts / "index.yaml").read_bytes()
    second = run_records.record(paths, config, "exp-b", 130, t0, t0 + timedelta(minutes=1))
    third = run_records.record(paths, config, "exp-c", 1, t0, t0 + timedelta(seconds=3))
    after = (paths.artifacts / "index.yaml").read_bytes()
    assert after.startswith(before), "the ledger must only grow"
    assert [first.run_id, second.run_id, third.run_id] == ["run_001", "run_002", "run_003"]
    entries = run_records.ledger(paths)
    assert [e["status"] for e in entries] == ["completed", "interrupted", "failed"]
    assert entries[0]["duration_s"] == 300
    archived = yaml.safe_load((first.archive / "config.yaml").read_text())
    creds = archived["runtime_info"]["input"]["credentials"]
    assert creds["wandb_api_key"] == "<redacted>"
    run = yaml.safe_load((first.archive / "run.yaml").read_text())
    assert run["exp_name"] == "exp-a" and "repos" in run


def test_status_mapping() -> None:
    assert run_records.status_for(0) == "completed"
    assert run_records.status_for(-15) == "interrupted"
    assert run_records.status_for(143) == "interrupted"
    assert run_records.status_for(2) == "failed"


def test_second_launch_on_the_same_workdir_is_refused(paths: RunPaths) -> None:
    lock_file = paths.state / "launch.lock"
    with RunLock.acquire(paths) as held:
        held.note("exp-1")
        holder = lock_file.read_text()
        assert holder.endswith(", exp exp-1\n")
        with pytest.raises(LaunchError, match=r"already running .*exp exp-1"):
            RunLock.acquire(paths)
        assert lock_file.read_text() == holder, "a refused launch leaves the holder line"
    assert lock_file.read_text() == ""
    with RunLock.acquire(paths):  # released: the next run may start
        pass


def test_auto_name_is_persisted_until_the_run_completes(paths: RunPaths) -> None:
    cfg = RunConfig.model_validate(filled_config())
    name = resolve_exp_name(cfg, paths)
    assert name.startswith("harbor-cc-sync-1n-")
    assert resolve_exp_name(cfg, paths) == name, "a restart must resume the same experiment"
    named = RunConfig.model_validate(
        filled_config(**{"runtime_info.input.experiment.exp_name": "mine"})
    )
    assert resolve_exp_name(named, paths) == "mine"
    cfg = RunConfig.model_validate(filled_config())
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert auto_exp_name(cfg, when) == "harbor-cc-sync-1n-20260102-030405"
    async_cfg = RunConfig.model_validate(
        filled_config(**{"runtime_info.input.training.mode": "colocate_async"})
    )
    assert auto_exp_name(async_cfg, when).startswith("harbor-cc-colocate-async-1n-")


def test_tee_splits_throughput_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main, vllm = tmp_path / "exp.log", tmp_path / "exp_vllm.log"
    stream = io.StringIO(
        "step:1 - actor/entropy:0.5\n"
        "(vllm pid=3) Avg prompt throughput: 1200.0 tokens/s, Avg generation throughput: 80.1\n"
        "INFO other\n"
    )
    tee(stream, main, vllm)
    assert len(main.read_text().splitlines()) == 3
    assert vllm.read_text().splitlines() == [
        "(vllm pid=3) Avg prompt throughput: 1200.0 tokens/s, Avg generation throughput: 80.1"
    ]
    assert "step:1" in capsys.readouterr().out
