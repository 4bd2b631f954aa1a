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

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from hvt.smoke import verify
from tests.conftest import ROOT, filled_config


def _gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return len([ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")])


MODEL = os.environ.get("HVT_GPU_TEST_MODEL", "")
pytestmark = [
    pytest.mark.optin,  # may skip under CI=true (tests/conftest.py)
    pytest.mark.skipif(_gpus() == 0, reason="no NVIDIA GPU here (nvidia-smi finds none)"),
    pytest.mark.skipif(not MODEL, reason="set HVT_GPU_TEST_MODEL to a small HF model directory"),
    pytest.mark.timeout(3600),
]


def test_one_real_step(tmp_path: Path) -> None:
    gpus = _gpus()
    data = tmp_path / "data"
    (data / "harbor_trials").mkdir(parents=True)
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    subprocess.run(
        [str(ROOT / ".venv/bin/hvt"), "tasks", "index", str(ROOT / "config/smoke-tasks"),
         "-o", str(datasets / "train.parquet")], check=True,
    )  # fmt: skip
    shutil.copy(datasets / "train.parquet", datasets / "val.parquet")
    cfg = filled_config(
        **{
            "runtime_info.input.model.model_path": MODEL,
            "runtime_info.input.data.data_dir": str(datasets),
            "runtime_info.input.data.train_index": "train.parquet",
            "runtime_info.input.data.val_index": "val.parquet",
            "runtime_info.input.infrastructure.ngpus_per_node": gpus,
            "runtime_info.input.vllm.gen_tp": 1,
            "runtime_info.input.vllm.max_model_length": 32768,
            "runtime_info.input.vllm.gpu_memory_utilization": 0.5,
            "runtime_info.input.vllm.tool_call_parser": "hermes",
            "runtime_info.input.training.train_batch_size": 2,
            "runtime_info.input.training.train_prompt_mini_batch_size": 2,
            "runtime_info.input.training.n_resp_per_prompt": 2,
            "runtime_info.input.training.max_prompt_length": 8192,
            "runtime_info.input.training.max_response_length": 16384,
            "runtime_info.input.training.sp_size": 1,
            "runtime_info.input.training.total_epochs": 2,
            "runtime_info.input.training.save_freq": 1,
            "runtime_info.input.training.test_freq": -1,
            "runtime_info.input.harbor_agent.max_iterations": 3,
            "runtime_info.input.experiment.exp_name": "gpu-one-step",
        }
    )
    config_dir = tmp_path / "config"
    shutil.copytree(ROOT / "config", config_dir)
    (config_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {
        **os.environ,
        "HVT_DATA_DIR": str(data),
        "MODELS_DIR": str(Path(MODEL).parent),
        "DATASETS_DIR": str(datasets),
        "HVT_SMOKE_PROJECT": "hvt-gpu-test",
    }
    compose = [
        "docker",
        "compose",
        "--project-directory",
        str(ROOT),
        "-p",
        "hvt-gpu-test",
        "-f",
        str(ROOT / "compose.yaml"),
    ]
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
    compose += ["-f", str(override)]
    log = data / "logs" / "gpu-one-step.log"
    try:
        for epochs in (2, 3):  # the second launch resumes the experiment from global_step_2
            cfg["runtime_info"]["input"]["training"]["total_epochs"] = epochs
            (config_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            subprocess.run([*compose, "up", "-d", "--force-recreate"], env=env, check=True)
            deadline = time.monotonic() + 3000
            while time.monotonic() < deadline:
                if f"step:{epochs} " in (log.read_text(errors="replace") if log.is_file() else ""):
                    break
                time.sleep(15)
            else:
                pytest.fail(f"no `step:{epochs}` line in {log} within 50 min")
            subprocess.run([*compose, "stop", "trainer"], env=env, check=False)
        steps = verify.step_lines(log)
        assert {1, 2, 3} <= set(steps), sorted(steps)
        assert "Resuming from" in log.read_text(
            errors="replace"
        ) and "global_step_2" in log.read_text(errors="replace")
        ckpt = data / "checkpoints" / "swe-lego-live-rl" / "gpu-one-step"
        assert {"global_step_1", "global_step_2", "global_step_3"} <= {
            p.name for p in ckpt.iterdir()
        }
        rows = verify.rollouts(data / "harbor_trials" / "swe-lego-live-rl" / "gpu-one-step")
        assert any((r.get("metrics") or {}).get("tokens_exact") == 1.0 for r in rows), rows
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, check=False)
