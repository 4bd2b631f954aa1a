"""`hvt wandb-sync`: without a key it keeps offline runs where they are and says so; with one
it syncs in a loop (as compose runs it) and once more on SIGTERM.

A fake `wandb` on PATH stands in for the real CLI: it records each call and, like
`wandb sync`, leaves `<run>.wandb.synced` beside the run's data once it has synced it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hvt.cli import app
from hvt.run.wandb_sync import offline_runs

HVT = Path(sys.executable).with_name("hvt")

FAKE_WANDB = """\
import os, sys, time
from pathlib import Path

assert sys.argv[1] == "sync", sys.argv
run = Path(sys.argv[2])
with open(os.environ["FAKE_WANDB_LOG"], "a") as log:
    log.write(f"{run.name} key={os.environ.get('WANDB_API_KEY', '')}\\n")
while (run / "gate").exists():  # the test holds this sync until it removes the gate
    time.sleep(0.02)
for data in run.glob("*.wandb"):
    data.with_name(data.name + ".synced").write_text("")
"""


def _offline_run(root: Path, name: str, synced: bool = False) -> Path:
    run = root / "wandb" / name
    run.mkdir(parents=True)
    (run / f"run-{name}.wandb").write_bytes(b"\x00records")
    if synced:
        (run / f"run-{name}.wandb.synced").write_text("")
    return run


def _synced(run: Path) -> bool:
    return (run / f"run-{run.name}.wandb.synced").exists()


@pytest.fixture
def fake_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fake `wandb` first on PATH; returns the log of its calls (`<run> key=<key>`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "wandb"
    script.write_text(f"#!{sys.executable}\n{FAKE_WANDB}")
    script.chmod(0o755)
    log = tmp_path / "wandb-calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_WANDB_LOG", str(log))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return log


def _wait_for(what: str, cond: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not cond():
        if proc.poll() is not None:
            out, _ = proc.communicate()
            raise AssertionError(f"wandb-sync exited ({proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"timed out waiting for {what}:\n{out}")
        time.sleep(0.02)


def test_no_key_keeps_offline_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_wandb: Path
) -> None:
    empty = tmp_path / "wandb_api_key"
    empty.write_text("")
    monkeypatch.setenv("WANDB_API_KEY_FILE", str(empty))
    run = _offline_run(tmp_path, "offline-run-20261122_070000-abc123")
    result = CliRunner().invoke(app, ["wandb-sync", "--dir", str(tmp_path / "wandb"), "--once"])
    assert result.exit_code == 0, result.output
    assert "no W&B key" in result.output and "offline runs stay" in result.output
    assert fake_wandb.read_text() == "", "wandb sync ran without a key"
    assert not _synced(run)
    assert offline_runs(tmp_path / "wandb") == [run]  # still waiting for a key


def test_only_unsynced_offline_runs_are_pending(tmp_path: Path) -> None:
    pending = _offline_run(tmp_path, "offline-run-1")
    _offline_run(tmp_path, "offline-run-2", synced=True)
    (tmp_path / "wandb" / "run-online-3").mkdir()
    assert offline_runs(tmp_path / "wandb") == [pending]


def test_loop_syncs_new_runs_and_once_more_on_sigterm(tmp_path: Path, fake_wandb: Path) -> None:
    key_file = tmp_path / "wandb_api_key"
    key_file.write_text("k" * 40 + "\n")
    first = _offline_run(tmp_path, "offline-run-1")
    env = {**os.environ, "WANDB_API_KEY_FILE": str(key_file)}
    # as compose runs it (`hvt wandb-sync --dir ...`), with a short interval
    proc = subprocess.Popen(
        [str(HVT), "wandb-sync", "--dir", str(tmp_path / "wandb"), "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for("the first sync", lambda: _synced(first), proc)
        # A run that appears later is picked up by the loop; hold its sync open.
        second = _offline_run(tmp_path, "offline-run-2")
        (second / "gate").write_text("")
        _wait_for("the loop's next sync", lambda: "offline-run-2" in fake_wandb.read_text(), proc)
        # While that sync is held, a third run lands and the container is stopped: no periodic
        # pass can reach the third run any more, only the final sync.
        third = _offline_run(tmp_path, "offline-run-3")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        (second / "gate").unlink()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert all(_synced(run) for run in (first, second, third)), out
    calls = fake_wandb.read_text().splitlines()
    key = "k" * 40
    assert calls == [f"offline-run-{i} key={key}" for i in (1, 2, 3)], calls
    stopping = out.index("stopping: final sync")
    assert out.index(f"synced {third}") > stopping, out
    assert offline_runs(tmp_path / "wandb") == []
