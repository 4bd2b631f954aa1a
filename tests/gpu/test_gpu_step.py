"""Opt-in: the real GPU path (vLLM + FSDP + Harbor) checked as the CPU smoke checks it.

Runs where `nvidia-smi` sees a GPU and HVT_GPU_TEST_MODEL names a small Hugging Face chat model
directory (for example Qwen2.5-0.5B-Instruct); skips with the reason everywhere else. It uses the
real compose stack with the GPU reservation (`make image` first): a first launch runs two steps
(`total_epochs: 2`, two tasks, batch 2), a second launch of the same experiment with
`total_epochs: 3` resumes from global_step_2 and runs step 3. Asserted with the smoke's own
checks (hvt.smoke.verify): verl's `step:1`..`step:3` lines, the resume line, `global_step_1..3`,
and rollouts whose tokens are exact (`tokens_exact` in rollouts.jsonl).
"""

from __future__ import annotations

from pathlib import Path

from hvt.smoke import verify
from tests.gpu.gpu_stack import IN, PYTESTMARK, GpuStack

pytestmark = PYTESTMARK
EXP = "gpu-one-step"


def test_one_real_step(tmp_path: Path) -> None:
    stack = GpuStack(
        tmp_path,
        "hvt-gpu-test",
        {
            f"{IN}.training.train_batch_size": 2,
            f"{IN}.training.train_prompt_mini_batch_size": 2,
            f"{IN}.training.n_resp_per_prompt": 2,
            f"{IN}.training.total_epochs": 2,
            f"{IN}.training.save_freq": 1,
            f"{IN}.harbor_agent.max_iterations": 3,
            f"{IN}.experiment.exp_name": EXP,
        },
    )
    log = stack.data / "logs" / f"{EXP}.log"
    try:
        for epochs in (2, 3):  # the second launch resumes the experiment from global_step_2
            stack.training["total_epochs"] = epochs
            stack.write_config()
            stack.run_until_step(log, epochs)
        steps = verify.step_lines(log)
        assert {1, 2, 3} <= set(steps), sorted(steps)
        text = log.read_text(errors="replace")
        assert "Resuming from" in text and "global_step_2" in text
        ckpt = stack.data / "checkpoints" / "swe-lego-live-rl" / EXP
        assert {"global_step_1", "global_step_2", "global_step_3"} <= {
            p.name for p in ckpt.iterdir()
        }
        rows = verify.rollouts(stack.data / "harbor_trials" / "swe-lego-live-rl" / EXP)
        assert any((r.get("metrics") or {}).get("tokens_exact") == 1.0 for r in rows), rows
    finally:
        stack.down()
