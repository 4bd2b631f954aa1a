"""Termination taxonomy, the retry rule, and reading a trial directory into facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from verl_patch.termination import Termination, TrialFacts, classify, should_retry
from verl_patch.trial_outcome import claude_stop_subtype, read_trial

T = Termination


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (TrialFacts(agent_started=True, has_reward=True), T.AGENT_COMPLETED),
        (
            TrialFacts(
                agent_started=True, has_reward=True, exception_type="NonZeroAgentExitCodeError"
            ),
            T.AGENT_COMPLETED,
        ),
        (
            TrialFacts(agent_started=True, has_reward=True, stop_subtype="success"),
            T.AGENT_COMPLETED,
        ),
        (
            TrialFacts(agent_started=True, has_reward=True, stop_subtype="error_max_turns"),
            T.MAX_TURNS_REACHED,
        ),
        (TrialFacts(agent_started=True, exception_type="AgentTimeoutError"), T.TIMEOUT),
        (
            TrialFacts(agent_started=True, has_reward=False, exception_type="VerifierTimeoutError"),
            T.TIMEOUT,
        ),
        (TrialFacts(tail_killed=True), T.TIMEOUT),
        (TrialFacts(agent_started=True, has_reward=True, tail_killed=True), T.TIMEOUT),
        (TrialFacts(exception_type="EnvironmentStartTimeoutError"), T.ENV_SETUP_FAILED),
        (TrialFacts(exception_type="AgentSetupTimeoutError"), T.ENV_SETUP_FAILED),
        (TrialFacts(exception_type="RuntimeError"), T.ENV_SETUP_FAILED),
        (TrialFacts(), T.ENV_SETUP_FAILED),
        (
            TrialFacts(agent_started=True, has_reward=True, context_overflow=True),
            T.OVERLONG,
        ),
        (TrialFacts(agent_started=True, has_reward=True, truncated=True), T.OVERLONG),
        (
            TrialFacts(agent_started=True, exception_type="ContextWindowExceededError"),
            T.OVERLONG,
        ),
        # overlong outranks the turn limit: the sequence is what gets trained
        (
            TrialFacts(
                agent_started=True, has_reward=True, truncated=True, stop_subtype="error_max_turns"
            ),
            T.OVERLONG,
        ),
    ],
)
def test_classify(facts: TrialFacts, expected: Termination) -> None:
    assert classify(facts) is expected


@pytest.mark.parametrize(
    ("termination", "has_reward", "attempt", "max_retries", "expected"),
    [
        (T.ENV_SETUP_FAILED, False, 0, 2, True),
        (T.ENV_SETUP_FAILED, False, 2, 2, False),  # retries used up
        (T.AGENT_COMPLETED, False, 0, 2, True),  # the verifier crashed: no result
        (T.AGENT_COMPLETED, True, 0, 2, False),  # a result, even reward 0, is final
        (T.MAX_TURNS_REACHED, True, 0, 2, False),
        (T.TIMEOUT, False, 0, 2, False),
        (T.OVERLONG, False, 0, 2, False),
        (T.ENV_SETUP_FAILED, False, 0, 0, False),
    ],
)
def test_retry_only_without_a_verifier_result(
    termination: Termination, has_reward: bool, attempt: int, max_retries: int, expected: bool
) -> None:
    assert should_retry(termination, has_reward, attempt, max_retries) is expected


def _timing(start: str, end: str) -> dict[str, str]:
    return {"started_at": f"2026-11-22T05:00:{start}Z", "finished_at": f"2026-11-22T05:00:{end}Z"}


def _trial(
    tmp_path: Path, result: dict[str, Any] | None, files: dict[str, str] | None = None
) -> Path:
    trial = tmp_path / "step_0001" / "task-abc12345"
    trial.mkdir(parents=True)
    if result is not None:
        (trial / "result.json").write_text(json.dumps(result))
    for name, text in (files or {}).items():
        path = trial / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return trial


def test_read_a_completed_trial(tmp_path: Path) -> None:
    transcript = "\n".join(
        [
            json.dumps({"type": "system", "subtype": "init"}),
            "not json at all",
            json.dumps({"type": "assistant", "message": {"content": "result"}}),
            json.dumps({"type": "result", "subtype": "success", "num_turns": 3}),
        ]
    )
    trial = _trial(
        tmp_path,
        {
            "exception_info": None,
            "environment_setup": _timing("00", "04.5"),
            "agent_execution": _timing("05", "15"),
            "verifier": _timing("15", "16"),
            "verifier_result": {"rewards": {"reward": 1}},
        },
        {"verifier/reward.txt": "1", "agent/claude-code.txt": transcript},
    )
    report = read_trial(trial)
    assert report.has_reward and report.reward_value == 1.0
    assert report.agent_started and report.exception_type is None
    assert report.stop_subtype == "success"
    assert report.termination is T.AGENT_COMPLETED
    assert report.timings == {"environment_setup": 4.5, "agent_execution": 10.0, "verifier": 1.0}


def test_read_a_trial_whose_sandbox_never_started(tmp_path: Path) -> None:
    trial = _trial(
        tmp_path,
        {
            "exception_info": {
                "exception_type": "RuntimeError",
                "exception_message": "Docker compose command failed",
            },
            "environment_setup": _timing("00", "02"),
            "agent_execution": None,
            "verifier_result": None,
        },
    )
    report = read_trial(trial)
    assert not report.has_reward and report.reward_value == 0.0
    assert report.termination is T.ENV_SETUP_FAILED
    assert report.exception_message == "Docker compose command failed"


def test_verifier_result_in_result_json_when_files_are_missing(tmp_path: Path) -> None:
    trial = _trial(
        tmp_path,
        {"agent_execution": _timing("00", "01"), "verifier_result": {"rewards": {"reward": 0.5}}},
    )
    report = read_trial(trial)
    assert report.has_reward and report.reward_value == 0.5


def test_context_overflow_from_a_failed_proxied_call(tmp_path: Path) -> None:
    records = [
        {"success": True, "request_time": 1, "tokens": {"prompt_token_ids": [1], "choices": []}},
        {
            "success": False,
            "request_time": 2,
            "failure": {
                "status_code": 400,
                "message": "This model's maximum context length is 32768 tokens",
            },
        },
    ]
    trial = _trial(
        tmp_path,
        {"agent_execution": _timing("00", "01")},
        {
            "proxy/litellm-trajectory.jsonl": "\n".join(json.dumps(r) for r in records) + "\n",
            "verifier/reward.txt": "0",
        },
    )
    report = read_trial(trial)
    assert report.trajectory.context_overflow
    assert report.trajectory.failed == 1
    assert report.termination is T.OVERLONG


def test_stop_subtype_of_a_max_turns_transcript(tmp_path: Path) -> None:
    path = tmp_path / "claude-code.txt"
    path.write_text(
        json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True}) + "\n"
    )
    assert claude_stop_subtype(path) == "error_max_turns"
    assert claude_stop_subtype(tmp_path / "missing.txt") is None
