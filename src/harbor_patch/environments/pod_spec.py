"""The pod a Kubernetes sandbox runs in, built as kubernetes client models (no API calls).

* labels `harbor-run=<prefix>` + owner labels (`hvt clean --pods` selects on harbor-run);
* `activeDeadlineSeconds`: the cluster kills a sandbox its trainer forgot (crash, lost node);
* one container `main` from the task's prebuilt image, `sleep infinity` as PID 1 behind a
  tiny entrypoint, CPU/memory requests and limits (limit = request x memory_limit_factor);
* the agent runtime as an image volume (Kubernetes `image` volume source, 1.31+; beta and on by
  default from 1.33) mounted read-only at /mnt/harbor-agent-runtime. Image volumes cannot
  take a subPath, so the entrypoint links `runtime_mount_path` to the tree inside it;
* `/logs` on an emptyDir (agent and verifier logs, copied back by Harbor), optional hostPath
  mounts (pre-staged repositories, read-only by default);
* no service-account token, no service links, 1 s grace: a sandbox needs none of them.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s

MAIN = "main"
RUNTIME_VOLUME = "harbor-agent-runtime"
RUNTIME_STAGING = "/mnt/harbor-agent-runtime"
LOGS_VOLUME = "harbor-logs"
LOGS_PATH = "/logs"
RUNTIME_ROOT_ENV = "CUSTOM_AGENT_RUNTIME_ROOT"
_DNS = re.compile(r"[^a-z0-9-]+")


def pod_name(prefix: str, session_id: str) -> str:
    """`<prefix>-<8 hex>-<session>` cut to a DNS-1123 label (63 chars)."""
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:8]
    slug = _DNS.sub("-", session_id.lower()).strip("-")
    name = f"{prefix}-{digest}-{slug}"[:63].rstrip("-")
    return name


@dataclass(frozen=True)
class HostPathMount:
    host_path: str
    mount_path: str
    read_only: bool = True
    type: str = "Directory"

    @classmethod
    def parse(cls, item: Mapping[str, Any]) -> HostPathMount:
        try:
            mount = cls(
                str(item["host_path"]),
                str(item["mount_path"]),
                bool(item.get("read_only", True)),
                str(item.get("type", "Directory")),
            )
        except KeyError as exc:
            raise ValueError(f"host_path_mounts entry {dict(item)!r} lacks {exc}") from None
        if not mount.host_path.startswith("/") or not mount.mount_path.startswith("/"):
            raise ValueError(f"host_path_mounts entry {dict(item)!r}: paths must be absolute")
        return mount


@dataclass(frozen=True)
class PodSettings:
    name: str
    namespace: str
    image: str
    labels: Mapping[str, str]
    active_deadline_seconds: int = 6000
    cpus: float | None = None
    memory_mb: int | None = None
    memory_limit_factor: float = 1.0
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    runtime_image: str | None = None
    runtime_mount_path: str = "/opt/custom-agent-runtime/claude-code"
    runtime_image_subpath: str = "opt/custom-agent-runtime/claude-code"
    host_path_mounts: Sequence[HostPathMount] = ()
    image_pull_secrets: Sequence[str] = ()
    service_account: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()


def entrypoint(settings: PodSettings) -> list[str]:
    """Link the runtime into place (when mounted), then sleep as PID 1 until deleted."""
    steps = []
    if settings.runtime_image:
        target = f"{RUNTIME_STAGING}/{settings.runtime_image_subpath.strip('/')}".rstrip("/")
        link = settings.runtime_mount_path.rstrip("/")
        parent = link.rsplit("/", 1)[0] or "/"
        steps.append(
            f"if [ ! -e {shlex.quote(link)} ]; then mkdir -p {shlex.quote(parent)} && "
            f"ln -s {shlex.quote(target)} {shlex.quote(link)}; fi"
        )
    steps.append(f"mkdir -p {LOGS_PATH}/agent {LOGS_PATH}/verifier {LOGS_PATH}/artifacts")
    steps.append("exec sleep infinity")
    return ["/bin/sh", "-c", " && ".join(steps)]


def _resources(settings: PodSettings) -> k8s.V1ResourceRequirements | None:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if settings.cpus:
        requests["cpu"] = limits["cpu"] = f"{round(settings.cpus * 1000)}m"
    if settings.memory_mb:
        requests["memory"] = f"{settings.memory_mb}Mi"
        limits["memory"] = f"{int(settings.memory_mb * max(1.0, settings.memory_limit_factor))}Mi"
    if not requests:
        return None
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def build_pod(settings: PodSettings) -> k8s.V1Pod:
    env = dict(settings.env)
    mounts = [k8s.V1VolumeMount(name=LOGS_VOLUME, mount_path=LOGS_PATH)]
    volumes = [k8s.V1Volume(name=LOGS_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource())]
    if settings.runtime_image:
        volumes.append(
            k8s.V1Volume(
                name=RUNTIME_VOLUME,
                image=k8s.V1ImageVolumeSource(
                    reference=settings.runtime_image, pull_policy="IfNotPresent"
                ),
            )
        )
        mounts.append(
            k8s.V1VolumeMount(name=RUNTIME_VOLUME, mount_path=RUNTIME_STAGING, read_only=True)
        )
        env[RUNTIME_ROOT_ENV] = settings.runtime_mount_path
    for index, host in enumerate(settings.host_path_mounts):
        name = f"host-{index}"
        volumes.append(
            k8s.V1Volume(
                name=name,
                host_path=k8s.V1HostPathVolumeSource(path=host.host_path, type=host.type or None),
            )
        )
        mounts.append(
            k8s.V1VolumeMount(name=name, mount_path=host.mount_path, read_only=host.read_only)
        )
    container = k8s.V1Container(
        name=MAIN,
        image=settings.image,
        command=entrypoint(settings),
        working_dir=settings.workdir,
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in sorted(env.items())] or None,
        resources=_resources(settings),
        volume_mounts=mounts,
    )
    spec = k8s.V1PodSpec(
        containers=[container],
        volumes=volumes,
        restart_policy="Never",
        active_deadline_seconds=settings.active_deadline_seconds,
        termination_grace_period_seconds=1,
        automount_service_account_token=False,
        enable_service_links=False,
        service_account_name=settings.service_account,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s) for s in settings.image_pull_secrets]
        or None,
        node_selector=dict(settings.node_selector) or None,
        tolerations=[k8s.V1Toleration(**dict(t)) for t in settings.tolerations] or None,
    )
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=settings.name, namespace=settings.namespace, labels=dict(settings.labels)
        ),
        spec=spec,
    )


def manifest(pod: k8s.V1Pod) -> dict[str, Any]:
    """The pod as the JSON the API server receives."""
    data: dict[str, Any] = k8s.ApiClient().sanitize_for_serialization(pod)  # type: ignore[no-untyped-call]
    return data
