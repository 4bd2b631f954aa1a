"""`hvt launch --cpu-smoke`: the smoke's preparation reaches launch.run from the command line.

The run part may not import the smoke part (tests/unit/test_layout.py), so hvt/commands/run.py
hands launch.run the smoke's `prepare_inputs` as a callable, and launch.run calls it before the
preflight (which then checks the tiny model and the task index it made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from hvt.commands import run as commands_run
from hvt.config.model import RunConfig
from hvt.preflight.check import Check, Context, fail
from hvt.run import launch


def test_the_launch_command_hands_over_the_smoke_preparation_only_with_cpu_smoke(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_run(
        config_file: Path, *, cpu: bool, skip_preflight: bool, prepare: Any, ray_address: str
    ) -> int:
        assert ray_address == ""  # no --ray-address: launch starts its own Ray head
        seen.append((cpu, prepare))
        return 0

    seen: list[tuple[bool, Any]] = []
    monkeypatch.setattr(launch, "run", fake_run)
    for cpu, cpu_smoke in ((False, True), (True, False), (False, False)):
        with pytest.raises(typer.Exit):
            commands_run.launch(
                config=Path("c.yaml"), cpu=cpu, cpu_smoke=cpu_smoke, skip_preflight=True
            )
    # --cpu-smoke is --cpu plus the smoke's inputs; --cpu alone trains what the config names
    assert seen == [(True, commands_run._smoke_inputs), (True, None), (False, None)]


def test_launch_runs_the_preparation_before_the_preflight(
    filled_config_file: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def prepare(cfg: RunConfig) -> str:
        calls.append("prepare")
        return "tiny model made"

    def preflight(config_file: Path) -> tuple[list[Check], Context | None]:
        calls.append("preflight")
        return [fail("planted.check", "a planted failure", "none")], None

    monkeypatch.setattr(launch, "preflight", preflight)
    code = launch.run(filled_config_file, cpu=True, skip_preflight=False, prepare=prepare)
    assert code == 1  # the failed preflight refuses the launch before anything starts
    assert calls == ["prepare", "preflight"]
