"""The verl `main_ppo` command a run launches, built from config.yaml: every knob is live.

Upstream hardcoded the vllm/training/algorithm values in a shell script and kept the config
keys as "documentation-only mirrors". Here each key becomes a Hydra override of verl 0.9.1's
`ppo_trainer` config, the algorithm preset adds its own overrides, and the environment the
Ray workers need is forwarded through `ray_kwargs.ray_init.runtime_env.env_vars`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvt.config import algorithms
from hvt.config.model import RunConfig
from hvt.config.run_paths import RunPaths

AGENT_LOOP_NAME = "harbor_claude_code"
# Where the agent-loop config lives, relative to the bundle (src/verl_patch is installed editable).
AGENT_LOOP_CONFIG = Path("src/verl_patch/config/agent_loop_config_cc.yaml")
# verl's replay buffer with the per-step count of infrastructure failures (custom_sampler hook)
INFRA_SAMPLER = Path("src/verl_patch/infra_sampler.py")

# CPU mode's environment: `hvt launch --cpu` sets it for main_ppo, which forwards it to every Ray
# worker (runtime_env). verl imports verl_patch.cpu.enable in each process (verl/__init__.py
# 49-76), which refuses on a GPU host; VERL_PLATFORM picks its platform (platform_manager.py
# ~111); VERL_ENGINE_DEVICE picks the FSDP engines registered for cuda (engine/base.py 405).
CPU_ENV = {
    "VERL_USE_EXTERNAL_MODULES": "verl_patch.cpu.enable",
    "VERL_PLATFORM": "cpu",
    "VERL_ENGINE_DEVICE": "cuda",
}

# Environment that Ray workers (vLLM servers, agent-loop workers) must see. Values present in
# the launcher's environment are forwarded; the rest are set here.
FORWARDED_ENV = (
    "HVT_CONFIG",
    "HVT_WORKDIR",
    "HVT_BUNDLE",
    "HVT_TRIALS_DIR",
    "HVT_TRIALS_ROOT",
    "HVT_PROXY_URL",
    "HVT_TASK_BASE_IMAGE",
    "LITELLM_MASTER_KEY_FILE",
    "DOCKER_HOST",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "KUBECONFIG",
    "WANDB_MODE",
    "WANDB_DIR",
    "TENSORBOARD_DIR",
    "VLLM_LOGGING_LEVEL",
    "VLLM_ATTENTION_BACKEND",
    "HF_HUB_OFFLINE",
    "NCCL_DEBUG",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN_PATH",
    "HVT_CPU_WEIGHT_SYNC",  # verl_patch.cpu.replica: off only to show the sync test can fail
    *CPU_ENV,
)


# CPU mode (`hvt launch --cpu`, `make smoke`): the whole difference from a GPU run's command.
# verl_patch.cpu (loaded through verl_patch.cpu.ENV) patches the rest; the Ray head advertises
# `ngpus_per_node` logical GPUs (hvt.run.launch.start_ray). Golden-tested: the CPU command is
# the GPU command with exactly these keys changed or added.
AGENT_WORKERS_KEY = "actor_rollout_ref.rollout.agent.num_workers"
CPU_OVERRIDES: dict[str, Any] = {
    "actor_rollout_ref.rollout.name": "hvt_cpu",  # verl_patch.cpu.replica, not vLLM
    "actor_rollout_ref.model.use_remove_padding": False,  # needs flash-attn varlen kernels
    "actor_rollout_ref.model.enable_gradient_checkpointing": False,
    "++actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
    "actor_rollout_ref.actor.strategy": "fsdp2",  # FSDP1 wants a device id on CPU
    "actor_rollout_ref.actor.fsdp_config.strategy": "fsdp2",
    "actor_rollout_ref.ref.fsdp_config.strategy": "fsdp2",
    "actor_rollout_ref.actor.use_torch_compile": False,
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile": False,
    "actor_rollout_ref.ref.fsdp_config.use_torch_compile": False,
    "trainer.device": "cpu",
    # fewer helper processes: each Ray worker imports verl and torch (about a core-minute on a
    # small CPU host), and verl's defaults start 8 reward workers and 8 TransferQueue units
    "reward.num_workers": 1,
    "transfer_queue.backend.SimpleStorage.num_data_storage_units": 1,
    # one agent-loop worker per node (with_cpu_overrides): it runs all of its node's trials at
    # once (asyncio), while harbor_runtime.num_workers still caps how many trials run together;
    # verl places them round-robin over the nodes, so every node starts trials (and its trials
    # call its own proxy, HVT_NODE_PROXY_URL)
    AGENT_WORKERS_KEY: 1,
    "data.dataloader_num_workers": 0,  # the tiny dataset loads in the TaskRunner itself
}
# ... and for presets with a critic (PPO)
CPU_CRITIC_OVERRIDES: dict[str, Any] = {
    "critic.strategy": "fsdp2",
    "critic.fsdp.strategy": "fsdp2",
    "critic.fsdp.use_torch_compile": False,
    "critic.model.use_remove_padding": False,
    "critic.model.enable_gradient_checkpointing": False,
    "++critic.model.override_config.attn_implementation": "sdpa",
}


@dataclass(frozen=True)
class LaunchSpec:
    exp_name: str
    paths: RunPaths
    bundle: Path  # where src/verl_patch lives
    python: str = "python3"
    cpu: bool = False  # CPU mode: CPU_OVERRIDES (and CPU_CRITIC_OVERRIDES)


class Text(str):
    """A value Hydra must read as a string (it would parse `1` or `true` otherwise): Ray refuses
    a runtime_env env var that is not a string."""


def _fmt(value: Any) -> str:
    if isinstance(value, Text):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if value is None:
        return "null"
    text = str(value)
    if any(c in text for c in " ,[]{}=:'\"") and not text.startswith("/"):
        return "'" + text.replace("'", "\\'") + "'"
    return text


def overrides(
    cfg: RunConfig,
    spec: LaunchSpec,
    env: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> list[str]:
    """Hydra overrides, in a stable order (golden-tested)."""
    i = cfg.inputs
    t, v, a, r = i.training, i.vllm, i.algorithm, i.harbor_runtime
    preset = algorithms.load(a.preset, algorithms.presets_dir(config_file))
    data_dir = Path(i.data.data_dir)

    def data_file(name: str) -> str:
        p = Path(name)
        return str(p if p.is_absolute() else data_dir / p)

    max_tokens = t.max_prompt_length + t.max_response_length
    logger = ["console", "tensorboard"] + (
        [] if i.credentials.wandb_mode == "disabled" else ["wandb"]
    )
    pairs: list[tuple[str, Any]] = [
        # data
        ("data.train_files", data_file(i.data.train_index)),
        ("data.val_files", data_file(i.data.val_index)),
        ("data.train_batch_size", t.train_batch_size),
        ("data.val_batch_size", t.val_batch_size),
        ("data.max_prompt_length", t.max_prompt_length),
        ("data.max_response_length", t.max_response_length),
        ("data.return_raw_chat", True),
        ("data.filter_overlong_prompts", False),
        ("data.truncation", "error"),
        # model
        ("actor_rollout_ref.model.path", i.model.model_path),
        ("actor_rollout_ref.model.use_remove_padding", True),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", True),
        # actor
        ("actor_rollout_ref.actor.optim.lr", a.learning_rate),
        ("actor_rollout_ref.actor.ppo_mini_batch_size", t.train_prompt_mini_batch_size),
        ("actor_rollout_ref.actor.use_dynamic_bsz", t.use_dynamic_bsz),
        ("actor_rollout_ref.actor.ppo_max_token_len_per_gpu", max_tokens),
        ("actor_rollout_ref.actor.ulysses_sequence_parallel_size", t.sp_size),
        ("actor_rollout_ref.actor.use_kl_loss", a.use_kl_loss),
        ("actor_rollout_ref.actor.kl_loss_coef", a.kl_loss_coef),
        ("actor_rollout_ref.actor.kl_loss_type", a.kl_loss_type),
        ("actor_rollout_ref.actor.entropy_coeff", a.entropy_coeff),
        ("actor_rollout_ref.actor.clip_ratio_low", a.clip_ratio_low),
        ("actor_rollout_ref.actor.clip_ratio_high", a.clip_ratio_high),
        ("actor_rollout_ref.actor.loss_agg_mode", a.loss_agg_mode or preset.loss_agg_mode),
        (
            "actor_rollout_ref.actor.policy_loss.loss_mode",
            a.policy_loss_mode or preset.policy_loss_mode,
        ),
        ("actor_rollout_ref.actor.fsdp_config.param_offload", t.actor_offload),
        ("actor_rollout_ref.actor.fsdp_config.optimizer_offload", t.actor_offload),
        # reference policy
        ("actor_rollout_ref.ref.fsdp_config.param_offload", t.ref_offload),
        ("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", t.use_dynamic_bsz),
        ("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu", max_tokens),
        ("actor_rollout_ref.ref.ulysses_sequence_parallel_size", t.sp_size),
        # rollout: verl-managed vLLM replicas, each gen_tp GPUs
        ("actor_rollout_ref.rollout.name", "vllm"),
        ("actor_rollout_ref.rollout.mode", "async"),
        ("actor_rollout_ref.rollout.n", t.n_resp_per_prompt),
        ("actor_rollout_ref.rollout.tensor_model_parallel_size", v.gen_tp),
        ("actor_rollout_ref.rollout.gpu_memory_utilization", v.gpu_memory_utilization),
        ("actor_rollout_ref.rollout.max_model_len", v.max_model_length),
        ("actor_rollout_ref.rollout.max_num_seqs", v.max_num_seqs),
        ("actor_rollout_ref.rollout.max_num_batched_tokens", max(8192, max_tokens)),
        ("actor_rollout_ref.rollout.enforce_eager", v.enforce_eager),
        ("actor_rollout_ref.rollout.dtype", v.dtype),
        ("actor_rollout_ref.rollout.enable_chunked_prefill", v.enable_chunked_prefill),
        ("actor_rollout_ref.rollout.temperature", a.temperature),
        ("actor_rollout_ref.rollout.top_p", a.top_p),
        ("actor_rollout_ref.rollout.top_k", a.top_k),
        ("actor_rollout_ref.rollout.val_kwargs.temperature", a.val_temperature),
        ("actor_rollout_ref.rollout.val_kwargs.top_p", a.val_top_p),
        ("actor_rollout_ref.rollout.val_kwargs.top_k", a.val_top_k),
        ("actor_rollout_ref.rollout.val_kwargs.do_sample", a.val_temperature > 0),
        ("actor_rollout_ref.rollout.calculate_log_probs", True),
        ("actor_rollout_ref.rollout.multi_turn.format", v.tool_call_parser),
        ("actor_rollout_ref.rollout.agent.num_workers", r.num_workers),
        ("actor_rollout_ref.rollout.agent.default_agent_loop", AGENT_LOOP_NAME),
        (
            "actor_rollout_ref.rollout.agent.agent_loop_config_path",
            str(spec.bundle / AGENT_LOOP_CONFIG),
        ),
        (
            "++actor_rollout_ref.rollout.engine_kwargs.vllm.served_model_name",
            i.model.served_model_name,
        ),
        ("++actor_rollout_ref.rollout.engine_kwargs.vllm.enable_auto_tool_choice", True),
        ("++actor_rollout_ref.rollout.engine_kwargs.vllm.tool_call_parser", v.tool_call_parser),
        # algorithm
        ("algorithm.adv_estimator", a.adv_estimator or preset.adv_estimator),
        ("algorithm.use_kl_in_reward", False),
        *sorted(preset.verl_overrides.items()),
    ]
    if not t.use_dynamic_bsz:  # verl then needs fixed micro-batches (FSDPActorConfig asserts)
        pairs += [
            ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", t.micro_batch_size_per_gpu),
            (
                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                t.micro_batch_size_per_gpu,
            ),
            ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", t.micro_batch_size_per_gpu),
        ]
        if preset.needs_critic:
            pairs.append(("critic.ppo_micro_batch_size_per_gpu", t.micro_batch_size_per_gpu))
    if preset.needs_critic:
        pairs += [
            ("critic.enable", True),
            ("critic.model.path", i.model.model_path),
            ("critic.ppo_max_token_len_per_gpu", max_tokens),
            ("critic.ulysses_sequence_parallel_size", t.sp_size),
            ("critic.fsdp.param_offload", t.actor_offload),
            ("critic.fsdp.optimizer_offload", t.actor_offload),
        ]
    pairs += [
        # trainer
        ("trainer.project_name", i.experiment.project_name),
        ("trainer.experiment_name", spec.exp_name),
        ("trainer.logger", logger),
        ("trainer.nnodes", i.infrastructure.nnodes),
        ("trainer.n_gpus_per_node", i.infrastructure.ngpus_per_node),
        ("trainer.total_epochs", t.total_epochs),
        ("trainer.save_freq", t.save_freq),
        ("trainer.test_freq", t.test_freq),
        ("trainer.val_before_train", t.val_before_train),
        (
            "trainer.default_local_dir",
            str(spec.paths.checkpoints / i.experiment.project_name / spec.exp_name),
        ),
        ("trainer.resume_mode", "auto"),
        ("trainer.v1.trainer_mode", t.mode),
        ("trainer.log_val_generations", 0),
        # Hydra's own output (the composed config, its log): in the run's logs, not in the
        # working directory, which the trainer image's user cannot write
        ("hydra.run.dir", str(spec.paths.logs / "hydra" / spec.exp_name)),
    ]
    pairs += [
        ("trainer.v1.sampler.custom_sampler.path", str(spec.bundle / INFRA_SAMPLER)),
        (
            "trainer.v1.sampler.custom_sampler.name",
            "HarborReplayBuffer" if t.mode == "sync" else "HarborReplayBufferAsync",
        ),
        ("+trainer.v1.sampler.sampler_kwargs.rollout_n", t.n_resp_per_prompt),
        (
            "+trainer.v1.sampler.sampler_kwargs.max_infra_failure_fraction",
            r.max_infra_failure_fraction,
        ),
    ]
    if t.mode == "colocate_async":
        pairs += [
            ("trainer.v1.colocate_async.num_warmup_batches", t.async_warmup_batches),
            ("trainer.v1.sampler.max_off_policy_threshold", t.max_off_policy_threshold),
            ("trainer.v1.sampler.max_off_policy_strategy", t.max_off_policy_strategy),
        ]
    if spec.cpu:
        pairs = with_cpu_overrides(pairs, preset.needs_critic, i.infrastructure.nnodes)
    for key, value in sorted((env or {}).items()):
        pairs.append((f"++ray_kwargs.ray_init.runtime_env.env_vars.{key}", Text(value)))
    return [f"{k}={_fmt(v)}" for k, v in pairs]


def with_cpu_overrides(
    pairs: list[tuple[str, Any]], critic: bool, nnodes: int = 1
) -> list[tuple[str, Any]]:
    """Replace the keys CPU mode changes in place; append the ones it adds, in a stable order.
    Its agent-loop workers: one per node."""
    changes = {**CPU_OVERRIDES, **(CPU_CRITIC_OVERRIDES if critic else {})}
    changes[AGENT_WORKERS_KEY] = CPU_OVERRIDES[AGENT_WORKERS_KEY] * nnodes
    out = [(k, changes.pop(k, v)) for k, v in pairs]
    return out + list(changes.items())


def runtime_env(environ: dict[str, str]) -> dict[str, str]:
    """The part of the launcher's environment that Ray workers must inherit."""
    return {k: environ[k] for k in FORWARDED_ENV if environ.get(k)}


def command(
    cfg: RunConfig,
    spec: LaunchSpec,
    env: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> list[str]:
    return [spec.python, "-m", "verl.trainer.main_ppo", *overrides(cfg, spec, env, config_file)]
