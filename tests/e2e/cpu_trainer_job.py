"""Run verl's real main_ppo in CPU mode inside the trainer image, for tests/e2e/test_cpu_trainer.py.

The command is hvt's own (`verl_command.command` with `LaunchSpec(cpu=True)`, the path
`hvt launch --cpu` takes), on a filled config with the tiny smoke model. Only what a test
needs differs, and it is printed: verl's single-turn agent loop in place of Harbor trials (the
policy generates through the CPU replica's `generate`; no sandbox, so a launch takes minutes,
not tens of minutes), a rule reward that varies with the text (so GRPO's advantages are not all
zero and the actor really moves), and the step count. Prints `RESULT {json}` last: verl's step
lines and the checkpoints it wrote.

  python cpu_trainer_job.py --preset gspo --steps 2 --workdir /tmp/w [--sync off] [--infra-failure]

--infra-failure: one sample of row 1 fails as a sandbox that never started would
(infra_flaky_agent_loop.py): verl must leave it out, count it, and train on the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    text = solution_str or ""
    return text.count(ground_truth) / max(1, len(text))
"""


def main() -> int:
    sys.path.insert(0, "/hvt")  # tests.* (the checkout is mounted at /hvt)
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", required=True, choices=("ppo", "grpo", "gspo"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sync", default="on", choices=["on", "off"])
    parser.add_argument("--infra-failure", action="store_true")
    parser.add_argument("--mode", default="sync", choices=["sync", "colocate_async"])
    args = parser.parse_args()  # tests.conftest.filled_config
    from hvt.config.model import RunConfig
    from hvt.config.run_paths import RunPaths
    from hvt.run import verl_command
    from hvt.smoke.inputs import make_tiny_model
    from hvt.smoke.verify import step_lines
    from tests.conftest import filled_config
    from tests.helpers.presets import PRESET_KEYS

    w = args.workdir
    model = make_tiny_model(w / "model")
    rows = [
        {
            "data_source": "hvt/cpu-check",
            "prompt": [{"role": "user", "content": f"fix the parser bug number {i}"}],
            "reward_model": {"style": "rule", "ground_truth": "e"},
            "extra_info": {
                "index": i,
                "split": "train",
                "fail_infra": args.infra_failure and i == 1,
            },
            "agent_name": "infra_flaky" if args.infra_failure else "single_turn_agent",
        }
        for i in range(2 * args.steps)
    ]
    (w / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(w / "data" / "train.parquet")
    pd.DataFrame(rows[:2]).to_parquet(w / "data" / "val.parquet")
    (w / "reward.py").write_text(REWARD)
    (w / "agent_loops.yaml").write_text(
        "- name: infra_flaky\n  _target_: tests.e2e.infra_flaky_agent_loop.InfraFlakyAgentLoop\n"
    )
    keys = {
        "runtime_info.input.model.model_path": str(model),
        "runtime_info.input.data.data_dir": str(w / "data"),
        "runtime_info.input.data.train_index": "train.parquet",
        "runtime_info.input.data.val_index": "val.parquet",
        "runtime_info.input.infrastructure.ngpus_per_node": 2,
        "runtime_info.input.vllm.gen_tp": 1,
        "runtime_info.input.training.train_batch_size": 2,
        "runtime_info.input.training.n_resp_per_prompt": 2,
        "runtime_info.input.training.train_prompt_mini_batch_size": 2,
        "runtime_info.input.training.max_prompt_length": 64,
        "runtime_info.input.training.max_response_length": 24,
        "runtime_info.input.training.sp_size": 1,
        "runtime_info.input.training.use_dynamic_bsz": False,
        "runtime_info.input.training.actor_offload": False,
        "runtime_info.input.training.ref_offload": False,
        "runtime_info.input.training.save_freq": 1,
        "runtime_info.input.training.test_freq": -1,
        "runtime_info.input.harbor_runtime.num_workers": 1,
        "runtime_info.input.training.mode": args.mode,
        "runtime_info.input.algorithm.preset": args.preset,
        "runtime_info.input.algorithm.learning_rate": 0.05,  # the tiny model moves visibly
        "runtime_info.input.credentials.wandb_mode": "disabled",
        "runtime_info.input.experiment.project_name": "cpu-check",
    }
    keys.update(
        {f"runtime_info.input.algorithm.{k}": v for k, v in PRESET_KEYS[args.preset].items()}
    )
    cfg = RunConfig.model_validate(filled_config(**keys))
    config_file = w / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(by_alias=True)))
    spec = verl_command.LaunchSpec(
        exp_name=f"{args.preset}-{args.sync}",
        paths=RunPaths(w, "cpu-check", f"{args.preset}-{args.sync}"),
        bundle=Path("/hvt"),
        python=sys.executable,
        cpu=True,
    )
    argv = verl_command.command(cfg, spec, {}, config_file)
    test_only = {
        "actor_rollout_ref.rollout.agent.default_agent_loop": "single_turn_agent",
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": str(w / "agent_loops.yaml"),
        "reward.custom_reward_function.path": str(w / "reward.py"),
        "trainer.total_training_steps": str(args.steps),
        "trainer.logger": "[console]",
    }
    argv = [a for a in argv if a.split("=", 1)[0] not in test_only]
    argv += [f"{k}={v}" for k, v in test_only.items()]
    print("test-only overrides: " + " ".join(f"{k}={v}" for k, v in test_only.items()), flush=True)
    env = {
        **os.environ,
        **verl_command.CPU_ENV,
        "HVT_CPU_WEIGHT_SYNC": args.sync,
        "RAY_ADDRESS": "127.0.0.1:6379",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HYDRA_FULL_ERROR": "1",
        "RAY_worker_niceness": "0",  # as hvt launch --cpu starts Ray
    }
    head = ["ray", "start", "--head", "--num-gpus=2", "--num-cpus=32", "--disable-usage-stats",
            "--include-dashboard=false"]  # fmt: skip
    for attempt in range(3):  # a loaded host can miss Ray's fixed 30 s raylet start-up window
        started = subprocess.run(head, env=env, capture_output=True, text=True, check=False)
        if started.returncode == 0:
            break
        print(f"ray start failed (attempt {attempt + 1}): {started.stderr[-1500:]}", flush=True)
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, check=False)
    else:
        return 1
    log = w / "main_ppo.log"
    with log.open("w") as out:
        code = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=w).returncode
    subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, check=False)
    text = log.read_text(errors="replace")
    print(text[-6000:])
    steps = step_lines(log)
    ckpt = w / "checkpoints" / "cpu-check" / spec.exp_name
    result = {
        "exit": code,
        "steps": steps,
        "checkpoints": sorted(p.name for p in ckpt.glob("global_step_*")),
    }
    print("RESULT " + json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
