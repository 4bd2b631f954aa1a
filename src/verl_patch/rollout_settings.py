"""Everything a rollout needs to run one Harbor trial, derived from config.yaml (RunConfig)
and the launcher's environment. No Harbor or verl import.

Environment read (set by `hvt launch` / compose and forwarded to Ray workers):
  HVT_TRIALS_DIR   trials of this experiment (harbor_trials/<project>/<exp>)
  HVT_NODE_PROXY_URL  this node's own LiteLLM proxy (several hosts, one proxy per node): set in
                   the node's environment, never forwarded, so that trials started on a node
                   call that node's proxy; else
  HVT_PROXY_URL    the LiteLLM proxy as sandboxes reach it (else http://<node0_ip>:<litellm_port>)
  DOCKER_HOST / DOCKER_CERT_PATH / KUBECONFIG   when the config leaves them empty
  HVT_TASK_BASE_IMAGE  the BASE_IMAGE build argument of task Dockerfiles that take one
                   (`ARG BASE_IMAGE=...`; the smoke tasks): a mirror or an offline stand-in
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hvt.config.model import RunConfig
from verl_patch.sandbox_fleet import FleetHost
from verl_patch.tail_kill import TailKillPolicy

REMOTE_DOCKER_MODULE = "harbor_patch.environments.remote_docker"
KUBERNETES_MODULE = "harbor_patch.environments.kubernetes"
STOCK_DOCKER = "harbor.environments.docker.docker:DockerEnvironment"
OWN_AGENT_MODULE = "harbor_patch.agents.image_mounted_claude_code"
CREDENTIAL_MARGIN_SEC = 1800.0
NODE_PROXY_URL_ENV = "HVT_NODE_PROXY_URL"  # a node's own proxy; not in FORWARDED_ENV


def base_image_overlay(base: str, directory: Path) -> tuple[Path, ...]:
    """A compose overlay passing `base` as the BASE_IMAGE build argument of every task
    (Dockerfiles with `ARG BASE_IMAGE=<pinned public image>`); none for an empty `base`."""
    if not base:
        return ()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker-compose-base-image.json"
    spec = {"services": {"main": {"build": {"args": {"BASE_IMAGE": base}}}}}
    path.write_text(json.dumps(spec, indent=2))
    return (path,)


@dataclass(frozen=True)
class RuntimeMount:
    image: str
    mount_path: str
    image_subpath: str


@dataclass(frozen=True)
class RolloutSettings:
    trials_dir: Path
    model_name: str
    agent_name: str = "claude-code"
    agent_import_path: str | None = None
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_override_timeout_sec: float | None = None
    agent_max_timeout_sec: float | None = None
    env_import_path: str | None = STOCK_DOCKER
    env_type: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    force_build: bool = True
    delete: bool = True
    override_cpus: float | None = None
    override_memory_mb: int | None = None
    verifier_enabled: bool = True
    agent_timeout_multiplier: float | None = None
    agent_setup_timeout_multiplier: float | None = None
    verifier_timeout_multiplier: float | None = None
    environment_build_timeout_multiplier: float | None = None
    max_retries: int = 2
    max_concurrent: int = 16
    tail_kill: TailKillPolicy = field(default_factory=TailKillPolicy)
    pod_name_prefix: str = "harbor-sandbox"
    # Harbor's own DockerEnvironment takes no kwargs: the runtime volume and labels reach it as
    # an extra compose file (harbor_trial stages the volume on this daemon first).
    overlay_runtime: RuntimeMount | None = None
    overlay_docker_host: str | None = None
    overlay_docker_cert_path: str | None = None
    # more compose overlays for every trial (Docker backends), e.g. a sidecar service
    extra_compose: tuple[Path, ...] = ()
    # harbor_agent.docker_hosts: the daemons trials spread over (remote Docker environment)
    fleet: tuple[FleetHost, ...] = ()
    host_failure_threshold: int = 3
    # harbor_agent.sandbox_network (from_run_config: the config's, default proxy-only), and the
    # proxy URL whose host it allows (harbor_patch.trial_network). Built by hand (tests, tools
    # with an agent that needs no proxy) the settings change nothing: public, Harbor's plan.
    sandbox_network: str = "public"
    proxy_url: str | None = None

    def for_host(self, name: str) -> RolloutSettings:
        """The settings of a trial placed on fleet host `name` (the coordinator's choice);
        unchanged without a fleet."""
        host = next((h for h in self.fleet if h.docker_host == name), None)
        if host is None:
            return self
        kwargs = {**self.env_kwargs, "docker_host": host.docker_host}
        kwargs.pop("docker_cert_path", None)
        if host.docker_cert_path:
            kwargs["docker_cert_path"] = host.docker_cert_path
        return replace(self, env_kwargs=kwargs)

    @property
    def uses_own_agent(self) -> bool:
        return (self.agent_import_path or "").startswith(OWN_AGENT_MODULE + ":")

    @property
    def uses_stock_docker(self) -> bool:
        return self.env_import_path == STOCK_DOCKER

    @classmethod
    def from_run_config(
        cls,
        cfg: RunConfig,
        environ: Mapping[str, str] | None = None,
        trials_dir: str | Path | None = None,
    ) -> RolloutSettings:
        env = os.environ if environ is None else environ
        i = cfg.inputs
        h, r, k = i.harbor_agent, i.harbor_runtime, i.k8s
        where = trials_dir or env.get("HVT_TRIALS_DIR")
        if not where:
            raise ValueError(
                "HVT_TRIALS_DIR is not set (hvt launch sets it to harbor_trials/<project>/<exp>); "
                "or pass trials_dir to the agent loop"
            )
        proxy_url = (
            env.get(NODE_PROXY_URL_ENV)
            or env.get("HVT_PROXY_URL")
            or (
                f"http://{i.infrastructure.node0_ip}:{i.infrastructure.litellm_port}"
                if i.infrastructure.node0_ip
                else None
            )
        )
        runtime = RuntimeMount(h.runtime_image, h.runtime_mount_path, h.runtime_image_subpath)
        image = h.runtime_image or None  # "" = no runtime mounted (agents that need none)
        agent_kwargs: dict[str, Any] = {"max_turns": h.max_iterations}
        if h.agent_import_path.startswith(OWN_AGENT_MODULE + ":"):
            agent_kwargs |= {
                "runtime_root": h.runtime_mount_path,
                "temperature": h.temperature,
                # the trial's proxy credential outlives its agent limit by a margin for setup
                # and the verifier; it is revoked when the trial ends in any case
                "credential_ttl_sec": float(h.max_timeout_sec) * h.agent_timeout_multiplier
                + CREDENTIAL_MARGIN_SEC,
            }
            if proxy_url:
                agent_kwargs["proxy_url"] = proxy_url
        module = h.environment_import_path.split(":", 1)[0]
        env_kwargs: dict[str, Any] = {}
        overlay: RuntimeMount | None = None
        if module == REMOTE_DOCKER_MODULE:
            env_kwargs = {
                "docker_host": h.docker_host or env.get("DOCKER_HOST") or None,
                "docker_cert_path": h.docker_cert_path or env.get("DOCKER_CERT_PATH") or None,
                "allow_insecure": h.allow_insecure_test_network,
                "agent_runtime_image": image,
                "agent_runtime_mount_path": runtime.mount_path,
                "agent_runtime_image_subpath": runtime.image_subpath,
                "pod_name_prefix": h.pod_name_prefix,
                "proxy_url": proxy_url,
            }
        elif module.startswith(KUBERNETES_MODULE):
            env_kwargs = {
                "namespace": k.namespace,
                "kubeconfig_path": k.kubeconfig or env.get("KUBECONFIG") or None,
                "pod_startup_timeout_sec": k.pod_startup_timeout,
                "active_deadline_seconds": k.pod_active_deadline_seconds,
                "agent_runtime_image": image,
                "agent_runtime_mount_path": runtime.mount_path,
                "agent_runtime_image_subpath": runtime.image_subpath,
                "pod_name_prefix": h.pod_name_prefix,
                "host_path_mounts": [m.model_dump() for m in h.host_path_mounts or []],
                "proxy_url": proxy_url,
            }
        elif h.environment_import_path == STOCK_DOCKER and image:
            overlay = runtime
        return cls(
            trials_dir=Path(where),
            model_name=i.model.served_model_name,
            agent_name=h.agent_name,
            agent_import_path=h.agent_import_path or None,
            agent_kwargs=agent_kwargs,
            agent_override_timeout_sec=float(h.override_timeout_sec) or None,
            agent_max_timeout_sec=float(h.max_timeout_sec) or None,
            env_import_path=h.environment_import_path,
            env_type=h.environment_type,
            env_kwargs={key: value for key, value in env_kwargs.items() if value is not None},
            force_build=h.environment_force_build,
            delete=h.environment_delete,
            override_cpus=float(h.environment_override_cpus),
            override_memory_mb=h.environment_override_memory_mb,
            verifier_enabled=h.verifier_enabled,
            agent_timeout_multiplier=h.agent_timeout_multiplier,
            agent_setup_timeout_multiplier=h.agent_setup_timeout_multiplier,
            verifier_timeout_multiplier=h.verifier_timeout_multiplier,
            environment_build_timeout_multiplier=h.environment_build_timeout_multiplier,
            max_retries=h.max_retries,
            max_concurrent=r.num_workers,
            tail_kill=TailKillPolicy(
                r.tail_kill_target, r.tail_kill_grace_sec, r.tail_kill_min_tasks
            ),
            pod_name_prefix=h.pod_name_prefix,
            overlay_runtime=overlay,
            overlay_docker_host=h.docker_host or None,
            overlay_docker_cert_path=h.docker_cert_path or None,
            extra_compose=base_image_overlay(
                env.get("HVT_TASK_BASE_IMAGE", ""), Path(tempfile.mkdtemp(prefix="hvt-tasks-"))
            )
            if env.get("HVT_TASK_BASE_IMAGE")
            else (),
            fleet=tuple(
                FleetHost(d.docker_host, d.docker_cert_path or None, d.max_concurrent_trials)
                for d in h.docker_hosts or []
            ),
            host_failure_threshold=h.host_failure_threshold,
            sandbox_network=h.sandbox_network,
            proxy_url=proxy_url,
        )
