"""The verl main_ppo command line: golden files per preset, and config edits reach it."""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvt.config.model import RunConfig
from hvt.config.run_paths import RunPaths, repos_dir
from hvt.run.verl_command import (
    CPU_CRITIC_OVERRIDES,
    CPU_OVERRIDES,
    LaunchSpec,
    command,
    overrides,
    runtime_env,
)
from tests.conftest import ROOT, filled_config
from tests.helpers.presets import PRESET_KEYS

GOLDEN = Path(__file__).parent / "golden"
SPEC = LaunchSpec(
    exp_name="golden-exp",
    paths=RunPaths(Path("/workspace/run"), "swe-lego-live-rl", "golden-exp"),
    bundle=Path("/workspace/repos/harbor-verl-train"),
)
ENV = {"HVT_CONFIG": "/workspace/config/config.yaml", "WANDB_MODE": "offline"}


def _cfg(**overrides_: Any) -> RunConfig:
    return RunConfig.model_validate(filled_config(**overrides_))


def _preset(name: str) -> dict[str, Any]:
    base = {"runtime_info.input.algorithm.preset": name}
    base.update({f"runtime_info.input.algorithm.{k}": v for k, v in PRESET_KEYS[name].items()})
    return base


def _check_golden(name: str, argv: list[str]) -> None:
    path = GOLDEN / f"{name}.txt"
    text = "\n".join(argv) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed; review and re-run with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("preset", ["ppo", "grpo", "gspo"])
def test_golden_command_per_preset(preset: str) -> None:
    argv = command(_cfg(**_preset(preset)), SPEC, ENV)
    _check_golden(f"verl_command_{preset}", argv)


@pytest.mark.parametrize("preset", ["ppo", "grpo", "gspo"])
def test_cpu_command_differs_by_exactly_the_cpu_overrides(preset: str) -> None:
    """One launch path: CPU mode is the GPU command with CPU_OVERRIDES (and, with a critic,
    CPU_CRITIC_OVERRIDES) changed or added, nothing else; golden files show the whole line."""
    cfg = _cfg(**_preset(preset))
    gpu = command(cfg, SPEC, ENV)
    cpu = command(cfg, replace(SPEC, cpu=True), ENV)
    _check_golden(f"verl_command_cpu_{preset}", cpu)
    expected = {**CPU_OVERRIDES, **(CPU_CRITIC_OVERRIDES if preset == "ppo" else {})}
    gpu_pairs = dict(item.split("=", 1) for item in gpu[3:])
    cpu_pairs = dict(item.split("=", 1) for item in cpu[3:])
    changed = {k for k in cpu_pairs if gpu_pairs.get(k) != cpu_pairs[k]}
    assert changed == set(expected), changed ^ set(expected)
    assert set(gpu_pairs) <= set(cpu_pairs)  # nothing a GPU run sets is dropped
    assert cpu_pairs["actor_rollout_ref.rollout.name"] == "hvt_cpu"
    assert gpu_pairs["actor_rollout_ref.rollout.name"] == "vllm"
    assert cpu[:3] == gpu[:3]  # the same python -m verl.trainer.main_ppo


def test_presets_differ_where_they_should() -> None:
    def as_dict(preset: str) -> dict[str, str]:
        return dict(o.split("=", 1) for o in overrides(_cfg(**_preset(preset)), SPEC))

    ppo, grpo, gspo = as_dict("ppo"), as_dict("grpo"), as_dict("gspo")
    assert ppo["algorithm.adv_estimator"] == "gae" and ppo["critic.enable"] == "true"
    assert "critic.enable" not in grpo and "critic.enable" not in gspo
    assert grpo["algorithm.adv_estimator"] == gspo["algorithm.adv_estimator"] == "grpo"
    assert gspo["actor_rollout_ref.actor.policy_loss.loss_mode"] == "gspo"
    assert gspo["actor_rollout_ref.actor.loss_agg_mode"] == "seq-mean-token-mean"
    assert grpo["actor_rollout_ref.actor.policy_loss.loss_mode"] == "vanilla"


@pytest.mark.parametrize(
    ("key", "value", "override"),
    [
        ("vllm.gen_tp", 2, "actor_rollout_ref.rollout.tensor_model_parallel_size=2"),
        (
            "vllm.gpu_memory_utilization",
            0.7,
            "actor_rollout_ref.rollout.gpu_memory_utilization=0.7",
        ),
        ("vllm.max_num_seqs", 32, "actor_rollout_ref.rollout.max_num_seqs=32"),
        ("vllm.enforce_eager", True, "actor_rollout_ref.rollout.enforce_eager=true"),
        (
            "vllm.tool_call_parser",
            "hermes",
            "++actor_rollout_ref.rollout.engine_kwargs.vllm.tool_call_parser=hermes",
        ),
        ("training.train_batch_size", 128, "data.train_batch_size=128"),
        ("training.n_resp_per_prompt", 4, "actor_rollout_ref.rollout.n=4"),
        ("training.sp_size", 2, "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"),
        ("training.save_freq", 10, "trainer.save_freq=10"),
        ("training.test_freq", 0, "trainer.test_freq=0"),
        (
            "training.actor_offload",
            False,
            "actor_rollout_ref.actor.fsdp_config.param_offload=false",
        ),
        ("algorithm.learning_rate", 2.0e-6, "actor_rollout_ref.actor.optim.lr=2e-06"),
        ("algorithm.use_kl_loss", True, "actor_rollout_ref.actor.use_kl_loss=true"),
        ("algorithm.clip_ratio_high", 0.28, "actor_rollout_ref.actor.clip_ratio_high=0.28"),
        ("algorithm.temperature", 0.7, "actor_rollout_ref.rollout.temperature=0.7"),
        ("algorithm.val_temperature", 0.6, "actor_rollout_ref.rollout.val_kwargs.do_sample=true"),
        ("harbor_runtime.num_workers", 64, "actor_rollout_ref.rollout.agent.num_workers=64"),
        (
            "model.served_model_name",
            "policy",
            "++actor_rollout_ref.rollout.engine_kwargs.vllm.served_model_name=policy",
        ),
        ("experiment.project_name", "proj", "trainer.project_name=proj"),
        ("credentials.wandb_mode", "disabled", "trainer.logger=[console,tensorboard]"),
    ],
)
def test_config_edits_reach_the_command(key: str, value: Any, override: str) -> None:
    argv = overrides(_cfg(**{f"runtime_info.input.{key}": value}), SPEC)
    assert override in argv


def test_relative_indexes_resolve_against_data_dir() -> None:
    argv = overrides(_cfg(**{"runtime_info.input.data.train_index": "train.parquet"}), SPEC)
    assert "data.train_files=/data/indexes/train.parquet" in argv


def test_checkpoints_go_to_project_and_experiment() -> None:
    argv = overrides(_cfg(), SPEC)
    assert (
        "trainer.default_local_dir=/workspace/run/checkpoints/swe-lego-live-rl/golden-exp" in argv
    )
    assert "trainer.resume_mode=auto" in argv


def test_runtime_env_forwards_only_what_is_set() -> None:
    env = runtime_env(
        {
            "HVT_CONFIG": "/c.yaml",
            "WANDB_MODE": "",
            "PATH": "/bin",
            "VLLM_ATTENTION_BACKEND": "FLASH_ATTN",
        }
    )
    assert env == {"HVT_CONFIG": "/c.yaml", "VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}
    argv = overrides(_cfg(), SPEC, env)
    assert "++ray_kwargs.ray_init.runtime_env.env_vars.VLLM_ATTENTION_BACKEND='FLASH_ATTN'" in argv


def _keys(node: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(path)
            out |= _keys(v, path)
    return out


def test_every_override_names_a_real_verl_key(repos: Path) -> None:
    """Plain overrides must exist in verl's generated ppo_trainer config (++ ones may add)."""
    generated = repos_dir() / "verl" / "verl" / "trainer" / "config" / "_generated_ppo_trainer.yaml"
    assert generated.is_file(), f"{generated} missing from the pinned verl tree"
    known = _keys(yaml.safe_load(generated.read_text()))
    modes = ("sync", "colocate_async")
    for preset, cpu, mode in itertools.product(("ppo", "grpo", "gspo"), (False, True), modes):
        cfg = _cfg(**_preset(preset), **{"runtime_info.input.training.mode": mode})
        for item in overrides(cfg, replace(SPEC, cpu=cpu), ENV):
            key = item.split("=", 1)[0]
            if key.startswith(("+", "hydra.")):  # ++ may add; hydra.* is Hydra's, not verl's
                continue
            assert key in known, f"{key} is not a key of verl's ppo_trainer config"


def test_agent_loop_config_exists_in_the_bundle() -> None:
    from hvt.run.verl_command import AGENT_LOOP_CONFIG, AGENT_LOOP_NAME

    path = ROOT / AGENT_LOOP_CONFIG
    if not path.exists():
        pytest.fail(f"{path} is missing: the launch points verl at it")
    names = [entry.get("name") for entry in yaml.safe_load(path.read_text())]
    assert AGENT_LOOP_NAME in names


def test_fixed_micro_batches_without_dynamic_batch_size() -> None:
    """verl's actor config refuses to start without micro-batch sizes when use_dynamic_bsz is
    off (the first real CPU launch stopped on it); with it on, verl sizes batches by tokens."""
    fixed = {
        "runtime_info.input.training.use_dynamic_bsz": False,
        "runtime_info.input.training.micro_batch_size_per_gpu": 2,
    }
    argv = overrides(_cfg(**_preset("ppo"), **fixed), SPEC, ENV)
    for key in (
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
        "critic.ppo_micro_batch_size_per_gpu",
    ):
        assert f"{key}=2" in argv
    dynamic = overrides(_cfg(**_preset("ppo")), SPEC, ENV)
    assert not any("micro_batch_size" in item for item in dynamic)


def test_forwarded_env_values_stay_strings() -> None:
    """Ray refuses runtime_env env vars that are not strings; Hydra reads `1` as an int unless
    quoted (the first real launch stopped on DOCKER_TLS_VERIFY=1)."""
    argv = overrides(_cfg(), SPEC, {"DOCKER_TLS_VERIFY": "1", "WANDB_MODE": "offline"})
    assert "++ray_kwargs.ray_init.runtime_env.env_vars.DOCKER_TLS_VERIFY='1'" in argv
    assert "++ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE='offline'" in argv


def test_colocate_async_is_the_sync_command_plus_its_knobs() -> None:
    """training.mode maps to verl's v1 trainer_mode; colocate_async adds exactly its knobs."""
    keys = {
        **_preset("gspo"),
        "runtime_info.input.training.async_warmup_batches": 2,
        "runtime_info.input.training.max_off_policy_threshold": 3,
        "runtime_info.input.training.max_off_policy_strategy": "wait",
    }
    sync = command(_cfg(**keys), SPEC, ENV)
    colocate = command(_cfg(**keys, **{"runtime_info.input.training.mode": "colocate_async"}),
                       SPEC, ENV)  # fmt: skip
    _check_golden("verl_command_gspo_colocate_async", colocate)
    assert "trainer.v1.trainer_mode=sync" in sync
    assert set(colocate) - set(sync) == {
        "trainer.v1.trainer_mode=colocate_async",
        "trainer.v1.colocate_async.num_warmup_batches=2",
        "trainer.v1.sampler.max_off_policy_threshold=3",
        "trainer.v1.sampler.max_off_policy_strategy=wait",
        "trainer.v1.sampler.custom_sampler.name=HarborReplayBufferAsync",
    }
    assert set(sync) - set(colocate) == {
        "trainer.v1.trainer_mode=sync",
        "trainer.v1.sampler.custom_sampler.name=HarborReplayBuffer",
    }


def test_cpu_mode_runs_one_agent_loop_worker_per_node() -> None:
    """verl places agent-loop workers round-robin over the nodes: with one per node, every
    node starts trials, and a worker node's trials call its own proxy (HVT_NODE_PROXY_URL)."""
    for nnodes in (1, 2):
        key = "runtime_info.input.infrastructure.nnodes"
        cpu = command(_cfg(**{key: nnodes}), replace(SPEC, cpu=True), ENV)
        assert f"actor_rollout_ref.rollout.agent.num_workers={nnodes}" in cpu
