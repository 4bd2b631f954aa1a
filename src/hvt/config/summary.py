"""The Run Configuration Summary: what a run will do, in upstream's order."""

from __future__ import annotations

from hvt.config.model import RunConfig


def backend_text(cfg: RunConfig) -> str:
    h, k = cfg.inputs.harbor_agent, cfg.inputs.k8s
    if h.backend == "kubernetes":
        return f"K8s ({k.kubeconfig or '~/.kube/config'}, namespace {k.namespace})"
    if h.backend == "remote_docker":
        return f"Docker, remote over TLS ({h.docker_host})"
    return f"Docker, local ({h.docker_host or 'unix:///var/run/docker.sock'})"


def sandbox_network_text(cfg: RunConfig) -> str:
    """The effective sandbox network policy on this backend (harbor_patch.trial_network)."""
    h, i = cfg.inputs.harbor_agent, cfg.inputs.infrastructure
    proxy = f"{i.node0_ip or '<node0_ip>'}:{i.litellm_port}"
    if h.sandbox_network == "public":
        return "public: sandboxes reach everything unless task.toml restricts them"
    verifier = "verifier: no network unless task.toml asks"
    if h.sandbox_network == "proxy-only":
        agent = f"agent: proxy {proxy} only"
    else:
        agent = f"agent: the task's own policy (+ proxy {proxy} where restricted)"
    if h.backend == "kubernetes":
        how = "NetworkPolicy of the k8s_sandbox role"
    elif "remote_docker" in h.environment_import_path:
        how = "relay on an internal compose network"
    else:
        how = "NOT ENFORCED by this environment"
    return f"{h.sandbox_network}: {agent}; {verifier} ({how})"


def lines(cfg: RunConfig) -> list[tuple[str, str]]:
    i = cfg.inputs
    t, v, a, h = i.training, i.vllm, i.algorithm, i.harbor_agent
    gpus = i.infrastructure.nnodes * i.infrastructure.ngpus_per_node
    replicas = gpus // v.gen_tp if gpus % v.gen_tp == 0 else 0
    return [
        ("Model", i.model.model_path),
        ("Served as", i.model.served_model_name),
        ("Train data", i.data.train_index),
        ("Val data", i.data.val_index),
        ("Backend", backend_text(cfg)),
        ("Sandbox net", sandbox_network_text(cfg)),
        ("Parallelism", f"{i.harbor_runtime.num_workers} workers"),
        (
            "Batch size",
            f"{t.train_batch_size} prompts x {t.n_resp_per_prompt} responses ="
            f" {t.train_batch_size * t.n_resp_per_prompt} trials/step",
        ),
        ("Context", f"prompt={t.max_prompt_length} + response={t.max_response_length}"),
        (
            "vLLM",
            f"TP={v.gen_tp} replicas={replicas} max_model_len={v.max_model_length}"
            f" gpu_mem={v.gpu_memory_utilization} parser={v.tool_call_parser}",
        ),
        (
            "Algorithm",
            f"{a.preset}: {a.adv_estimator or '(preset)'} /"
            f" {a.policy_loss_mode or '(preset)'} lr={a.learning_rate:g}",
        ),
        ("Epochs", f"{t.total_epochs} save_freq={t.save_freq} test_freq={t.test_freq}"),
        (
            "Experiment",
            f"project={i.experiment.project_name} exp={i.experiment.exp_name or '(automatic)'}",
        ),
        ("wandb", i.credentials.wandb_mode),
        ("Agent", f"{h.agent_name} timeout={h.max_timeout_sec}s retries={h.max_retries}"),
    ]


def render(cfg: RunConfig) -> str:
    rule = "=" * 64
    body = "\n".join(f"{k + ':':<13}{v}" for k, v in lines(cfg))
    return f"{rule}\nRun Configuration Summary\n{rule}\n{body}\n{rule}"
