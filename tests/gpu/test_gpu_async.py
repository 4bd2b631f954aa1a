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

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, filled_config
from tests.gpu import async_report
from tests.gpu.test_gpu_step import MODEL, _gpus

pytestmark = [
    pytest.mark.optin,  # may skip under CI=true (tests/conftest.py)
    pytest.mark.skipif(_gpus() == 0, reason="no NVIDIA GPU here (nvidia-smi finds none)"),
    pytest.mark.skipif(not MODEL, reason="set HVT_GPU_TEST_MODEL to a small HF model directory"),
    pytest.mark.timeout(3600),
]
EXP = "gpu-async"
STEPS = 4


def test_a_short_colocate_async_run_reports_its_figures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "harbor_trials").mkdir(parents=True)
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    subprocess.run(
        [str(ROOT / ".venv/bin/hvt"), "tasks", "index", str(ROOT / "config/smoke-tasks"),
         "-o", str(datasets / "train.parquet")], check=True,
    )  # fmt: skip
    shutil.copy(datasets / "train.parquet", datasets / "val.parquet")
    prefix = "runtime_info.input"
    cfg = filled_config(
        **{
            f"{prefix}.model.model_path": MODEL,
            f"{prefix}.data.data_dir": str(datasets),
            f"{prefix}.data.train_index": "train.parquet",
            f"{prefix}.data.val_index": "val.parquet",
            f"{prefix}.infrastructure.ngpus_per_node": _gpus(),
            f"{prefix}.vllm.gen_tp": 1,
            f"{prefix}.vllm.max_model_length": 32768,
            f"{prefix}.vllm.gpu_memory_utilization": 0.5,
            f"{prefix}.vllm.tool_call_parser": "hermes",
            f"{prefix}.training.mode": "colocate_async",
            f"{prefix}.training.async_warmup_batches": 1,
            f"{prefix}.training.max_off_policy_threshold": 2,
            f"{prefix}.training.max_off_policy_strategy": "drop",
            f"{prefix}.training.train_batch_size": 1,
            f"{prefix}.training.train_prompt_mini_batch_size": 1,
            f"{prefix}.training.n_resp_per_prompt": 2,
            f"{prefix}.training.max_prompt_length": 8192,
            f"{prefix}.training.max_response_length": 16384,
            f"{prefix}.training.sp_size": 1,
            f"{prefix}.training.total_epochs": 2,
            f"{prefix}.training.save_freq": -1,
            f"{prefix}.training.test_freq": -1,
            f"{prefix}.harbor_agent.max_iterations": 6,
            f"{prefix}.experiment.exp_name": EXP,
        }
    )
    config_dir = tmp_path / "config"
    shutil.copytree(ROOT / "config", config_dir)
    (config_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(
        [str(ROOT / ".venv/bin/hvt"), "config", "validate", str(config_dir / "config.yaml")],
        check=True,
    )
    env = {
        **os.environ,
        "HVT_DATA_DIR": str(data),
        "MODELS_DIR": str(Path(MODEL).parent),
        "DATASETS_DIR": str(datasets),
        "HVT_SMOKE_PROJECT": "hvt-gpu-async",
    }
    override = tmp_path / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    s: {"volumes": [f"{config_dir}:/workspace/config:ro"]}
                    for s in ("trainer", "litellm")
                }
            }
        )
    )
    compose = ["docker", "compose", "--project-directory", str(ROOT), "-p", "hvt-gpu-async",
               "-f", str(ROOT / "compose.yaml"), "-f", str(override)]  # fmt: skip
    log = data / "logs" / f"{EXP}.log"
    trials = data / "harbor_trials" / "swe-lego-live-rl" / EXP
    try:
        subprocess.run([*compose, "up", "-d", "--force-recreate"], env=env, check=True)
        deadline = time.monotonic() + 3000
        while f"step:{STEPS} " not in (log.read_text(errors="replace") if log.is_file() else ""):
            if time.monotonic() > deadline:
                pytest.fail(f"no `step:{STEPS}` line in {log} within 50 min")
            time.sleep(15)
        subprocess.run([*compose, "stop", "trainer"], env=env, check=False)
        report = async_report.build(log, trials)
        (tmp_path / "async_report.json").write_text(report.as_json())
        print(f"\ncolocate_async on {_gpus()} GPU(s), {MODEL}:\n{report.as_json()}")
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
        subprocess.run([*compose, "down", "-v"], env=env, check=False)
