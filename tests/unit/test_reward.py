"""The verifier's reward: reward.json (precedence), else reward.txt; malformed means missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verl_patch.rewards import Reward, RewardMissing, read_reward


def _write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d


def test_reward_txt(tmp_path: Path) -> None:
    r = read_reward(_write(tmp_path, "reward.txt", "1\n"))
    assert isinstance(r, Reward)
    assert r.value == 1.0
    assert r.source.name == "reward.txt"


def test_reward_json_wins_over_txt(tmp_path: Path) -> None:
    _write(tmp_path, "reward.txt", "1")
    _write(tmp_path, "reward.json", json.dumps({"reward": 0.25, "tests_passed": 3}))
    r = read_reward(tmp_path)
    assert isinstance(r, Reward)
    assert (r.value, r.source.name) == (0.25, "reward.json")
    assert r.extra == {"reward": 0.25, "tests_passed": 3.0}


def test_reward_json_single_key_is_the_reward(tmp_path: Path) -> None:
    r = read_reward(_write(tmp_path, "reward.json", '{"pass_rate": 0.5}'))
    assert isinstance(r, Reward)
    assert r.value == 0.5


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("reward.json", "{not json", "not valid JSON"),
        ("reward.json", "[1]", "non-empty object"),
        ("reward.json", "{}", "non-empty object"),
        ("reward.json", '{"reward": "1"}', "not a finite number"),
        ("reward.json", '{"reward": true}', "not a finite number"),
        ("reward.json", '{"reward": NaN}', "not a finite number"),
        ("reward.json", '{"a": 1, "b": 0}', "no 'reward' key"),
        ("reward.txt", "passed", "not a finite number"),
        ("reward.txt", "inf", "not a finite number"),
        ("reward.txt", "", "not a finite number"),
    ],
)
def test_malformed_rewards_are_missing_and_name_the_file(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    r = read_reward(_write(tmp_path, name, text))
    assert isinstance(r, RewardMissing)
    assert fragment in r.reason
    assert name in r.reason


def test_no_reward_file(tmp_path: Path) -> None:
    r = read_reward(tmp_path / "verifier")
    assert isinstance(r, RewardMissing)
    assert "neither reward.json nor reward.txt" in r.reason
