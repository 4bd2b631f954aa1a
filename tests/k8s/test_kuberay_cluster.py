"""`hvt kuberay render`'s objects against a real cluster with KubeRay (opt-in).

Skips, saying why, unless KUBECONFIG names a cluster that serves KubeRay's RayJob CRD
(ray.io/v1) and has the sandbox namespace. What it checks:

- every rendered object passes a server-side dry-run apply with strict field validation: the
  API server's own schemas (the installed CRD's included, CEL rules and defaults applied) and
  admission, with nothing created;
- the rendered ServiceAccount, Role and RoleBinding, created for real under a throwaway name,
  let the Ray pods' identity manage pods in the sandbox namespace and nowhere else
  (SubjectAccessReview), then are deleted.

It does not start the RayJob: that needs GPU nodes, the images in a registry the cluster pulls
from, the run's PVC and its Secret (README, "Kubernetes (KubeRay)").

Settings (environment variables):
  KUBECONFIG                   the cluster (required); needs rights to create namespaces,
                               RBAC objects and SubjectAccessReviews (a cluster admin)
  HVT_K8S_TEST_NAMESPACE       the sandbox namespace, which must exist (default rl-sandboxes;
                               make provision's k8s_sandbox role makes it)
  HVT_KUBERAY_TEST_NAMESPACE   an existing namespace for the RayJob; default: a new one,
                               made for the test and deleted after it
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvt.config.load import load
from hvt.kuberay import manifest
from hvt.kuberay.cli import config_text
from tests.conftest import filled_config

pytestmark = [
    pytest.mark.optin,  # may skip under CI=true (tests/conftest.py)
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="needs a Kubernetes cluster with the KubeRay operator: set KUBECONFIG (and "
        "HVT_K8S_TEST_NAMESPACE, HVT_KUBERAY_TEST_NAMESPACE) to run the KubeRay tests",
    ),
]

SANDBOX_NS = os.environ.get("HVT_K8S_TEST_NAMESPACE", "rl-sandboxes")
K8S_ENV = "harbor_patch.environments.kubernetes:KubernetesEnvironment"
FIELD_MANAGER = "hvt-kuberay-test"


@pytest.fixture(scope="module")
def api() -> Any:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    api_client = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    try:
        found = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(
            "rayjobs.ray.io", _request_timeout=30
        )
    except ApiException as exc:
        if exc.status == 404:
            pytest.skip(
                "the cluster has no RayJob CRD (rayjobs.ray.io): install the KubeRay operator "
                "(helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0)"
            )
        raise
    served = [v.name for v in found.spec.versions if v.served]
    if "v1" not in served:
        pytest.skip(f"the cluster's RayJob CRD serves {served}, not v1: upgrade KubeRay")
    try:
        client.CoreV1Api(api_client).read_namespace(SANDBOX_NS, _request_timeout=30)
    except ApiException as exc:
        if exc.status == 404:
            pytest.skip(
                f"no sandbox namespace {SANDBOX_NS}: make provision (role k8s_sandbox) makes "
                "it, or set HVT_K8S_TEST_NAMESPACE"
            )
        raise
    return api_client


@pytest.fixture(scope="module")
def ray_namespace(api: Any) -> Iterator[str]:
    from kubernetes import client

    given = os.environ.get("HVT_KUBERAY_TEST_NAMESPACE")
    if given:
        yield given
        return
    name = f"hvt-kuberay-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=name, labels={"app.kubernetes.io/part-of": "hvt-test"}
            )
        )
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)


def _objects(tmp_path: Path, ray_ns: str) -> tuple[manifest.Deployment, list[dict[str, Any]]]:
    path = tmp_path / "config.yaml"
    values = {
        "runtime_info.input.harbor_agent.environment_import_path": K8S_ENV,
        "runtime_info.input.k8s.namespace": SANDBOX_NS,
        "runtime_info.input.infrastructure.nnodes": 2,
    }
    path.write_text(yaml.safe_dump(filled_config(**values), sort_keys=False))
    dep = manifest.Deployment(
        name=f"hvt-kr-{uuid.uuid4().hex[:6]}",
        namespace=ray_ns,
        volumes=(manifest.Volume("models", "/models"), manifest.Volume("datasets", "/data")),
    )
    return dep, manifest.objects(load(path), dep, config_text(path))


def _apply(api: Any, obj: dict[str, Any], dry_run: bool) -> Any:
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(api)
    resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    return dynamic.server_side_apply(
        resource,
        body=obj,
        field_manager=FIELD_MANAGER,
        dry_run="All" if dry_run else None,
        query_params=[("fieldValidation", "Strict")],
        _request_timeout=60,
    )


def test_rendered_objects_pass_a_server_side_dry_run(
    api: Any, ray_namespace: str, tmp_path: Path
) -> None:
    from kubernetes.client.rest import ApiException

    _, objects = _objects(tmp_path, ray_namespace)
    refused = []
    applied = {}
    for obj in objects:
        try:
            applied[obj["kind"]] = _apply(api, obj, dry_run=True)
        except ApiException as exc:
            refused.append(f"{obj['kind']} {obj['metadata']['name']}: {exc.status} {exc.body}")
    assert not refused, "the API server refused:\n" + "\n".join(refused)
    job = applied["RayJob"].to_dict()
    # the server applied the installed CRD's defaults: it read the object with its schema
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}


def test_the_trainer_identity_manages_pods_only_in_the_sandbox_namespace(
    api: Any, ray_namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client

    dep, objects = _objects(tmp_path, ray_namespace)
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    made = []
    try:
        for obj in rbac:
            _apply(api, obj, dry_run=False)
            made.append(obj)
        user = f"system:serviceaccount:{ray_namespace}:{dep.name}-trainer"
        authz = client.AuthorizationV1Api(api)

        def allowed(namespace: str, resource: str, verb: str, sub: str = "") -> bool:
            review = client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user,
                    groups=["system:serviceaccounts", f"system:serviceaccounts:{ray_namespace}"],
                    resource_attributes=client.V1ResourceAttributes(
                        namespace=namespace, resource=resource, subresource=sub or None, verb=verb
                    ),
                )
            )
            status = authz.create_subject_access_review(review).status
            return bool(status and status.allowed)

        for resource, sub, verb in (
            ("pods", "", "create"),
            ("pods", "", "delete"),
            ("pods", "exec", "create"),
            ("pods", "log", "get"),
        ):
            assert allowed(SANDBOX_NS, resource, verb, sub), f"{verb} {resource}/{sub}"
        assert not allowed(ray_namespace, "pods", "create")
        assert not allowed("default", "pods", "create")
        assert not allowed(SANDBOX_NS, "secrets", "get")
        assert not allowed(SANDBOX_NS, "networkpolicies", "delete")
    finally:
        core, rbac_api = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        for obj in reversed(made):
            name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
            if obj["kind"] == "RoleBinding":
                rbac_api.delete_namespaced_role_binding(name, ns)
            elif obj["kind"] == "Role":
                rbac_api.delete_namespaced_role(name, ns)
            else:
                core.delete_namespaced_service_account(name, ns)
