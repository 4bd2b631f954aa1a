"""A finished rollout (trial dir on disk) -> the training sample the agent loop returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from verl_patch.harbor_trial import RolloutResult, step_dir_name, task_slug
from verl_patch.rollout_sample import build_sample
from verl_patch.termination import Termination
from verl_patch.trial_outcome import read_trial

EOS = 2
MESSAGES = [{"role": "user", "content": "fix it"}]


ROLE = {"user": 30, "assistant": 31}


def render(messages: list[dict[str, Any]], tools: Any, gen: bool) -> list[int]:
    """A stand-in chat template: <role> <content> <eos> per message, <assistant> to generate."""
    ids = [t for m in messages for t in (ROLE[m["role"]], 100 + len(m["content"]), EOS)]
    return ids + ([ROLE["assistant"]] if gen else [])


def _timing(a: str, b: str) -> dict[str, str]:
    return {"started_at": f"2026-11-22T06:00:{a}Z", "finished_at": f"2026-11-22T06:00:{b}Z"}


def trial(
    tmp_path: Path,
    records: list[dict[str, Any]] | None = None,
    reward: str | None = "1",
    exception: str | None = None,
    agent_started: bool = True,
    tail_killed: bool = False,
    attempts: int = 1,
) -> RolloutResult:
    d = tmp_path / "step_0001" / "task-0a1b2c3d"
    (d / "agent").mkdir(parents=True)
    (d / "proxy").mkdir()
    result = {
        "exception_info": {"exception_type": exception, "exception_message": "x"}
        if exception
        else None,
        "environment_setup": _timing("00", "03"),
        "agent_execution": _timing("03", "13") if agent_started else None,
        "verifier": _timing("13", "14"),
    }
    (d / "result.json").write_text(json.dumps(result))
    if reward is not None:
        (d / "verifier").mkdir()
        (d / "verifier" / "reward.txt").write_text(reward)
    if records:
        (d / "proxy" / "litellm-trajectory.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records)
        )
    out = RolloutResult("task-0a1b2c3d", tail_killed=tail_killed, wall_sec=15.0, queued_sec=1.0)
    out.attempts = [read_trial(d, tail_killed=tail_killed)] * attempts
    return out


def call(t: int, prompt: list[int], completion: list[int]) -> dict[str, Any]:
    return {
        "success": True,
        "request_time": t,
        "request": {"messages": MESSAGES},
        "tokens": {
            "prompt_token_ids": prompt,
            "choices": [
                {"token_ids": completion, "logprobs": [{"logprob": -0.5} for _ in completion]}
            ],
        },
    }


def sample(result: RolloutResult, max_prompt: int = 100, max_response: int = 100) -> Any:
    return build_sample(
        result,
        render=render,
        messages=MESSAGES,
        max_prompt=max_prompt,
        max_response=max_response,
        eos_id=EOS,
    )


def test_exact_tokens_reward_and_metrics(tmp_path: Path) -> None:
    records = [call(1, [5, 6], [10, 11]), call(2, [5, 6, 10, 11, 20], [12, EOS])]
    s = sample(trial(tmp_path, records))
    assert (s.prompt_ids, s.response_ids) == ([5, 6], [10, 11, 20, 12, EOS])
    assert s.response_mask == [1, 1, 0, 1, 1]
    assert s.response_logprobs == [-0.5, -0.5, 0.0, -0.5, -0.5]
    assert s.reward == 1.0 and s.termination is Termination.AGENT_COMPLETED
    assert s.num_turns == 2
    m = s.metrics
    assert m["termination/agent_completed"] == 1.0 and m["termination/overlong"] == 0.0
    assert m["tokens_exact"] == 1.0 and m["tokens_fallback"] == 0.0 and m["trainable"] == 1.0
    assert m["time/agent_execution"] == 10.0 and m["time/rollout"] == 15.0
    assert m["model_calls"] == 2.0
    assert s.info["termination"] == "agent_completed"


def test_truncation_makes_it_overlong(tmp_path: Path) -> None:
    s = sample(trial(tmp_path, [call(1, [5, 6, 7], [10, 11, 12, 13])]), max_response=3)
    assert s.response_ids == [10, 11, 12] and s.termination is Termination.OVERLONG
    assert s.reward == 1.0  # the real reward is kept


def test_template_fallback_is_counted(tmp_path: Path) -> None:
    record = {
        "success": True,
        "request_time": 1,
        "request": {"messages": MESSAGES},
        "tokens_status": "missing",
        "tokens": {"prompt_token_ids": None, "choices": [{"token_ids": None}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "done!"}}]},
    }
    s = sample(trial(tmp_path, [record]))
    assert s.metrics["tokens_fallback"] == 1.0 and s.metrics["tokens_exact"] == 0.0
    assert s.prompt_ids == [30, 106, EOS, 31]
    assert s.response_ids == [105, EOS] and s.response_mask == [1, 1]


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(None, id="no-trajectory"),
        # calls the proxy logged before setup gave up: trainable tokens, so only the
        # env_setup_failed masking keeps them out of the gradient
        pytest.param([call(1, [5, 6], [10, 11])], id="calls-logged"),
    ],
)
def test_setup_failure_gives_a_masked_placeholder(
    tmp_path: Path, records: list[dict[str, Any]] | None
) -> None:
    failed = sample(
        trial(
            tmp_path,
            records,
            reward=None,
            exception="AgentSetupTimeoutError",
            agent_started=False,
            attempts=3,
        )
    )
    assert failed.termination is Termination.ENV_SETUP_FAILED
    assert failed.prompt_ids == [30, 106, EOS, 31]
    assert (failed.response_ids, failed.response_mask) == ([EOS], [0])
    assert failed.response_logprobs == [0.0] and failed.num_turns == 0
    assert failed.reward == 0.0 and failed.metrics["attempts"] == 3.0
    assert failed.metrics["trainable"] == 0.0 and failed.metrics["has_verifier_result"] == 0.0
    assert failed.metrics["tokens_exact"] == 0.0 and failed.metrics["model_calls"] == 0.0
    # an infrastructure failure: the agent loop raises it, verl leaves it out of its group
    assert failed.info["infra_failure"] == "sandbox: never started (AgentSetupTimeoutError)"
    assert failed.metrics["infra_failure"] == 1.0


def failed_call(t: int, status: int | None, error_type: str) -> dict[str, Any]:
    return {
        "success": False,
        "request_time": t,
        "failure": {"status_code": status, "error_type": error_type, "message": "x"},
    }


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        pytest.param((503, "ServiceUnavailableError"), "serving: 1 model call(s)", id="503"),
        pytest.param((None, "APIConnectionError"), "serving: 1 model call(s)", id="conn"),
        pytest.param((504, "Timeout"), "serving: 1 model call(s)", id="504"),
        # what the policy sent can cause these: its own outcome, trained on
        pytest.param((500, "InternalServerError"), None, id="500"),
        pytest.param((400, "BadRequestError"), None, id="400"),
    ],
)
def test_serving_failures_are_infrastructure_but_not_500_or_4xx(
    tmp_path: Path, failure: tuple[int | None, str], reason: str | None
) -> None:
    records = [call(1, [5, 6], [10, 11]), failed_call(2, *failure)]
    s = sample(trial(tmp_path, records, reward="0"))  # the verifier ran: reward 0
    got = s.info["infra_failure"]
    assert (got or None) == reason if reason is None else got.startswith(reason)


def test_a_lost_host_is_infrastructure_only_without_a_verifier_result(tmp_path: Path) -> None:
    lost = trial(tmp_path / "a", [call(1, [5], [9])], reward=None, exception="RuntimeError")
    lost.host_lost = "tcp://sandbox-a:2376 health check failed: ConnectionError"
    assert sample(lost).info["infra_failure"] == (
        "host_lost: tcp://sandbox-a:2376 health check failed: ConnectionError"
    )
    done = trial(tmp_path / "b", [call(1, [5], [9])], reward="1")
    done.host_lost = "tcp://sandbox-a:2376 health check failed: ConnectionError"
    assert sample(done).info["infra_failure"] is None  # it finished and was scored: trained
    # the policy's own failure (no reward, host fine) is not an infrastructure failure
    own = trial(tmp_path / "c", [call(1, [5], [9])], reward=None, exception="RuntimeError")
    assert sample(own).info["infra_failure"] is None


def test_tail_kill_keeps_what_it_sampled(tmp_path: Path) -> None:
    killed = sample(
        trial(
            tmp_path,
            [call(1, [5], [9, 9])],
            reward=None,
            exception="CancelledError",
            tail_killed=True,
        )
    )
    assert killed.termination is Termination.TIMEOUT and killed.metrics["tail_killed"] == 1.0
    assert killed.response_ids == [9, 9] and killed.reward == 0.0  # what it sampled, reward 0
    assert killed.info["infra_failure"] is None  # too slow is the policy's own outcome


def test_names() -> None:
    assert step_dir_name(7) == "step_0007"
    assert step_dir_name(12, "val") == "val_step_0012"
    assert step_dir_name(None) == "step_none"
    assert task_slug("/data/tasks/Django__Django-11099/") == "django-django-11099"
