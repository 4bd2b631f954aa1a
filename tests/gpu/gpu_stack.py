"""What the opt-in GPU tests share: where a GPU and a model are, the smoke tasks as the dataset,
and the real compose stack with the GPU reservation (`make image` first) on a config of the
test's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, filled_config

IN = "runtime_info.input"


def gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return len([ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")])


MODEL = os.environ.get("HVT_GPU_TEST_MODEL", "")
PYTESTMARK = [
    pytest.mark.optin,  # may skip under CI=true (tests/conftest.py)
    pytest.mark.skipif(gpus() == 0, reason="no NVIDIA GPU here (nvidia-smi finds none)"),
    pytest.mark.skipif(not MODEL, reason="set HVT_GPU_TEST_MODEL to a small HF model directory"),
    pytest.mark.timeout(3600),
]


@dataclass
class GpuStack:
    """The compose stack of one GPU test: its data and dataset directories, its config (the
    defaults, the smoke tasks as train and val index, one small model on this host's GPUs, and
    the test's `keys`), its compose project."""

    tmp_path: Path
    project: str
    keys: dict[str, Any]
    cfg: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.tmp_path / "data"
        (self.data / "harbor_trials").mkdir(parents=True)
        self.datasets = self.tmp_path / "datasets"
        self.datasets.mkdir()
        subprocess.run(
            [str(ROOT / ".venv/bin/hvt"), "tasks", "index", str(ROOT / "config/smoke-tasks"),
             "-o", str(self.datasets / "train.parquet")], check=True,
        )  # fmt: skip
        shutil.copy(self.datasets / "train.parquet", self.datasets / "val.parquet")
        self.cfg = filled_config(
            **{
                f"{IN}.model.model_path": MODEL,
                f"{IN}.data.data_dir": str(self.datasets),
                f"{IN}.data.train_index": "train.parquet",
                f"{IN}.data.val_index": "val.parquet",
                f"{IN}.infrastructure.ngpus_per_node": gpus(),
                f"{IN}.vllm.gen_tp": 1,
                f"{IN}.vllm.max_model_length": 32768,
                f"{IN}.vllm.gpu_memory_utilization": 0.5,
                f"{IN}.vllm.tool_call_parser": "hermes",
                f"{IN}.training.max_prompt_length": 8192,
                f"{IN}.training.max_response_length": 16384,
                f"{IN}.training.sp_size": 1,
                f"{IN}.training.test_freq": -1,
                **self.keys,
            }
        )
        self.config_dir = self.tmp_path / "config"
        shutil.copytree(ROOT / "config", self.config_dir)
        self.write_config()
        subprocess.run(
            [
                str(ROOT / ".venv/bin/hvt"),
                "config",
                "validate",
                str(self.config_dir / "config.yaml"),
            ],
            check=True,
        )
        override = self.tmp_path / "override.yaml"
        mount = f"{self.config_dir}:/workspace/config:ro"
        services = {name: {"volumes": [mount]} for name in ("trainer", "litellm")}
        override.write_text(yaml.safe_dump({"services": services}))
        self.compose = ["docker", "compose", "--project-directory", str(ROOT), "-p", self.project,
                        "-f", str(ROOT / "compose.yaml"), "-f", str(override)]  # fmt: skip
        self.env = {
            **os.environ,
            "HVT_DATA_DIR": str(self.data),
            "MODELS_DIR": str(Path(MODEL).parent),
            "DATASETS_DIR": str(self.datasets),
            "HVT_SMOKE_PROJECT": self.project,
        }

    @property
    def training(self) -> dict[str, Any]:
        return self.cfg["runtime_info"]["input"]["training"]  # type: ignore[no-any-return]

    def write_config(self) -> None:
        (self.config_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))

    def run_until_step(self, log: Path, step: int, limit_s: float = 3000) -> None:
        """Start (or restart) the stack and wait for verl's `step:<step>` line, then stop the
        trainer."""
        subprocess.run([*self.compose, "up", "-d", "--force-recreate"], env=self.env, check=True)
        deadline = time.monotonic() + limit_s
        while f"step:{step} " not in (log.read_text(errors="replace") if log.is_file() else ""):
            if time.monotonic() > deadline:
                pytest.fail(f"no `step:{step}` line in {log} within {limit_s / 60:.0f} min")
            time.sleep(15)
        subprocess.run([*self.compose, "stop", "trainer"], env=self.env, check=False)

    def down(self) -> None:
        subprocess.run([*self.compose, "down", "-v"], env=self.env, check=False)
