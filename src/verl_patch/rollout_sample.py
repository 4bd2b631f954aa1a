"""A finished rollout -> the training sample (token arrays, reward, termination, metrics).
No verl import: `agent_loop` wraps the result into verl's AgentLoopOutput.

* tokens: the exact ids from the proxy's trajectory (`trajectory_tokens`), else the chat
  template fallback (counted: metric `tokens_fallback`), cut to the rollout's prompt/response
  lengths (then the termination is `overlong`);
* a rollout that failed for an infrastructure reason (sandbox never started, host lost, the
  serving path failed: `infra_failure.classify`) is marked `infra_failure`; the agent loop then
  raises it, so verl leaves it out of the loss and of its group's statistics;
* any other rollout with nothing to train on (tail-killed before its first model call, no
  successful call at all) gets the task prompt and a single end-of-sequence token with mask 0:
  it adds nothing to the gradient but keeps its place (and reward 0) in its group;
* reward: the verifier's, else 0.0;
* weight versions: the global steps of the weights that served the calls the sample's tokens
  come from (`info["weight_versions"]`), where the replica reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hvt.trajectory.paths import RECORD_DIR
from verl_patch import infra_failure
from verl_patch.harbor_trial import RolloutResult
from verl_patch.termination import Termination, classify
from verl_patch.trajectory_tokens import Render, TokenSequence, TrajectoryStats, fit, from_trial_dir

NO_TOKENS = (Termination.ENV_SETUP_FAILED,)


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    reward: float
    termination: Termination
    num_turns: int
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def version_range(weight_versions: list[int], step: int | None) -> tuple[int, int]:
    """The (oldest, newest) weight version that served a sample, for verl's staleness metrics
    (`min_global_steps`/`max_global_steps`). From the versions the replica reported per call;
    where it reports none (vLLM), the version a sync step is served by: step N's rollouts run
    on the weights of step N - 1 (under colocate_async that is the version at submission)."""
    if weight_versions:
        return min(weight_versions), max(weight_versions)
    version = max(0, step - 1) if step is not None else 0
    return version, version


def _placeholder(
    render: Render | None, messages: list[dict[str, Any]] | None, eos_id: int, max_prompt: int
) -> TokenSequence:
    prompt = render(messages, None, True) if (render is not None and messages) else [eos_id]
    return TokenSequence(
        prompt_ids=list(prompt)[-max_prompt:],
        response_ids=[eos_id],
        response_mask=[0],
        response_logprobs=[0.0],
        exact=False,
        num_turns=0,
    )


def build_sample(
    result: RolloutResult,
    *,
    render: Render | None,
    messages: list[dict[str, Any]] | None,
    max_prompt: int,
    max_response: int,
    eos_id: int,
) -> Sample:
    final = result.final
    if final is None:
        raise ValueError(f"rollout {result.rollout_id} has no attempt")
    stats = TrajectoryStats()
    seq = None
    if final.termination not in NO_TOKENS:
        seq = from_trial_dir(final.trial_dir / RECORD_DIR, render, stats)
    trainable = seq is not None and any(seq.response_mask)
    if seq is None or not seq.response_ids:
        seq = _placeholder(render, messages, eos_id, max_prompt)
    fit(seq, max_prompt, max_response)
    termination = classify(final.facts(truncated=seq.truncated))
    reward = final.reward_value
    infra = infra_failure.classify(
        result, final.trajectory.infra_failed, final.trajectory.aborted_unretried
    )
    metrics: dict[str, float] = {
        f"termination/{t.value}": float(t is termination) for t in Termination
    }
    metrics |= {
        "reward": reward,
        "has_verifier_result": float(final.has_reward),
        "attempts": float(len(result.attempts)),
        "tail_killed": float(result.tail_killed),
        "trainable": float(trainable),
        "model_calls": float(stats.succeeded),
        "model_calls_failed": float(stats.failed),
        "model_calls_aborted": float(stats.aborted),
        "model_calls_aborted_unretried": float(stats.aborted_unretried),
        "infra_failure": float(infra is not None),
        "time/queued": round(result.queued_sec, 3),
        "time/rollout": round(result.wall_sec, 3),
        **{f"time/{phase}": seconds for phase, seconds in final.timings.items()},
        **seq.metrics(),
    }
    if not trainable:
        metrics["tokens_exact"] = metrics["tokens_fallback"] = 0.0
    info = {
        "rollout_id": result.rollout_id,
        "trial_dir": str(final.trial_dir),
        "sandbox_hosts": list(result.hosts),  # each attempt's host ("default": no fleet)
        "termination": termination.value,
        "infra_failure": infra,  # a reason: the sample is left out of the loss (infra_failure.py)
        # the global steps of the weights that sampled the trained tokens (as the replica
        # reported them per call; [] where it reports none, e.g. vLLM)
        "weight_versions": list(seq.weight_versions),
        "exception": final.exception_type,
        "reward_extra": dict(getattr(final.reward, "extra", {}) or {}),
    }
    return Sample(
        prompt_ids=seq.prompt_ids,
        response_ids=seq.response_ids,
        response_mask=seq.response_mask,
        response_logprobs=seq.response_logprobs,
        reward=reward,
        termination=termination,
        num_turns=seq.num_turns,
        metrics=metrics,
        info=info,
    )
