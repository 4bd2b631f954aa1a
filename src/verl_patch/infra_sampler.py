"""verl's v1 replay buffer, counting the samples a step lost to infrastructure failures.

Plugged in by `hvt launch` through verl's own hook (`trainer.v1.sampler.custom_sampler.{path,
name}`, verl/trainer/ppo/v1/trainer_base.py `_build_replay_buffer`): `HarborReplayBuffer` in
sync mode, `HarborReplayBufferAsync` in colocate_async. Sampling itself is verl's, unchanged.

The agent loop raises for a rollout that failed for an infrastructure reason
(`verl_patch.infra_failure`), so that sample never reaches the buffer: its group is marked
`failure`, verl keeps the group's other samples (`sync_refill_failed_groups` stays false) and
their advantages are computed without it. After each sample of the training partition this
buffer counts the selected groups' missing samples (`rollout_n` per group, from
`sampler_kwargs`) and

* adds `rollout/infra_failed_samples` and `rollout/infra_failed_fraction` to the step's
  metrics (a sample that ended in any exception counts; the agent loop raises only these);
* stops the run with a clear error when the fraction is above `max_infra_failure_fraction`
  (`harbor_runtime.max_infra_failure_fraction`): the step would train on what is left of a
  broken fleet.

Which rollouts failed and why: `rollouts.jsonl` of the step (`infra_failure`).

Which step trained which prompt group: after each sample of the training partition the buffer
appends a line to `<trials_dir>/trained_groups.jsonl` (`verl_patch.trained_groups`).
"""

from __future__ import annotations

import logging
from typing import Any

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

from verl_patch.trained_groups import record_trained

log = logging.getLogger(__name__)

NO_TRAJECTORIES = "no materializable trajectories"
WHERE = (
    "Which trials and why: rollouts.jsonl of the step (infra_failure) and the sandbox hosts' "
    "state in the trainer log; fix the hosts or the proxy, then relaunch (it resumes from the "
    "last checkpoint)"
)


class InfraFailuresExceeded(RuntimeError):
    pass


def missing_samples(selected: list[str], keys: list[str], rollout_n: int) -> int:
    """Samples (uid, session) of the selected groups that are absent from the batch's keys
    (`{uid}_{session_id}_{index}`, replay_buffer.py "Trajectories storage format")."""
    wanted = set(selected)
    present = {tuple(key.split("_")[:2]) for key in keys if key.split("_")[0] in wanted}
    return max(0, rollout_n * len(wanted) - len(present))


def check(step: int, missing: int, expected: int, limit: float) -> dict[str, float]:
    """The step's metrics; raises InfraFailuresExceeded above the limit."""
    fraction = missing / expected if expected else 0.0
    if fraction > limit:
        raise InfraFailuresExceeded(
            f"step {step}: {missing} of {expected} samples failed for infrastructure reasons "
            f"({fraction:.0%} > harbor_runtime.max_infra_failure_fraction={limit}); the run "
            f"stops instead of training on what is left. {WHERE}"
        )
    if missing:
        log.warning(
            "step %d: %d of %d samples failed for infrastructure reasons; left out of the loss",
            step,
            missing,
            expected,
        )
    return {
        "rollout/infra_failed_samples": float(missing),
        "rollout/infra_failed_fraction": fraction,
    }


class _Counting:
    """Mixin over verl's ReplayBuffer / ReplayBufferAsync."""

    sampler_kwargs: Any
    _hvt_selected: list[str]
    _hvt_submitted: dict[str, int]

    def _select_prompt_uids(
        self, partition_id: str, sampleable_keys: set[str], batch_size: int
    ) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, int]]:
        selected, partition, steps = super()._select_prompt_uids(  # type: ignore[misc]
            partition_id, sampleable_keys, batch_size
        )
        self._hvt_selected = list(selected)
        self._hvt_submitted = {uid: int(steps[uid]) for uid in selected if uid in steps}
        return selected, partition, steps

    def sample(
        self, global_steps: int, partition_id: str, batch_size: int
    ) -> tuple[Any, dict[str, Any]]:
        kwargs = self.sampler_kwargs or {}
        rollout_n = int(kwargs.get("rollout_n", 1))
        limit = float(kwargs.get("max_infra_failure_fraction", 1.0))
        self._hvt_selected = []
        self._hvt_submitted = {}
        try:
            batch, metrics = super().sample(global_steps, partition_id, batch_size)  # type: ignore[misc]
        except RuntimeError as exc:
            if NO_TRAJECTORIES in str(exc) and self._hvt_selected:
                expected = rollout_n * len(self._hvt_selected)
                raise InfraFailuresExceeded(
                    f"step {global_steps}: all {expected} samples failed for infrastructure "
                    f"reasons; nothing to train on. {WHERE}"
                ) from exc
            raise
        if partition_id == "train":
            expected = rollout_n * len(self._hvt_selected)
            missing = missing_samples(self._hvt_selected, list(batch.keys), rollout_n)
            metrics = {**metrics, **check(global_steps, missing, expected, limit)}
            record_trained(global_steps, self._hvt_selected, self._hvt_submitted)
        return batch, metrics


class HarborReplayBuffer(_Counting, ReplayBuffer):  # type: ignore[misc]
    pass


class HarborReplayBufferAsync(_Counting, ReplayBufferAsync):  # type: ignore[misc]
    pass
