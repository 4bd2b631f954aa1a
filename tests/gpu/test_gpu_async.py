"""Opt-in: a short `training.mode: colocate_async` run on a GPU, with its figures reported.

Runs where `nvidia-smi` sees a GPU and HVT_GPU_TEST_MODEL names a small Hugging Face chat model
directory (for example Qwen2.5-0.5B-Instruct); skips with the reason everywhere else. The real
compose stack with the GPU reservation (`make image` first), as tests/gpu/test_gpu_step.py
uses it: the two smoke tasks, batch 1 x 2 trials, `total_epochs: 2` (4 steps),
`async_warmup_batches: 1` (two batches in flight), `max_off_policy_threshold: 2`.

Printed and written to `<tmp>/async_report.json` (tests/gpu/async_report.py): per step the wall
time, trajectory staleness and spans, groups dropped as too stale, infrastructure failures;
over the rollouts the model calls aborted at weight updates, those not retried (their rollouts
are left out of the loss) and the weight versions per trial. Asserted: every step ran and
logged its time and staleness, every rollout is listed, and no aborted call reached a trained
sequence (a rollout with an unretried abort is listed as left out).

  HVT_GPU_TEST_MODEL=/models/Qwen2.5-0.5B-Instruct .venv/bin/pytest -s tests/gpu/test_gpu_async.py
"""

from __future__ import annotations

from pathlib import Path

from tests.gpu import async_report
from tests.gpu.gpu_stack import IN, MODEL, PYTESTMARK, GpuStack, gpus

pytestmark = PYTESTMARK
EXP = "gpu-async"
STEPS = 4


def test_a_short_colocate_async_run_reports_its_figures(tmp_path: Path) -> None:
    stack = GpuStack(
        tmp_path,
        "hvt-gpu-async",
        {
            f"{IN}.training.mode": "colocate_async",
            f"{IN}.training.async_warmup_batches": 1,
            f"{IN}.training.max_off_policy_threshold": 2,
            f"{IN}.training.max_off_policy_strategy": "drop",
            f"{IN}.training.train_batch_size": 1,
            f"{IN}.training.train_prompt_mini_batch_size": 1,
            f"{IN}.training.n_resp_per_prompt": 2,
            f"{IN}.training.total_epochs": 2,
            f"{IN}.training.save_freq": -1,
            f"{IN}.harbor_agent.max_iterations": 6,
            f"{IN}.experiment.exp_name": EXP,
        },
    )
    log = stack.data / "logs" / f"{EXP}.log"
    trials = stack.data / "harbor_trials" / "swe-lego-live-rl" / EXP
    try:
        stack.run_until_step(log, STEPS)
        report = async_report.build(log, trials)
        (tmp_path / "async_report.json").write_text(report.as_json())
        print(f"\ncolocate_async on {gpus()} GPU(s), {MODEL}:\n{report.as_json()}")
        steps = {s.step: s for s in report.steps}
        assert set(range(1, STEPS + 1)) <= set(steps), sorted(steps)
        for n in range(1, STEPS + 1):
            assert steps[n].step_s is not None, f"step {n} logged no timing_s/step"
            assert steps[n].staleness_max is not None, f"step {n} logged no staleness"
        assert report.rollouts >= STEPS * 2, report.as_json()
        left_out = report.rollouts_left_out.get("aborted", 0)
        assert left_out <= report.calls_aborted_unretried, report.as_json()
        if report.calls_aborted_unretried:
            assert left_out >= 1, "a rollout with an unretried abort was trained"
    finally:
        stack.down()
