"""k8s_sandbox: the rendered objects validate against the Kubernetes schema, the Role grants
exactly what Harbor's sandbox pods need, and (opt-in, with KUBECONFIG) the role works on a real
cluster: the trainer's kubeconfig (0600) may create pods and exec into them in the namespace and
nothing else.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible.ansible_runner import playbook

SCHEMA_VERSIONS = ["1.30.0", "1.37.0"]
PROXY = "10.20.30.40"


def render(tmp_path: Path, **extra: Any) -> list[dict[str, Any]]:
    out = tmp_path / "sandbox-objects.yaml"
    proc = playbook(
        "k8s_sandbox.yml",
        {
            "k8s_sandbox_apply": False,
            "k8s_sandbox_manifest_path": str(out),
            "k8s_sandbox_proxy_address": PROXY,
            **extra,
        },
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "k8s_sandbox_apply is false" in proc.stdout
    return [doc for doc in yaml.safe_load_all(out.read_text()) if doc]


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(tmp_path_factory.mktemp("k8s"))


def by_kind(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, [o["kind"] for o in objects])
    return found[0]


@pytest.mark.parametrize("k8s_version", SCHEMA_VERSIONS)
def test_objects_validate_against_the_schema(
    objects: list[dict[str, Any]], k8s_version: str
) -> None:
    import kubernetes_validate

    for obj in objects:
        # strict: unknown fields are errors too
        kubernetes_validate.validate(obj, k8s_version, strict=True)


def test_namespace_pod_security_and_quota(objects: list[dict[str, Any]]) -> None:
    ns = by_kind(objects, "Namespace")
    assert ns["metadata"]["name"] == "rl-sandboxes"
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    quota = by_kind(objects, "ResourceQuota")["spec"]["hard"]
    assert {"pods", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"} <= set(quota)
    limits = by_kind(objects, "LimitRange")["spec"]["limits"][0]
    assert limits["default"] and limits["defaultRequest"]


def test_role_grants_only_pods_exec_and_logs(objects: list[dict[str, Any]]) -> None:
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
        for r in by_kind(objects, "Role")["rules"]
    }
    assert rules == {
        (("",), ("pods",)): sorted(["create", "get", "list", "watch", "delete"]),
        (("",), ("pods/exec",)): ["create", "get"],
        (("",), ("pods/log",)): ["get"],
    }
    binding = by_kind(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "harbor-trainer", "namespace": "rl-sandboxes"}
    ]
    assert not any(o["kind"] in ("ClusterRole", "ClusterRoleBinding") for o in objects)


def test_token_and_service_accounts(objects: list[dict[str, Any]]) -> None:
    secret = by_kind(objects, "Secret")
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert (
        secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "harbor-trainer"
    )
    for name in ("harbor-trainer", "default"):
        assert by_kind(objects, "ServiceAccount", name)["automountServiceAccountToken"] is False


def test_settings_flow_into_the_objects(tmp_path: Path) -> None:
    objs = render(
        tmp_path,
        k8s_sandbox_namespace="swe-pods",
        k8s_sandbox_pod_security="privileged",
        k8s_sandbox_quota={"pods": "7"},
    )
    assert all(o["metadata"].get("namespace", "swe-pods") == "swe-pods" for o in objs)
    assert (
        by_kind(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "privileged"
    )
    assert by_kind(objs, "ResourceQuota")["spec"]["hard"] == {"pods": "7"}


def test_bad_namespace_is_refused_by_name(tmp_path: Path) -> None:
    proc = playbook(
        "k8s_sandbox.yml",
        {
            "k8s_sandbox_apply": False,
            "k8s_sandbox_manifest_path": str(tmp_path / "x.yaml"),
            "k8s_sandbox_namespace": "RL_Sandboxes",
        },
    )
    assert proc.returncode != 0
    assert "k8s_sandbox_namespace must be a DNS label (got 'RL_Sandboxes')" in " ".join(
        proc.stdout.split()
    )
    assert not (tmp_path / "x.yaml").exists()


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _pod_labels(egress: str) -> dict[str, str]:
    """The labels KubernetesEnvironment gives a sandbox pod in a phase of that egress."""
    from harbor_patch import labels
    from harbor_patch.environments import sandbox_egress

    return {**labels.sandbox_labels("run-a", "t__env"), sandbox_egress.EGRESS_LABEL: egress}


def test_network_policies_follow_the_pod_egress_label(objects: list[dict[str, Any]]) -> None:
    deny = by_kind(objects, "NetworkPolicy", "sandbox-egress-deny")
    proxy = by_kind(objects, "NetworkPolicy", "sandbox-egress-proxy")
    public = by_kind(objects, "NetworkPolicy", "sandbox-egress-public")
    for policy in (deny, proxy, public):
        assert policy["spec"]["policyTypes"] == ["Egress"]
        assert policy["metadata"]["namespace"] == "rl-sandboxes"
    assert deny["spec"]["egress"] == []
    assert proxy["spec"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": f"{PROXY}/32"}}], "ports": [{"protocol": "TCP", "port": 8002}]}
    ]
    assert public["spec"]["egress"] == [{}]
    # which policies select a pod, per phase label: none -> deny only (no egress at all)
    selected = {
        egress: sorted(
            p["metadata"]["name"] for p in (deny, proxy, public) if _selects(p, _pod_labels(egress))
        )
        for egress in ("none", "proxy", "public")
    }
    assert selected == {
        "none": ["sandbox-egress-deny"],
        "proxy": ["sandbox-egress-deny", "sandbox-egress-proxy"],
        "public": ["sandbox-egress-deny", "sandbox-egress-proxy", "sandbox-egress-public"],
    }
    # no DNS rule: the proxy is reached by address
    assert not any(port.get("port") == 53 for e in proxy["spec"]["egress"] for port in e["ports"])


def test_network_policy_settings(tmp_path: Path) -> None:
    objs = render(
        tmp_path,
        k8s_sandbox_proxy_address="fd00::7",
        k8s_sandbox_proxy_port=9002,
        k8s_sandbox_allow_public_egress=False,
    )
    names = {o["metadata"]["name"] for o in objs if o["kind"] == "NetworkPolicy"}
    assert names == {"sandbox-egress-deny", "sandbox-egress-proxy"}
    rule = by_kind(objs, "NetworkPolicy", "sandbox-egress-proxy")["spec"]["egress"][0]
    assert rule == {
        "to": [{"ipBlock": {"cidr": "fd00::7/128"}}],
        "ports": [{"protocol": "TCP", "port": 9002}],
    }
    off = render(tmp_path, k8s_sandbox_network_policy=False, k8s_sandbox_proxy_address="")
    assert not any(o["kind"] == "NetworkPolicy" for o in off)


def test_missing_proxy_address_is_refused_by_name(tmp_path: Path) -> None:
    proc = playbook(
        "k8s_sandbox.yml",
        {
            "k8s_sandbox_apply": False,
            "k8s_sandbox_manifest_path": str(tmp_path / "x.yaml"),
            "k8s_sandbox_proxy_address": "proxy.example",
        },
    )
    assert proc.returncode != 0
    text = " ".join(proc.stdout.split())
    assert "needs k8s_sandbox_proxy_address" in text and "got 'proxy.example'" in text
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.optin
def test_real_cluster(tmp_path: Path) -> None:
    kubeconfig = os.environ.get("KUBECONFIG", "")
    if not kubeconfig or not Path(kubeconfig).is_file():
        pytest.skip(
            "opt-in: set KUBECONFIG to a cluster-admin kubeconfig to run the role on a real cluster"
        )
    from kubernetes import client, config

    namespace = f"hvt-ans-{uuid.uuid4().hex[:8]}"
    trainer_config = tmp_path / "trainer-kubeconfig"
    extra = {
        "k8s_sandbox_namespace": namespace,
        "k8s_sandbox_admin_kubeconfig": kubeconfig,
        "k8s_sandbox_kubeconfig_hosts": ["localhost"],
        "k8s_sandbox_kubeconfig_path": str(trainer_config),
        "k8s_sandbox_kubeconfig_owner": str(os.getuid()),
        "k8s_sandbox_kubeconfig_group": str(os.getgid()),
        "k8s_sandbox_proxy_address": PROXY,
    }
    admin = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        for run in ("first", "second"):
            proc = playbook("k8s_sandbox.yml", extra, timeout=600)
            assert proc.returncode == 0, proc.stdout[-4000:]
            if run == "second":
                assert "changed=0" in proc.stdout, proc.stdout[-2000:]
        assert stat.S_IMODE(trainer_config.stat().st_mode) == 0o600
        api = config.new_client_from_config(config_file=str(trainer_config))
        authz = client.AuthorizationV1Api(api)

        def allowed(verb: str, resource: str, sub: str = "", ns: str = namespace) -> bool:
            review = client.V1SelfSubjectAccessReview(
                spec=client.V1SelfSubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=ns, verb=verb, resource=resource, subresource=sub or None
                    )
                )
            )
            return bool(authz.create_self_subject_access_review(review).status.allowed)

        assert allowed("create", "pods") and allowed("delete", "pods")
        assert allowed("create", "pods", "exec") and allowed("get", "pods", "exec")
        assert allowed("get", "pods", "log")
        assert not allowed("list", "secrets")
        assert not allowed("create", "pods", ns="default")
        assert not allowed("create", "deployments")
        # and the kubeconfig really works for the sandbox API calls
        client.CoreV1Api(api).list_namespaced_pod(namespace)
        # the API server accepted the egress policies as rendered
        networking = client.NetworkingV1Api(config.new_client_from_config(config_file=kubeconfig))
        policies = networking.list_namespaced_network_policy(namespace).items
        assert sorted(p.metadata.name for p in policies) == [
            "sandbox-egress-deny",
            "sandbox-egress-proxy",
            "sandbox-egress-public",
        ]
    finally:
        admin.delete_namespace(namespace)
