"""Rollouts that failed for infrastructure reasons, kept out of the policy loss.

A sample whose sandbox never started, whose sandbox host was lost, or whose model calls failed
in the serving path says nothing about the policy's answer. Training on it with reward 0 is
wrong twice: the sample itself pushes the policy away from an answer it never got to give, and
under GRPO/GSPO it lowers its group's mean and std, so the other samples' advantages are wrong
too. Such a rollout is classified here (no verl import), recorded in `rollouts.jsonl`
(`infra_failure`) and then raised as `InfraFailure` from the agent loop: verl's v1 agent loop
then leaves the sample out of its group (the group is marked `failure`; the replay buffer keeps
the group's other samples, and verl's padding uses a uid of its own), so the survivors'
advantages are exactly those of the smaller group. `verl_patch.infra_sampler` counts them per
step and stops the run when too many of a step's samples failed this way.

What counts (first match wins), and why each cannot be caused by the policy's own actions:

* `sandbox`: the final attempt's sandbox or agent never ran (`env_setup_failed`): the policy
  had produced nothing yet;
* `host_lost`: the final attempt's sandbox host failed its health check (its daemon stopped
  answering) while the attempt ran on it, and there is no verifier result. Setups failing in a
  row also take a host out, but that is not counted: code in one sandbox could cause it;
* `serving`: a model call failed with 502/503/504 or a connection error (no replica, a gateway,
  nothing answering), with or without a verifier result: the agent worked without its model.
  A 500 or 4xx is not counted (what the policy sent can cause it);
* `aborted`: a model call was aborted by a weight update (colocate_async's step boundary) and
  no later call asked the same again: the agent gave up on it or went on without it, so the
  trial's course was set by the trainer's timing, not by the policy. An aborted call that
  was retried is not counted: the retry continues the same exact token chain.

A tail-killed rollout is not an infrastructure failure (the policy was too slow): it keeps its
place with nothing to train on, as before.
"""

from __future__ import annotations

from typing import Protocol

from verl_patch.termination import Termination


class _Attempt(Protocol):
    @property
    def has_reward(self) -> bool: ...
    @property
    def termination(self) -> Termination: ...

    exception_type: str | None


class _Rollout(Protocol):
    tail_killed: bool
    host_lost: str | None

    @property
    def final(self) -> _Attempt | None: ...


class InfraFailure(RuntimeError):
    """Raised by the agent loop so verl leaves this sample out of its group (see above)."""

    def __init__(self, rollout_id: str, reason: str) -> None:
        super().__init__(
            f"rollout {rollout_id} failed for an infrastructure reason ({reason}); it is kept "
            "out of the policy loss and its group's statistics (rollouts.jsonl: infra_failure)"
        )
        self.rollout_id = rollout_id
        self.reason = reason


def classify(result: _Rollout, serving_failures: int, aborted_unretried: int = 0) -> str | None:
    """The infrastructure reason this rollout must not be trained on, or None.
    serving_failures: failed calls of the final attempt that the serving path caused
    (`TrajectoryStats.infra_failed`); aborted_unretried: its calls aborted by a weight update
    and never asked again (`TrajectoryStats.aborted_unretried`)."""
    final = result.final
    if result.tail_killed:
        return None
    if final is None:
        return "sandbox: no attempt ran"
    if final.termination is Termination.ENV_SETUP_FAILED:
        return f"sandbox: never started ({final.exception_type or 'the agent did not run'})"
    if result.host_lost and not final.has_reward:
        return f"host_lost: {result.host_lost}"
    if serving_failures:
        return f"serving: {serving_failures} model call(s) failed in the serving path"
    if aborted_unretried:
        return (
            f"aborted: {aborted_unretried} model call(s) aborted by a weight update and not retried"
        )
    return None
