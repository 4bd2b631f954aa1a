"""`hvt wandb-sync` without a key keeps offline runs where they are and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hvt.cli import app
from hvt.wandb_sync import offline_runs


def _offline_run(root: Path, name: str, synced: bool = False) -> Path:
    run = root / "wandb" / name
    run.mkdir(parents=True)
    (run / f"run-{name}.wandb").write_bytes(b"\x00records")
    if synced:
        (run / f"run-{name}.wandb.synced").write_text("")
    return run


def test_no_key_keeps_offline_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    empty = tmp_path / "wandb_api_key"
    empty.write_text("")
    monkeypatch.setenv("WANDB_API_KEY_FILE", str(empty))
    run = _offline_run(tmp_path, "offline-run-20261122_070000-abc123")
    result = CliRunner().invoke(app, ["wandb-sync", "--dir", str(tmp_path / "wandb"), "--once"])
    assert result.exit_code == 0, result.output
    assert "no W&B key" in result.output and "offline runs stay" in result.output
    assert (run / "run-offline-run-20261122_070000-abc123.wandb").read_bytes() == b"\x00records"


def test_only_unsynced_offline_runs_are_pending(tmp_path: Path) -> None:
    pending = _offline_run(tmp_path, "offline-run-1")
    _offline_run(tmp_path, "offline-run-2", synced=True)
    (tmp_path / "wandb" / "run-online-3").mkdir()
    assert offline_runs(tmp_path / "wandb") == [pending]
