"""Rules across several keys of a typed config. Each returns problems naming the key to change."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from hvt.config import algorithms
from hvt.config.model import RunConfig
from hvt.config.problems import Problem

P = "runtime_info.input"


def check(cfg: RunConfig, config_file: Path | None = None) -> list[Problem]:
    problems: list[Problem] = []
    problems += _batches(cfg)
    problems += _parallelism(cfg)
    problems += _nodes(cfg)
    problems += _ports(cfg)
    problems += _backend(cfg)
    problems += _algorithm(cfg, config_file)
    problems += _training_mode(cfg)
    return problems


def _training_mode(cfg: RunConfig) -> list[Problem]:
    t, r = cfg.inputs.training, cfg.inputs.harbor_runtime
    out: list[Problem] = []
    if t.mode == "separate_async":
        out.append(
            Problem(
                f"{P}.training.mode",
                "separate_async needs a rollout pool of its own (separate nodes and a weight "
                "sync other than verl's naive one); the bundle does not build it yet",
                "use colocate_async on shared GPUs, or sync",
            )
        )
    if t.mode == "colocate_async" and t.max_off_policy_threshold < 2:
        out.append(
            Problem(
                f"{P}.training.max_off_policy_threshold",
                "1 weight version per trial: every trial carried into the next step spans 2, so "
                f"{t.max_off_policy_strategy!r} would discard or block all the work async overlaps",
                "use 2 or more (a trial may span the step it started in and the next), or sync",
            )
        )
    if t.mode != "sync" and r.tail_kill_target < 1.0:
        out.append(
            Problem(
                f"{P}.harbor_runtime.tail_kill_target",
                f"{r.tail_kill_target} stops the slow trials that {t.mode} carries into the next"
                " step instead of waiting for them",
                "set it to 1.0 (the tail-killer off) with an async mode",
            )
        )
    return out


def _batches(cfg: RunConfig) -> list[Problem]:
    t = cfg.inputs.training
    out: list[Problem] = []
    if t.train_prompt_mini_batch_size > t.train_batch_size:
        out.append(
            Problem(
                f"{P}.training.train_prompt_mini_batch_size",
                f"mini batch {t.train_prompt_mini_batch_size} is larger than the batch"
                f" {t.train_batch_size}",
                f"set it to at most training.train_batch_size ({t.train_batch_size})",
            )
        )
    elif t.train_batch_size % t.train_prompt_mini_batch_size:
        out.append(
            Problem(
                f"{P}.training.train_prompt_mini_batch_size",
                f"mini batch {t.train_prompt_mini_batch_size} does not divide the batch"
                f" {t.train_batch_size}",
                "use a divisor of training.train_batch_size",
            )
        )
    window = cfg.inputs.vllm.max_model_length
    if t.max_prompt_length + t.max_response_length > window:
        out.append(
            Problem(
                f"{P}.training.max_response_length",
                f"prompt {t.max_prompt_length} + response {t.max_response_length} exceed"
                f" vllm.max_model_length {window}",
                "lower the lengths or raise vllm.max_model_length",
            )
        )
    return out


def _parallelism(cfg: RunConfig) -> list[Problem]:
    i, v, t = cfg.inputs.infrastructure, cfg.inputs.vllm, cfg.inputs.training
    gpus = i.nnodes * i.ngpus_per_node
    out: list[Problem] = []
    if gpus % v.gen_tp:
        divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
        out.append(
            Problem(
                f"{P}.vllm.gen_tp",
                f"gen_tp={v.gen_tp} does not divide the {gpus} rollout GPUs"
                f" (nnodes {i.nnodes} x ngpus_per_node {i.ngpus_per_node})",
                f"use one of {divisors}",
            )
        )
    if gpus % t.sp_size:
        out.append(
            Problem(
                f"{P}.training.sp_size",
                f"sp_size={t.sp_size} does not divide the {gpus} training GPUs",
                "use a divisor of nnodes x ngpus_per_node",
            )
        )
    return out


def _nodes(cfg: RunConfig) -> list[Problem]:
    i = cfg.inputs.infrastructure
    names = i.node_names
    if not names:
        return []
    out: list[Problem] = []
    if len(names) != i.nnodes:
        out.append(
            Problem(
                f"{P}.infrastructure.node_names",
                f"{len(names)} name(s) {names} for nnodes={i.nnodes}",
                "list one name per trainer host, head first, or leave it empty ([])",
            )
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        out.append(
            Problem(
                f"{P}.infrastructure.node_names",
                f"{twice} named more than once",
                "give every trainer host its own name (the inventory's host names)",
            )
        )
    return out


def _ports(cfg: RunConfig) -> list[Problem]:
    i = cfg.inputs.infrastructure
    seen: dict[int, str] = {}
    out: list[Problem] = []
    for key in ("ray_port", "ray_dashboard_port", "litellm_port"):
        port = getattr(i, key)
        if port in seen:
            out.append(
                Problem(
                    f"{P}.infrastructure.{key}",
                    f"port {port} is also infrastructure.{seen[port]}",
                    "give every service its own port",
                )
            )
        seen[port] = key
    nodes = range(i.ray_port + 1, i.ray_port + 6)  # every Ray node's servers (hvt.run.ray_start)
    for key in ("ray_dashboard_port", "litellm_port"):
        port = getattr(i, key)
        if port in nodes:
            out.append(
                Problem(
                    f"{P}.infrastructure.{key}",
                    f"port {port} is one of Ray's node ports {nodes.start}-{nodes.stop - 1} "
                    f"(ray_port {i.ray_port} + 1 to 5)",
                    "move it, or ray_port, so they do not overlap",
                )
            )
    if nodes.stop - 1 > 65535:
        out.append(
            Problem(
                f"{P}.infrastructure.ray_port",
                f"ray_port {i.ray_port} leaves no room for Ray's node ports (ray_port + 1 to 5)",
                "use a port of at most 65530 (default 6379)",
            )
        )
    return out


def _backend(cfg: RunConfig) -> list[Problem]:
    h = cfg.inputs.harbor_agent
    out: list[Problem] = []
    path = h.environment_import_path.lower()
    if "kubernetes" not in path and "docker" not in path:
        out.append(
            Problem(
                f"{P}.harbor_agent.environment_import_path",
                f"{h.environment_import_path!r} names neither a docker nor a kubernetes"
                " environment",
                "use harbor.environments.docker.docker:DockerEnvironment,"
                " harbor_patch.environments.remote_docker:RemoteDockerEnvironment or"
                " harbor_patch.environments.kubernetes:KubernetesEnvironment",
            )
        )
    if h.environment_type is not None and "kubernetes" in path:
        out.append(
            Problem(
                f"{P}.harbor_agent.environment_type",
                f"set to {h.environment_type!r} together with a kubernetes import path",
                "set environment_type: null; the import path selects the backend",
            )
        )
    if h.host_path_mounts and "kubernetes" not in path:
        out.append(
            Problem(
                f"{P}.harbor_agent.host_path_mounts",
                "host path mounts apply to the kubernetes backend only",
                "set host_path_mounts: null, or switch to the kubernetes environment",
            )
        )
    out += _daemon_url(
        f"{P}.harbor_agent.docker_host", h.docker_host, h.allow_insecure_test_network
    )
    remote = "remote_docker" in path or "kubernetes" in path
    if h.docker_host.startswith("tcp://") and not remote:
        out.append(
            Problem(
                f"{P}.harbor_agent.environment_import_path",
                "a tcp:// docker_host needs the remote Docker environment",
                "use harbor_patch.environments.remote_docker:RemoteDockerEnvironment",
            )
        )
    if h.docker_hosts is not None:
        out += _fleet(cfg, path)
    out += _sandbox_network(cfg, path)
    return out


def _sandbox_network(cfg: RunConfig, path: str) -> list[Problem]:
    h = cfg.inputs.harbor_agent
    if h.sandbox_network == "public" or "remote_docker" in path or "kubernetes" in path:
        return []
    return [
        Problem(
            f"{P}.harbor_agent.sandbox_network",
            f"{h.sandbox_network!r} cannot be enforced by {h.environment_import_path}: Harbor's "
            "own Docker egress sidecar needs the gogost/gost image from Docker Hub",
            "use environment_import_path: harbor_patch.environments.remote_docker:"
            "RemoteDockerEnvironment (the local socket too), or sandbox_network: public",
        )
    ]


def _daemon_url(key: str, url: str, allow_insecure: bool) -> list[Problem]:
    if not url.startswith("tcp://"):
        return []
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        return [Problem(key, f"{url!r} has no host:port", "write tcp://<host>:2376 (TLS)")]
    if port == 2375 and not allow_insecure:
        return [
            Problem(
                key,
                "tcp://...:2375 is the unencrypted Docker port (root for anyone on the network)",
                "provision TLS (make provision) and use tcp://<host>:2376; only on an isolated"
                " test network set harbor_agent.allow_insecure_test_network: true",
            )
        ]
    return []


def _fleet(cfg: RunConfig, path: str) -> list[Problem]:
    h = cfg.inputs.harbor_agent
    key = f"{P}.harbor_agent.docker_hosts"
    hosts = h.docker_hosts or []
    out: list[Problem] = []
    if not hosts:
        out.append(Problem(key, "is an empty list", "list at least one host, or set it to null"))
    if h.docker_host:
        out.append(
            Problem(
                f"{P}.harbor_agent.docker_host",
                f"set to {h.docker_host!r} together with docker_hosts",
                'set docker_host: "" and list that daemon in docker_hosts',
            )
        )
    if "remote_docker" not in path:
        out.append(
            Problem(
                f"{P}.harbor_agent.environment_import_path",
                "a fleet (docker_hosts) needs the remote Docker environment, which takes the "
                "daemon per trial",
                "use harbor_patch.environments.remote_docker:RemoteDockerEnvironment",
            )
        )
    seen: set[str] = set()
    for n, host in enumerate(hosts):
        entry = f"{key}.{n}.docker_host"
        if host.docker_host in seen:
            out.append(Problem(entry, f"{host.docker_host!r} is listed twice", "list it once"))
        seen.add(host.docker_host)
        out += _daemon_url(entry, host.docker_host, h.allow_insecure_test_network)
    return out


def _algorithm(cfg: RunConfig, config_file: Path | None) -> list[Problem]:
    a, t = cfg.inputs.algorithm, cfg.inputs.training
    directory = algorithms.presets_dir(config_file)
    names = algorithms.available(directory)
    if a.preset not in names:
        return [
            Problem(
                f"{P}.algorithm.preset",
                f"unknown preset {a.preset!r}",
                f"use one of {', '.join(names) or '(none found in ' + str(directory) + ')'}",
            )
        ]
    preset = algorithms.load(a.preset, directory)
    out: list[Problem] = []
    conflicts = [
        (key, getattr(a, key), getattr(preset, key))
        for key in ("adv_estimator", "policy_loss_mode", "loss_agg_mode")
        if getattr(a, key) is not None and getattr(a, key) != getattr(preset, key)
    ]
    if conflicts:
        said = ", ".join(f"{k}={given!r}" for k, given, _ in conflicts)
        wanted = ", ".join(f"{k}={want!r}" for k, _, want in conflicts)
        out.append(
            Problem(
                f"{P}.algorithm.{conflicts[0][0]}",
                f"{said} contradicts preset {a.preset!r} ({wanted})",
                "remove those keys, set them to the preset's values, or pick another preset",
            )
        )
    estimator = a.adv_estimator or preset.adv_estimator
    if estimator in ("grpo", "rloo") and t.n_resp_per_prompt < 2:
        out.append(
            Problem(
                f"{P}.training.n_resp_per_prompt",
                f"{estimator} compares responses within a group; 1 response gives zero advantages",
                "use 2 or more responses per prompt",
            )
        )
    if a.clip_ratio_low > 1 or a.clip_ratio_high > 1:
        out.append(
            Problem(
                f"{P}.algorithm.clip_ratio_high",
                "clip ratios above 1 disable clipping",
                "use values in (0, 1]",
            )
        )
    return out
