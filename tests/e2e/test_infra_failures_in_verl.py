"""Infrastructure failures leave the policy loss and the group statistics, on verl's own code
in the trainer image: verl's v1 replay buffer (through our sampler, verl_patch.infra_sampler)
and verl's GRPO advantage estimator.

A step of 2 prompts x 4 samples where one sample of prompt A failed for an infrastructure
reason (the agent loop raised InfraFailure, so verl marked A's group `failure` and the sample
never reached the buffer). The TransferQueue listing is fed to verl's ReplayBuffer as its
metadata server would (only `tq.kv_list` / `tq.kv_clear` are replaced: the selection logic is
verl's). The real launch path is covered by tests/e2e/test_cpu_trainer.py (a sample raising in
a real main_ppo step).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json
import numpy as np, torch
import verl.trainer.ppo.v1.replay_buffer as rb
from verl.trainer.ppo import core_algos
from verl_patch.infra_sampler import HarborReplayBuffer, InfraFailuresExceeded

N = 4
REWARDS = {"A": [1.0, 0.0, None, 1.0], "B": [0.0, 1.0, 1.0, 1.0]}  # None: failed (infra)


class Listing:  # what TransferQueue's metadata server lists, and nothing else
    def __init__(self):
        items = {}
        for uid, rewards in REWARDS.items():
            items[uid] = {"is_prompt": True, "global_steps": 1,
                          "status": "failure" if None in rewards else "finished"}
            for s, r in enumerate(rewards):
                if r is not None:
                    items[f"{uid}_{s}_0"] = {"status": "finished"}
        self.data = {"train": items}

    def kv_list(self):
        return self.data

    def kv_clear(self, partition_id, keys):
        for k in keys:
            self.data[partition_id].pop(k, None)


def buffer(limit):
    return HarborReplayBuffer(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=None,
                              max_off_policy_strategy="drop",
                              sampler_kwargs={"rollout_n": N, "max_infra_failure_fraction": limit},
                              poll_interval=0.01, refill_fn=lambda n: None)


def advantages(keys_rewards):
    # verl's GRPO estimator over the batch verl builds: the sampled keys, then one pad sample
    # with a uid of its own (padding_utils.upsample_batch_to_divisible_size), mask 0
    uids = [k.split("_")[0] for k, _ in keys_rewards] + ["pad0"]
    scores = [r for _, r in keys_rewards] + [0.0]
    L = 3
    rewards = torch.zeros(len(scores), L)
    rewards[:, -1] = torch.tensor(scores)
    mask = torch.ones(len(scores), L)
    mask[-1] = 0
    fn = core_algos.get_adv_estimator_fn("grpo")
    adv, _ = fn(token_level_rewards=rewards, response_mask=mask, index=np.array(uids, dtype=object))
    return {k: round(float(adv[i, -1]), 6) for i, (k, _) in enumerate(keys_rewards)}


rb.tq = Listing()
batch, metrics = buffer(0.25).sample(global_steps=1, partition_id="train", batch_size=2)
keys = sorted(batch.keys)
sampled = [(k, REWARDS[k.split("_")[0]][int(k.split("_")[1])]) for k in keys]
with_failed_as_zero = sampled + [("A_2_0", 0.0)]  # what masking with reward 0 would do
survivors_alone = [(k, r) for k, r in sampled if k.startswith("A_")]
out = {
    "keys": keys,
    "metrics": {k: v for k, v in metrics.items() if k.startswith("rollout/")},
    "adv": advantages(sampled),
    "adv_zero": advantages(with_failed_as_zero),
    "adv_alone": advantages(survivors_alone),
}
rb.tq = Listing()
try:
    buffer(0.1).sample(global_steps=1, partition_id="train", batch_size=2)
    out["stopped"] = None
except InfraFailuresExceeded as exc:
    out["stopped"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def test_a_failed_sandbox_leaves_its_group_and_the_survivors_keep_their_advantages(
    images: dict[str, str],
) -> None:
    command = [
        "docker", "run", "--rm", "--network", "none",
        "-v", f"{ROOT / 'src'}:/hvt/src:ro", "-e", "PYTHONPATH=/hvt/src",
        "--entrypoint", "/opt/venv/bin/python", images["trainer"], "-c", SCRIPT,
    ]  # fmt: skip
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    # verl's buffer kept prompt A's group without the failed sample, and B whole
    assert out["keys"] == ["A_0_0", "A_1_0", "A_3_0", "B_0_0", "B_1_0", "B_2_0", "B_3_0"]
    assert out["metrics"] == {
        "rollout/infra_failed_samples": 1.0,
        "rollout/infra_failed_fraction": 0.125,
    }
    # the survivors' advantages are exactly those of their group without the failed sample
    for key in ("A_0_0", "A_1_0", "A_3_0"):
        assert out["adv"][key] == out["adv_alone"][key]
    # and differ from keeping the failed sample with reward 0 (what masking alone did)
    assert out["adv_zero"]["A_0_0"] != out["adv"]["A_0_0"]
    assert out["adv_zero"]["B_0_0"] == out["adv"]["B_0_0"]  # other groups are untouched
    # above harbor_runtime.max_infra_failure_fraction the step stops, saying why and where
    assert out["stopped"] and "1 of 8 samples failed for infrastructure reasons" in out["stopped"]
    assert "max_infra_failure_fraction=0.1" in out["stopped"]
    assert "rollouts.jsonl" in out["stopped"]
