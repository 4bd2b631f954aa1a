"""verl's real trainer in CPU mode (verl_patch.cpu), in the trainer image: each preset runs real
steps of main_ppo (FSDP2 on gloo, the CPU rollout replica, a checkpoint per step), and the
weight sync is shown to be real.

Two launches (each a few minutes): GSPO with the weight sync, PPO with a critic and without it.
The command is hvt's own (`hvt launch --cpu`'s builder); the job (cpu_trainer_job.py) swaps
Harbor trials for verl's single-turn agent loop and a rule reward, so a launch takes minutes.
GRPO with real Harbor trials is `make smoke`.

Weight sync: verl logs the rollout-vs-actor agreement of each step's tokens
(`training/rollout_actor_probs_pearson_corr`, verl/utils/debug/metrics.py). At step 2 the
rollout serves what step 1 trained only if the actor's weights reached it: with the sync the
correlation stays above SYNCED (0.99); with HVT_CPU_WEIGHT_SYNC=off (the replica keeps its
initial weights) it falls below it, so the check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers.timing import scaled

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(scaled(900))]

ROOT = Path(__file__).resolve().parents[2]
SYNCED = 0.99
CORR = "training/rollout_actor_probs_pearson_corr"


@pytest.fixture(scope="module")
def trainer_image(images: dict[str, str]) -> str:
    return images["trainer"]


def run_job(
    image: str, tmp_path: Path, preset: str, steps: int, sync: str = "on", infra: bool = False
) -> dict:
    work = tmp_path / f"{preset}-{sync}"
    work.mkdir()
    os.chmod(work, 0o777)
    command = [
        "docker", "run", "--rm", "--name", f"hvt-cpu-trainer-{uuid.uuid4().hex[:6]}",
        "--shm-size=2g",
        "-v", f"{ROOT / 'src'}:/hvt/src:ro",
        "-v", f"{ROOT / 'tests'}:/hvt/tests:ro",
        "-v", f"{ROOT / 'config'}:/hvt/config:ro",
        "-v", f"{work}:{work}",
        "-e", "PYTHONPATH=/hvt/src:/hvt",
        "-e", "HVT_HOME=/hvt",  # config/algorithms of this checkout
        "--entrypoint", "/opt/venv/bin/python",
        image, "/hvt/tests/e2e/cpu_trainer_job.py",
        "--preset", preset, "--steps", str(steps), "--sync", sync, "--workdir", str(work),
        *(["--infra-failure"] if infra else []),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=scaled(850))
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-6000:] + run.stderr[-3000:]
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def corr(result: dict, step: int) -> float:
    return float(result["steps"][str(step)][CORR])


def test_gspo_trains_two_steps_and_the_rollout_serves_the_trained_weights(
    trainer_image: str, tmp_path: Path
) -> None:
    """Also: one of the 8 samples fails as a sandbox that never started would (the agent loop
    raises InfraFailure): verl leaves it out of its group, the step counts it in
    rollout/infra_failed_samples and trains on the other 3 + 4."""
    result = run_job(trainer_image, tmp_path, "gspo", steps=2, infra=True)
    assert set(result["steps"]) >= {"1", "2"}, result["steps"]
    assert result["checkpoints"] == ["global_step_1", "global_step_2"]
    assert corr(result, 2) > SYNCED, result["steps"]["2"]
    failed = [float(result["steps"][s]["rollout/infra_failed_samples"]) for s in ("1", "2")]
    assert sorted(failed) == [0.0, 1.0], result["steps"]


def test_ppo_with_a_critic_and_without_the_weight_sync_the_check_fails(
    trainer_image: str, tmp_path: Path
) -> None:
    """PPO (a critic, GAE) for two real steps, with the replica kept on its initial weights
    (HVT_CPU_WEIGHT_SYNC=off): step 2's tokens come from the old policy, and the agreement the
    GSPO run keeps above the threshold falls below it."""
    result = run_job(trainer_image, tmp_path, "ppo", steps=2, sync="off")
    step1, step2 = result["steps"]["1"], result["steps"]["2"]
    assert "critic/vf_loss" in step1 and "actor/pg_loss" in step1, step1
    assert result["checkpoints"] == ["global_step_1", "global_step_2"]
    assert corr(result, 1) > SYNCED  # step 1: nothing trained yet, both agree
    assert corr(result, 2) < SYNCED, step2
