"""Aborted calls in token assembly (verl_patch.trajectory_tokens), their effect on the rollout
(verl_patch.infra_failure, rollout_sample.version_range), and the weight versions a sequence
was sampled with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvt.trajectory.aborts import mark_record
from tests.unit.test_trajectory_tokens import record
from tests.unit.test_trajectory_tokens_sample import EOS, MESSAGES, sample, trial
from tests.unit.test_trajectory_tokens_sample import call as sample_call
from verl_patch import infra_failure
from verl_patch.rollout_sample import version_range
from verl_patch.termination import Termination
from verl_patch.trajectory_tokens import TrajectoryStats, assemble_exact, calls_from_records

ASK = [{"role": "user", "content": "fix the bug"}]
P0 = [1, 2, 3]
C_CUT = [40, 41]  # what the aborted call had sampled when the weights changed
C0 = [50, 51, 52, 99]  # the retry's answer (new weights)
P1 = P0 + C0 + [20, 21]
C1 = [53, 99]


def versioned(rec: dict[str, Any], version: int | None) -> dict[str, Any]:
    rec["weight_version"] = version
    return rec


def aborted(t: int, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return versioned(mark_record(record(t, P0, C_CUT, [-0.1, -0.2], messages=messages)), 3)


def later_turn() -> list[dict[str, Any]]:
    return [*ASK, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "b"}]


def test_a_retried_abort_assembles_into_the_chain_the_retry_continues() -> None:
    records = [
        aborted(1, ASK),
        versioned(record(2, P0, C0, [-0.5] * 4, messages=ASK), 4),
        versioned(record(3, P1, C1, [-0.5] * 2, messages=later_turn()), 4),
    ]
    stats = TrajectoryStats()
    seq = assemble_exact(calls_from_records(records, stats))
    assert seq is not None and seq.chains == 1 and seq.calls_used == 2
    assert seq.prompt_ids == P0
    assert seq.response_ids == [*C0, 20, 21, *C1]
    assert not set(C_CUT) & set(seq.response_ids)  # the partial answer is nowhere
    assert seq.response_mask == [1] * 4 + [0, 0] + [1, 1]
    assert seq.weight_versions == [4]
    assert (stats.aborted, stats.aborted_unretried, stats.failed, stats.infra_failed) == (
        1,
        0,
        0,
        0,
    )
    assert stats.weight_versions == {4}


def test_an_abort_never_asked_again_is_counted_and_never_spliced() -> None:
    """The client took the partial answer (or gave up): the next call's prompt extends the
    aborted call's prompt + partial tokens. That call starts a chain of its own (the partial
    tokens are not a sampled turn of any chain), and the abort counts as not retried."""
    torn_prompt = P0 + C_CUT + [20, 21]
    records = [
        aborted(1, ASK),
        versioned(record(2, torn_prompt, C1, [-0.5] * 2, messages=later_turn()), 3),
    ]
    stats = TrajectoryStats()
    seq = assemble_exact(calls_from_records(records, stats))
    assert seq is not None and seq.chains == 1 and seq.calls_used == 1
    assert seq.response_ids == C1 and seq.response_mask == [1, 1]
    assert (stats.aborted, stats.aborted_unretried) == (1, 1)


def test_only_an_abort_whose_request_comes_again_later_counts_as_retried() -> None:
    other = [{"role": "user", "content": "something else"}]
    records = [
        versioned(record(1, P0, C0, messages=ASK), 2),  # the same request, but earlier
        aborted(2, ASK),
        versioned(record(3, [7], [8], messages=other), 2),
    ]
    stats = TrajectoryStats()
    calls_from_records(records, stats)
    assert stats.aborted_unretried == 1
    stats = TrajectoryStats()
    calls_from_records([aborted(1, ASK), aborted(2, ASK), record(3, P0, C0, messages=ASK)], stats)
    assert (stats.aborted, stats.aborted_unretried) == (2, 0)


@dataclass
class Attempt:
    has_reward: bool = True
    termination: Termination = Termination.AGENT_COMPLETED
    exception_type: str | None = None


@dataclass
class Rollout:
    final: Attempt | None
    tail_killed: bool = False
    host_lost: str | None = None


def test_an_unretried_abort_keeps_the_rollout_out_of_the_loss_a_retried_one_does_not() -> None:
    done = Rollout(Attempt())
    assert infra_failure.classify(done, 0, aborted_unretried=0) is None
    reason = infra_failure.classify(done, 0, aborted_unretried=2)
    assert reason is not None and reason.startswith("aborted: 2 model call(s)")
    # the serving path's own failures are named first; a tail-killed rollout is the policy's
    assert str(infra_failure.classify(done, 1, aborted_unretried=1)).startswith("serving")
    assert infra_failure.classify(Rollout(Attempt(), tail_killed=True), 0, 1) is None


def test_verl_gets_the_reported_versions_else_the_sync_assumption() -> None:
    assert version_range([4, 3, 5], step=6) == (3, 5)
    assert version_range([], step=6) == (5, 5)  # vLLM reports none: step N runs on N - 1
    assert version_range([], step=0) == (0, 0)
    assert version_range([], step=None) == (0, 0)


def test_records_without_a_version_leave_the_sequence_without_one() -> None:
    records = [record(1, P0, C0, messages=ASK), versioned(record(2, P1, C1), None)]
    stats = TrajectoryStats()
    seq = assemble_exact(calls_from_records(records, stats))
    assert seq is not None and seq.weight_versions == [] and stats.weight_versions == set()


def test_a_trial_on_disk_trains_the_retry_or_is_left_out_with_its_versions(
    tmp_path: Path,
) -> None:
    """build_sample on a trial directory, as the agent loop runs it: a retried abort trains the
    retry's tokens and lists the version that served them; an unretried one is infra_failure."""
    cut = mark_record({**sample_call(1, [5, 6], [40, 41]), "weight_version": 3})
    retry = {**sample_call(2, [5, 6], [10, 11]), "weight_version": 4}
    follow = {**sample_call(3, [5, 6, 10, 11, 20], [12, EOS]), "weight_version": 5}
    follow["request"] = {"messages": [*MESSAGES, {"role": "tool", "content": "ok"}]}
    kept = sample(trial(tmp_path / "kept", [cut, retry, follow]))
    assert kept.response_ids == [10, 11, 20, 12, EOS] and kept.info["infra_failure"] is None
    assert kept.info["weight_versions"] == [4, 5]
    assert kept.metrics["model_calls_aborted"] == 1.0
    assert kept.metrics["model_calls_aborted_unretried"] == 0.0
    assert kept.metrics["model_calls_failed"] == 0.0
    left = sample(trial(tmp_path / "left", [cut, follow]))
    assert str(left.info["infra_failure"]).startswith("aborted: 1 model call(s)")
    assert left.metrics["model_calls_aborted_unretried"] == 1.0
