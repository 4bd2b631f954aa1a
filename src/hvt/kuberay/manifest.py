"""The Kubernetes objects of one run on KubeRay, rendered from a loaded RunConfig.

In the run's own namespace (`Deployment.namespace`, not the sandboxes'):

- Namespace, ServiceAccount `<name>-trainer` (the identity of every Ray pod), ConfigMap
  `<name>-config` (the config file, `extends` resolved; it holds no secret by design);
- RayJob `<name>` (ray.io/v1): KubeRay starts the Ray cluster (token auth, `authOptions`), then
  runs `hvt launch` on the head as the job's entrypoint; launch attaches to that Ray
  (HVT_RAY_ADDRESS) instead of starting a head. The head pod holds `ray-head` (trainer image,
  `ngpus_per_node` GPUs) and `litellm` (proxy image, `hvt proxy`), which share an emptyDir for
  the LiteLLM config discovery writes, as the compose services share a volume; the worker group
  has `nnodes - 1` pods of `ngpus_per_node` GPUs each. Every pod mounts the run directory (a
  ReadWriteMany PVC: checkpoints, trials, logs), the config, the secrets (a Secret, by name)
  and a memory-backed /dev/shm (NCCL, Ray's object store; compose's `ipc: host`), and runs as
  uid 1000 without privileges.

In the sandbox namespace (`k8s.namespace`, otherwise unchanged: the k8s_sandbox role made it):

- Role + RoleBinding `<name>-sandbox-pods`: the ServiceAccount may manage pods there (the same
  rules as the role's own trainer identity), and nowhere else;
- NetworkPolicy `<name>-sandbox-to-proxy`: sandbox pods in their agent phase (`hvt-egress:
  proxy`) may reach the head pod's LiteLLM port. Sandboxes reach the proxy by address, without
  DNS (as everywhere): HVT_PROXY_URL is http://<head pod IP>:<litellm_port>, from the downward
  API, and every Ray worker gets it from launch's environment.

The dashboard is not exposed: KubeRay's head Service is a ClusterIP (the operator and the job
submitter need it), and nothing here adds an Ingress, NodePort or LoadBalancer.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from hvt.config.model import RunConfig
from hvt.config.problems import Problem
from hvt.run.launch import ATTACH_ENV
from hvt.sandbox_labels import APP_LABEL, APP_VALUE

# the trainer image's Ray (locks/trainer.lock; a unit test keeps them equal): KubeRay needs it
# for token auth (>= 2.52) and its HTTP health probes (>= 2.53)
RAY_VERSION = "2.60.0"
HVT = "/opt/venv/bin/hvt"  # both images' entrypoints exec it
UID = 1000  # the images' user (Dockerfile: USER 1000:1000)
GPU = "nvidia.com/gpu"
CONFIG_DIR = "/etc/hvt"
CONFIG_FILE = "config.yaml"
SECRETS_DIR = "/run/secrets"  # where compose puts its secrets: the same *_FILE variables work
LITELLM_DIR = "/shared/litellm"
# the Secret's keys, as compose's secrets/ files are named (wandb_api_key may be absent)
SECRET_KEYS = ("litellm_master_key", "proxy_signing_key", "wandb_api_key")
EGRESS_LABEL = "hvt-egress"  # harbor_patch.environments.sandbox_egress.EGRESS_LABEL
EGRESS_PROXY = "proxy"  # its value in the agent phase of proxy-only and task sandboxes
# the k8s_sandbox role's trainer Role (ansible/roles/k8s_sandbox): what Harbor does to a pod
SANDBOX_RULES = (
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
)
KUBERNETES_ENV = "harbor_patch.environments.kubernetes:KubernetesEnvironment"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
KEY = "runtime_info.input."
# what the images and the pod need where it is: no claim may be mounted over (or above) these
RESERVED = (
    "/opt/venv",
    "/opt/uv",
    "/workspace/repos",
    "/tmp",  # Ray's session directory
    "/dev/shm",
    CONFIG_DIR,
    SECRETS_DIR,
    LITELLM_DIR,
)


@dataclass(frozen=True)
class Volume:
    """A PersistentVolumeClaim the Ray pods mount (models, datasets): CLAIM:PATH[:ro|rw]."""

    claim: str
    mount_path: str
    read_only: bool = True

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ValueError(
                f"--volume {text!r} is not CLAIM:PATH[:ro|rw] (e.g. models:/models:ro; "
                "read-only unless :rw)"
            )
        return cls(parts[0], parts[1], len(parts) == 2 or parts[2] == "ro")


@dataclass(frozen=True)
class Deployment:
    """Where and how the run goes on the cluster: what compose takes from .env."""

    name: str = "verl-swe-rl"
    namespace: str = "verl-swe-rl"
    image_prefix: str = "verl-swe-rl"
    image_tag: str = "latest"
    run_pvc: str = "verl-swe-rl-run"
    run_dir: str = "/workspace/run"
    volumes: tuple[Volume, ...] = ()
    secret: str = "verl-swe-rl-secrets"
    cpus: str = ""  # per Ray pod, requests = limits; "" = not set
    memory: str = ""
    image_pull_secrets: tuple[str, ...] = ()

    def image(self, which: str) -> str:
        return f"{self.image_prefix}/{which}:{self.image_tag}"


class RenderError(ValueError):
    """The config or the options cannot make a RayJob; carries every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s)")


# -- what cannot run on KubeRay ----------------------------------------------------------


def _under(path: str, mounts: Sequence[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(m) or PurePosixPath(m) in p.parents for m in mounts)


def _option_problems(dep: Deployment, sandbox_namespace: str) -> list[Problem]:
    out = []
    if not DNS1035.match(dep.name) or len(dep.name) > 40:
        out.append(
            Problem(
                "--name",
                f"{dep.name!r} cannot name a RayJob and its objects",
                "use a lowercase DNS-1035 label (a-z first) of at most 40 characters",
            )
        )
    if not DNS1123_LABEL.match(dep.namespace) or len(dep.namespace) > 63:
        out.append(
            Problem("--namespace", f"{dep.namespace!r} is not a namespace name", "use a DNS label")
        )
    elif dep.namespace == sandbox_namespace:
        out.append(
            Problem(
                "--namespace",
                f"{dep.namespace!r} is the sandbox namespace ({KEY}k8s.namespace)",
                "run the RayJob in a namespace of its own: sandbox pods run the policy's code, "
                "and their namespace holds only them",
            )
        )
    for option, value in (
        ("--run-pvc", dep.run_pvc),
        ("--secret", dep.secret),
        *(("--volume", v.claim) for v in dep.volumes),
        *(("--image-pull-secret", s) for s in dep.image_pull_secrets),
    ):
        if not DNS1123_SUBDOMAIN.match(value) or len(value) > 253:
            out.append(Problem(option, f"{value!r} is not an object name", "use a DNS-1123 name"))
    paths = [("--run-dir", dep.run_dir), *(("--volume", v.mount_path) for v in dep.volumes)]
    for option, path in paths:
        if not path.startswith("/") or path == "/":
            out.append(Problem(option, f"{path!r} is not an absolute path", "use e.g. /models"))
    mounts = [p for _, p in paths]
    for option, path in paths:
        hidden = [r for r in RESERVED if _under(r, [path]) or _under(path, [r])]
        if hidden:
            out.append(
                Problem(
                    option,
                    f"{path} would cover {hidden[0]}, which the pods need",
                    "mount the claim at a path of its own, e.g. /models or /workspace/run",
                )
            )
    for i, a in enumerate(mounts):
        for b in mounts[i + 1 :]:
            if _under(a, [b]) or _under(b, [a]):
                out.append(
                    Problem("--volume", f"{a} and {b} overlap", "mount each claim at its own path")
                )
    for option, value in (("--cpus", dep.cpus), ("--memory", dep.memory)):
        if value and not QUANTITY.match(value):
            out.append(Problem(option, f"{value!r} is not a Kubernetes quantity", "e.g. 64Gi"))
    if not IMAGE_TAG.match(dep.image_tag):
        out.append(Problem("--image-tag", f"{dep.image_tag!r} is not an image tag", "e.g. 1a2b3c"))
    return out


def _config_problems(cfg: RunConfig, dep: Deployment) -> list[Problem]:
    i = cfg.inputs
    h = i.harbor_agent
    out = []
    if h.backend != "kubernetes" or h.docker_hosts:
        out.append(
            Problem(
                f"{KEY}harbor_agent.environment_import_path",
                f"{h.environment_import_path!r}: a Ray pod has no Docker engine for sandboxes",
                f"use {KUBERNETES_ENV} (sandbox pods in k8s.namespace) on KubeRay",
            )
        )
    if i.k8s.kubeconfig:
        out.append(
            Problem(
                f"{KEY}k8s.kubeconfig",
                f"{i.k8s.kubeconfig!r}: in the cluster the Ray pods use their ServiceAccount "
                f"({dep.name}-trainer, bound to pods in {i.k8s.namespace})",
                'set it to ""',
            )
        )
    if i.infrastructure.node_names:
        out.append(
            Problem(
                f"{KEY}infrastructure.node_names",
                "names trainer hosts, but KubeRay names its pods itself",
                "set it to [] (the head waits for infrastructure.nnodes nodes)",
            )
        )
    mounts = [dep.run_dir, *(v.mount_path for v in dep.volumes)]
    where = f"--run-dir {dep.run_dir}" + "".join(
        f", --volume {v.claim}:{v.mount_path}" for v in dep.volumes
    )
    paths = [
        ("model.model_path", i.model.model_path),
        ("data.data_dir", i.data.data_dir),
        ("data.train_index", i.data.train_index),
        ("data.val_index", i.data.val_index),
        ("experiment.trials_dir", i.experiment.trials_dir),
        ("environment.venv_path", i.environment.venv_path),
        ("experiment.trajectory_logger_src", i.experiment.trajectory_logger_src),
    ]
    for key, path in paths:
        # relative index paths live under data_dir, which is checked itself
        if path.startswith("/") and not _under(path, mounts):
            out.append(
                Problem(
                    f"{KEY}{key}",
                    f"{path} is on no volume of the Ray pods ({where})",
                    f"add --volume <claim>:{_suggest_mount(path)} (a PVC holding it), or move it "
                    "under the run directory",
                )
            )
    return out


def _suggest_mount(path: str) -> str:
    parts = PurePosixPath(path).parts
    return "/" + parts[1] if len(parts) > 1 else path


def problems(cfg: RunConfig, dep: Deployment) -> list[Problem]:
    """Why this config and these options cannot run on KubeRay; [] when they can."""
    return _option_problems(dep, cfg.inputs.k8s.namespace) + _config_problems(cfg, dep)


# -- the objects ---------------------------------------------------------------------------


def labels(dep: Deployment, component: str = "") -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "verl-swe-rl",
        "app.kubernetes.io/instance": dep.name,
        "app.kubernetes.io/part-of": "verl-swe-rl",
        "app.kubernetes.io/managed-by": "hvt",
    }
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def _meta(name: str, namespace: str, dep: Deployment, component: str = "") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(dep, component)}


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def run_env(cfg: RunConfig, dep: Deployment) -> list[dict[str, Any]]:
    """What every container of the run gets (compose's x-run-env, plus the pod's address)."""
    return [
        # first: the ones below refer to it as $(HVT_POD_IP)
        _field_env("HVT_POD_IP", "status.podIP"),
        _field_env("HVT_NODE_NAME", "metadata.name"),
        _env("HVT_NODE_IP", "$(HVT_POD_IP)"),
        _env("HVT_CONFIG", f"{CONFIG_DIR}/{CONFIG_FILE}"),
        _env("HVT_WORKDIR", dep.run_dir),
        _env("HVT_LITELLM_CONFIG", f"{LITELLM_DIR}/config.yaml"),
        _env("HVT_TRIALS_ROOT", f"{dep.run_dir}/harbor_trials"),
        _env("LITELLM_MASTER_KEY_FILE", f"{SECRETS_DIR}/litellm_master_key"),
        _env("HVT_PROXY_SIGNING_KEY_FILE", f"{SECRETS_DIR}/proxy_signing_key"),
    ]


def ray_env(cfg: RunConfig, dep: Deployment, head: bool) -> list[dict[str, Any]]:
    i = cfg.inputs.infrastructure
    env = [
        *run_env(cfg, dep),
        _env("WANDB_API_KEY_FILE", f"{SECRETS_DIR}/wandb_api_key"),
        _env("HF_HUB_OFFLINE", "1"),
        _env("RAY_USAGE_STATS_ENABLED", "0"),
    ]
    if head:
        env += [
            # the proxy container beside Ray in this pod, as sandboxes reach it (by address)
            _env("HVT_PROXY_URL", f"http://$(HVT_POD_IP):{i.litellm_port}"),
            # `hvt launch` attaches to the Ray KubeRay started here instead of starting a head
            _env(ATTACH_ENV, f"$(HVT_POD_IP):{i.ray_port}"),
        ]
    return env


def _volume_mounts(dep: Deployment, *, litellm: str = "") -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "run", "mountPath": dep.run_dir},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
    ]
    if litellm:
        read_only = litellm == "ro"
        mounts.append({"name": "litellm-config", "mountPath": LITELLM_DIR, "readOnly": read_only})
    mounts += [
        {"name": f"volume-{n}", "mountPath": v.mount_path, "readOnly": v.read_only}
        for n, v in enumerate(dep.volumes)
    ]
    return mounts


def _volumes(dep: Deployment, *, litellm: bool) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [
        {"name": "run", "persistentVolumeClaim": {"claimName": dep.run_pvc}},
        {"name": "config", "configMap": {"name": f"{dep.name}-config"}},
        # 0440 with fsGroup: readable by the images' user only
        {"name": "secrets", "secret": {"secretName": dep.secret, "defaultMode": 0o440}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if litellm:
        vols.append({"name": "litellm-config", "emptyDir": {}})
    vols += [
        {
            "name": f"volume-{n}",
            "persistentVolumeClaim": {"claimName": v.claim, "readOnly": v.read_only},
        }
        for n, v in enumerate(dep.volumes)
    ]
    return vols


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def _resources(cfg: RunConfig, dep: Deployment) -> dict[str, Any]:
    limits: dict[str, Any] = {GPU: cfg.inputs.infrastructure.ngpus_per_node}
    requests: dict[str, Any] = {}
    for key, value in (("cpu", dep.cpus), ("memory", dep.memory)):
        if value:
            limits[key] = requests[key] = value
    return {"limits": limits, **({"requests": requests} if requests else {})}


def _ray_container(cfg: RunConfig, dep: Deployment, head: bool) -> dict[str, Any]:
    i = cfg.inputs.infrastructure
    container: dict[str, Any] = {
        # KubeRay runs `ray start` here (its command replaces the image's entrypoint)
        "name": "ray-head" if head else "ray-worker",
        "image": dep.image("trainer"),
        "env": ray_env(cfg, dep, head),
        "resources": _resources(cfg, dep),
        "volumeMounts": [
            *_volume_mounts(dep, litellm="rw" if head else ""),
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if head:
        container["ports"] = [
            {"name": "gcs-server", "containerPort": i.ray_port},
            {"name": "dashboard", "containerPort": i.ray_dashboard_port},
            {"name": "client", "containerPort": 10001},
        ]
    return container


def _proxy_container(cfg: RunConfig, dep: Deployment) -> dict[str, Any]:
    port = cfg.inputs.infrastructure.litellm_port
    return {
        # `hvt proxy`: waits for the LiteLLM config discovery writes (so no readiness probe:
        # KubeRay submits the job only once the head pod is ready, and the config comes later)
        "name": "litellm",
        "image": dep.image("proxy"),
        "args": ["proxy", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--port", str(port)],
        "env": run_env(cfg, dep),
        "ports": [{"name": "litellm", "containerPort": port}],
        "volumeMounts": _volume_mounts(dep, litellm="ro"),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }


def _pod_template(cfg: RunConfig, dep: Deployment, head: bool) -> dict[str, Any]:
    containers = [_ray_container(cfg, dep, head)]  # KubeRay: the Ray container comes first
    if head:
        containers.append(_proxy_container(cfg, dep))
    spec: dict[str, Any] = {
        "serviceAccountName": f"{dep.name}-trainer",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": _volumes(dep, litellm=head),
    }
    if dep.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in dep.image_pull_secrets]
    component = "ray-head" if head else "ray-worker"
    return {"metadata": {"labels": labels(dep, component)}, "spec": spec}


def rayjob(cfg: RunConfig, dep: Deployment) -> dict[str, Any]:
    i = cfg.inputs.infrastructure
    cluster: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": False,  # a fixed cluster: verl places every GPU worker once
        "authOptions": {"mode": "token"},  # KubeRay makes the token Secret and sets RAY_AUTH_*
        "headGroupSpec": {
            "rayStartParams": {
                "port": str(i.ray_port),
                "dashboard-port": str(i.ray_dashboard_port),
                "disable-usage-stats": "true",
            },
            "template": _pod_template(cfg, dep, head=True),
        },
    }
    workers = i.nnodes - 1
    if workers:
        cluster["workerGroupSpecs"] = [
            {
                "groupName": "gpu-workers",
                "replicas": workers,
                "minReplicas": workers,
                "maxReplicas": workers,
                "rayStartParams": {"disable-usage-stats": "true"},
                "template": _pod_template(cfg, dep, head=False),
            }
        ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta(dep.name, dep.namespace, dep, "trainer"),
        "spec": {
            # runs on the head once the cluster is up; launch attaches to it (HVT_RAY_ADDRESS)
            "entrypoint": f"{HVT} launch --config {CONFIG_DIR}/{CONFIG_FILE}",
            "submissionMode": "K8sJobMode",
            # the run ends, the cluster goes; checkpoints, trials and logs stay on the PVC, and
            # applying the RayJob again resumes from the latest checkpoint
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": cluster,
        },
    }


def objects(cfg: RunConfig, dep: Deployment, config_text: str) -> list[dict[str, Any]]:
    """Every object of the run, in the order `kubectl apply` needs them; RenderError (each
    problem naming its config key or option) when this config cannot run on KubeRay."""
    found = problems(cfg, dep)
    if found:
        raise RenderError(found)
    sandbox_ns = cfg.inputs.k8s.namespace
    sa = f"{dep.name}-trainer"
    head = {
        "app.kubernetes.io/instance": dep.name,
        "app.kubernetes.io/component": "ray-head",
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": dep.namespace, "labels": labels(dep)},
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(sa, dep.namespace, dep)},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{dep.name}-config", dep.namespace, dep),
            "data": {CONFIG_FILE: config_text},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(f"{dep.name}-sandbox-pods", sandbox_ns, dep),
            "rules": copy.deepcopy(list(SANDBOX_RULES)),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(f"{dep.name}-sandbox-pods", sandbox_ns, dep),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{dep.name}-sandbox-pods",
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": dep.namespace}],
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"{dep.name}-sandbox-to-proxy", sandbox_ns, dep),
            "spec": {
                "podSelector": {"matchLabels": {APP_LABEL: APP_VALUE, EGRESS_LABEL: EGRESS_PROXY}},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": dep.namespace}
                                },
                                "podSelector": {"matchLabels": head},
                            }
                        ],
                        "ports": [
                            {"protocol": "TCP", "port": cfg.inputs.infrastructure.litellm_port}
                        ],
                    }
                ],
            },
        },
        rayjob(cfg, dep),
    ]
