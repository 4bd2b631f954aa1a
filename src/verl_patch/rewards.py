"""The verifier's reward for a trial: `verifier/reward.json`, else `verifier/reward.txt`.

Same precedence as Harbor's verifier: reward.json (an object of finite numbers) wins over
reward.txt (one number). The training reward is the `reward` key, or the only key when
reward.json has exactly one. Anything else is a malformed result: it counts as "no verifier
result" (the trial may be retried) and the reason names the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

JSON_NAME = "reward.json"
TEXT_NAME = "reward.txt"
REWARD_KEY = "reward"


@dataclass(frozen=True)
class Reward:
    value: float
    source: Path
    extra: dict[str, float] = field(default_factory=dict)  # every number reward.json gave


@dataclass(frozen=True)
class RewardMissing:
    reason: str


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_json(path: Path) -> Reward | RewardMissing:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return RewardMissing(f"{path}: not valid JSON ({exc})")
    if not isinstance(data, dict) or not data:
        return RewardMissing(f"{path}: expected a non-empty object of numbers")
    numbers: dict[str, float] = {}
    for key, value in data.items():
        number = _number(value)
        if number is None:
            return RewardMissing(f"{path}: {key!r} is {value!r}, not a finite number")
        numbers[str(key)] = number
    if REWARD_KEY in numbers:
        return Reward(numbers[REWARD_KEY], path, numbers)
    if len(numbers) == 1:
        return Reward(next(iter(numbers.values())), path, numbers)
    return RewardMissing(
        f"{path}: several metrics ({', '.join(sorted(numbers))}) but no {REWARD_KEY!r} key"
    )


def parse_text(path: Path) -> Reward | RewardMissing:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return RewardMissing(f"{path}: unreadable ({exc})")
    try:
        number = _number(float(text))
    except ValueError:
        number = None
    if number is None:
        return RewardMissing(f"{path}: {text[:80]!r} is not a finite number")
    return Reward(number, path, {REWARD_KEY: number})


def read_reward(verifier_dir: Path) -> Reward | RewardMissing:
    """The reward the verifier wrote into `verifier_dir` (a trial's `verifier/`)."""
    json_path = verifier_dir / JSON_NAME
    if json_path.is_file():
        return parse_json(json_path)
    text_path = verifier_dir / TEXT_NAME
    if text_path.is_file():
        return parse_text(text_path)
    return RewardMissing(f"{verifier_dir}: neither {JSON_NAME} nor {TEXT_NAME} was written")
