"""The lock files are up to date with their inputs (pyproject.toml and locks/*.in)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hvt.lockfile import read_inputs, read_pins, unsatisfied

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.parametrize("venv", ["trainer", "proxy"])
def test_lock_satisfies_its_inputs(venv: str) -> None:
    pins = read_pins(ROOT / "locks" / f"{venv}.lock")
    inputs = [*RUNTIME, *read_inputs(ROOT / "locks" / f"{venv}.in")]
    problems = unsatisfied(inputs, pins)
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


@pytest.mark.parametrize("venv", ["trainer", "proxy"])
def test_overrides_are_applied(venv: str) -> None:
    pins = read_pins(ROOT / "locks" / f"{venv}.lock")
    for name, version in read_pins(ROOT / "locks" / "overrides.txt").items():
        assert pins.get(name) == version, f"{name}: override {version}, lock {pins.get(name)}"


def test_known_good_trainer_set() -> None:
    pins = read_pins(ROOT / "locks" / "trainer.lock")
    expected = {"verl": "0.9.1", "vllm": "0.24.0", "torch": "2.11.0", "transformers": "5.9.0",
                "harbor": "0.25.0", "ray": "2.60.0"}  # fmt: skip
    assert {k: pins.get(k) for k in expected} == expected
    for name in ("docker", "kubernetes", "wandb", "cachetools"):
        assert name in pins
    proxy = read_pins(ROOT / "locks" / "proxy.lock")
    assert (proxy["litellm"], proxy["rich"]) == ("1.108.7", "13.9.4")
    assert "harbor" not in proxy


def test_every_pin_carries_a_hash() -> None:
    for lock in ("trainer.lock", "proxy.lock", "uv.lock"):
        text = (ROOT / "locks" / lock).read_text()
        assert text.count("==") <= text.count("--hash=sha256:"), lock


def test_unsatisfied_names_the_stale_requirement() -> None:
    assert unsatisfied(["rich>=14.1", "absent"], {"rich": "13.9.4"}) == [
        "rich>=14.1: the lock pins 13.9.4",
        "absent: not in the lock",
    ]
    assert unsatisfied(["pywin32; sys_platform == 'win32'"], {}) == []
