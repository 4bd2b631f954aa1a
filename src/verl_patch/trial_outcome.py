"""What a finished Harbor trial left on disk, read without importing Harbor.

A trial directory holds `result.json` (TrialResult: exception, phase timings, verifier
result), `verifier/reward.{json,txt}`, `agent/claude-code.txt` (claude-code's stream-json
transcript, whose last `result` event says why it stopped) and
`proxy/litellm-trajectory.jsonl` (the proxy's record of every model call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hvt.trajectory.paths import RECORD_DIR
from verl_patch import rewards
from verl_patch.termination import Termination, TrialFacts, classify
from verl_patch.trajectory_tokens import (
    TRAJECTORY_FILE,
    TrajectoryStats,
    calls_from_records,
    read_records,
)

CLAUDE_TRANSCRIPT = "claude-code.txt"
PHASES = ("environment_setup", "agent_setup", "agent_execution", "verifier")


@dataclass
class TrialReport:
    trial_dir: Path
    result: dict[str, Any] | None
    reward: rewards.Reward | rewards.RewardMissing
    exception_type: str | None
    exception_message: str | None
    agent_started: bool
    stop_subtype: str | None
    trajectory: TrajectoryStats
    tail_killed: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def has_reward(self) -> bool:
        return isinstance(self.reward, rewards.Reward)

    @property
    def reward_value(self) -> float:
        return self.reward.value if isinstance(self.reward, rewards.Reward) else 0.0

    def facts(self, truncated: bool = False) -> TrialFacts:
        return TrialFacts(
            exception_type=self.exception_type,
            agent_started=self.agent_started,
            has_reward=self.has_reward,
            stop_subtype=self.stop_subtype,
            context_overflow=self.trajectory.context_overflow,
            truncated=truncated,
            tail_killed=self.tail_killed,
        )

    @property
    def termination(self) -> Termination:
        return classify(self.facts())


def _seconds(timing: Any) -> float | None:
    if (
        not isinstance(timing, dict)
        or not timing.get("started_at")
        or not timing.get("finished_at")
    ):
        return None
    try:
        start = datetime.fromisoformat(str(timing["started_at"]))
        end = datetime.fromisoformat(str(timing["finished_at"]))
    except ValueError:
        return None
    return max(0.0, (end - start).total_seconds())


def claude_stop_subtype(transcript: Path) -> str | None:
    """The `subtype` of the last stream-json `result` event (success, error_max_turns, ...)."""
    if not transcript.is_file():
        return None
    subtype: str | None = None
    for line in transcript.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("type") == "result":
            subtype = str(event.get("subtype") or "") or None
    return subtype


def _reward_from_result(result: dict[str, Any], trial_dir: Path) -> rewards.Reward | None:
    verifier = result.get("verifier_result")
    values = verifier.get("rewards") if isinstance(verifier, dict) else None
    if isinstance(values, dict) and isinstance(values.get(rewards.REWARD_KEY), int | float):
        extra = {str(k): float(v) for k, v in values.items() if isinstance(v, int | float)}
        return rewards.Reward(float(values[rewards.REWARD_KEY]), trial_dir / "result.json", extra)
    return None


def read_trial(trial_dir: Path, tail_killed: bool = False) -> TrialReport:
    result: dict[str, Any] | None = None
    result_path = trial_dir / "result.json"
    if result_path.is_file():
        try:
            loaded = json.loads(result_path.read_text())
            result = loaded if isinstance(loaded, dict) else None
        except (OSError, json.JSONDecodeError):
            result = None
    reward = rewards.read_reward(trial_dir / "verifier")
    if isinstance(reward, rewards.RewardMissing) and result is not None:
        reward = _reward_from_result(result, trial_dir) or reward
    exception = (result or {}).get("exception_info") or {}
    timings = {
        phase: seconds
        for phase in PHASES
        if (seconds := _seconds((result or {}).get(phase))) is not None
    }
    agent_execution = (result or {}).get("agent_execution")
    stats = TrajectoryStats()
    calls_from_records(read_records(trial_dir / RECORD_DIR / TRAJECTORY_FILE, stats), stats)
    return TrialReport(
        trial_dir=trial_dir,
        result=result,
        reward=reward,
        exception_type=exception.get("exception_type") if isinstance(exception, dict) else None,
        exception_message=exception.get("exception_message")
        if isinstance(exception, dict)
        else None,
        agent_started=isinstance(agent_execution, dict) and bool(agent_execution.get("started_at")),
        stop_subtype=claude_stop_subtype(trial_dir / "agent" / CLAUDE_TRANSCRIPT),
        trajectory=stats,
        tail_killed=tail_killed,
        timings=timings,
    )
