"""verl 0.9.1 agent loop: one Harbor trial per sample (`verl.experimental.agent_loop`).

Registered by `config/agent_loop_config_cc.yaml` (rollout.agent.agent_loop_config_path) under
the name `harbor_claude_code`. Per sample verl calls `run(sampling_params, **row)`; the row is
a `hvt tasks index` row (extra_info.harbor_task_path, extra_info.split) plus what verl adds
(global_steps in the v1 trainer, raw_prompt). The loop

1. runs the task's trial (`harbor_trial.run_rollout`: retries only without a verifier result),
   under the run-wide concurrency limit and tail-killer (`coordination`, a named Ray actor);
2. turns it into a sample (`rollout_sample.build_sample`: exact tokens from the proxy's
   trajectory, reward, termination);
3. appends one line per rollout to `<trials_dir>/<step>/rollouts.jsonl`; a rollout that failed
   for an infrastructure reason (`infra_failure`) is then raised, so verl keeps it out of the
   loss and out of its group's statistics; every other one returns verl's AgentLoopOutput
   with `reward_score` set (verl then skips its reward loop) and the per-trial numbers in
   `extra_fields["reward_extra_info"]` (validation logs them per data source).

Everything except this file runs without verl; this file is exercised by the smoke test in
the trainer image.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

from verl_patch import coordination, harbor_trial, proxy_ready
from verl_patch.infra_failure import InfraFailure
from verl_patch.rollout_sample import Sample, build_sample, version_range
from verl_patch.rollout_settings import RolloutSettings

log = logging.getLogger(__name__)
ROLLOUTS_FILE = "rollouts.jsonl"
SANDBOX_PHASES = ("time/environment_setup", "time/agent_setup", "time/verifier")


@functools.lru_cache(maxsize=4)
def load_settings(config_path: str, trials_dir: str | None) -> RolloutSettings:
    from hvt.config.load import load
    from hvt.config.problems import ConfigError

    try:
        cfg = load(Path(config_path))
    except ConfigError as exc:
        details = "; ".join(p.render() for p in exc.problems)
        raise ValueError(f"{config_path}: {details} (hvt config validate shows them)") from None
    return RolloutSettings.from_run_config(cfg, trials_dir=trials_dir or None)


class HarborAgentLoop(AgentLoopBase):  # type: ignore[misc]
    def __init__(
        self,
        *args: Any,
        config_path: str | None = None,
        trials_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        path = config_path or os.environ.get("HVT_CONFIG")
        if not path:
            raise ValueError(
                "the Harbor agent loop needs the run config: set HVT_CONFIG (hvt launch does) "
                "or config_path in agent_loop_config_cc.yaml"
            )
        self.settings = load_settings(path, trials_dir or os.environ.get("HVT_TRIALS_DIR"))
        self.coordination = coordination.ray_coordination(self.settings)

    def _render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool
    ) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages,
            tools=tools,
            add_generation_prompt=gen,
            tokenize=True,
            **self.apply_chat_template_kwargs,
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        extra = kwargs.get("extra_info") or {}
        task_path = extra.get("harbor_task_path")
        if not task_path:
            raise ValueError(
                f"dataset row {extra.get('index')!r} has no extra_info.harbor_task_path "
                "(build the parquet with `hvt tasks index`)"
            )
        split = str(extra.get("split") or "train")
        step = kwargs.get("global_steps")
        step = int(step) if step is not None else None
        await proxy_ready.wait(self.settings.proxy_url)  # the first trials may beat its start-up
        result = await harbor_trial.run_rollout(
            self.settings,
            task_path,
            harbor_trial.step_dir_name(step, split),
            coordination=self.coordination,
            group=f"{split}:{step}",
        )
        messages = kwargs.get("raw_prompt")
        sample = await self.loop.run_in_executor(
            None,
            lambda: build_sample(
                result,
                render=self._render,
                messages=list(messages) if messages is not None else None,
                max_prompt=self.rollout_config.prompt_length,
                max_response=self.rollout_config.response_length,
                eos_id=int(self.tokenizer.eos_token_id),
            ),
        )
        self._record(sample, step, split, extra, kwargs.get("uid"))
        if sample.info.get("infra_failure"):
            # verl leaves the sample out of its group; infra_sampler counts it per step
            raise InfraFailure(sample.info["rollout_id"], sample.info["infra_failure"])
        return self._output(sample, step)

    def _record(
        self,
        sample: Sample,
        step: int | None,
        split: str,
        extra: dict[str, Any],
        uid: str | None = None,
    ) -> None:
        oldest, newest = version_range(sample.info["weight_versions"], step)
        line = {
            "step": step,  # the step the trial was submitted in (its directory's step)
            "split": split,
            "instance_id": extra.get("instance_id"),
            # the prompt group (verl's uid): which step trained it is in trained_groups.jsonl
            "uid": uid,
            "finished_at": time.time(),
            **sample.info,  # weight_versions: as the replica reported them per call
            "min_global_steps": oldest,  # what verl's staleness metrics get (version_range)
            "max_global_steps": newest,
            "reward": sample.reward,
            "prompt_tokens": len(sample.prompt_ids),
            "response_tokens": len(sample.response_ids),
            "trained_tokens": sum(sample.response_mask),
            "metrics": sample.metrics,
        }
        path = self.settings.trials_dir / harbor_trial.step_dir_name(step, split) / ROLLOUTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:  # one short line per rollout; O_APPEND keeps lines whole
            handle.write(json.dumps(line, default=str) + "\n")
        log.info(
            "rollout %s: %s reward=%s tokens=%d/%d",
            sample.info["rollout_id"],
            sample.termination.value,
            sample.reward,
            len(sample.prompt_ids),
            len(sample.response_ids),
        )

    @staticmethod
    def _output(sample: Sample, step: int | None = None) -> AgentLoopOutput:
        m = sample.metrics
        # The weight versions that served the trial, which verl's v1 trainer reads from every
        # output (trainer_base.py 1896-1897: staleness metrics; llm_server.py 160-162 sets them
        # for calls through its own client). Claude-code reaches the replicas over HTTP, so the
        # loop sets them: from the versions the proxy recorded per call, else step - 1.
        oldest, newest = version_range(sample.info["weight_versions"], step)
        return AgentLoopOutput(
            prompt_ids=sample.prompt_ids,
            response_ids=sample.response_ids,
            response_mask=sample.response_mask,
            response_logprobs=sample.response_logprobs,
            reward_score=sample.reward,
            num_turns=sample.num_turns,
            metrics=AgentLoopMetrics(
                generate_sequences=m.get("time/agent_execution", 0.0),
                tool_calls=sum(m.get(k, 0.0) for k in SANDBOX_PHASES),
            ),
            extra_fields={
                "reward_extra_info": dict(m),
                "hvt_termination": sample.termination.value,
                "hvt_trial_dir": sample.info["trial_dir"],
                "min_global_steps": oldest,
                "max_global_steps": newest,
            },
        )
