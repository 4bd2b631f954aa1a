"""`harbor_patch.environments.kubernetes:KubernetesEnvironment` (upstream's longer path
`harbor_patch.environments.kubernetes.kubernetes:KubernetesEnvironment` works too)."""

from harbor_patch.environments.kubernetes.kubernetes import KubernetesEnvironment, PodStartError

__all__ = ["KubernetesEnvironment", "PodStartError"]
