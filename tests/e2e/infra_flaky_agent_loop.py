"""A test agent loop for cpu_trainer_job.py: verl's single-turn loop, except that the first
sample of a dataset row with `extra_info.fail_infra` raises InfraFailure, as the Harbor loop
(verl_patch.agent_loop) does for a rollout whose sandbox never started. The real main_ppo then
has to leave that sample out, count it (verl_patch.infra_sampler) and train on the rest."""

from __future__ import annotations

from typing import Any, ClassVar

from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from verl_patch.infra_failure import InfraFailure


class InfraFlakyAgentLoop(SingleTurnAgentLoop):  # type: ignore[misc]
    failed: ClassVar[set[int]] = (
        set()
    )  # rows that already lost their one sample (per worker process)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
        extra = kwargs.get("extra_info") or {}
        row = int(extra.get("index", -1))
        if extra.get("fail_infra") and row not in self.failed:
            self.failed.add(row)
            raise InfraFailure(f"cpu-check-{row}", "sandbox: never started (test)")
        return await super().run(sampling_params, **kwargs)
