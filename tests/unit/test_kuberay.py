"""`hvt kuberay render` without a cluster: the RayJob and its objects from the shipped config and
a two-node profile, checked against the vendored KubeRay CRD (and the core objects and pod
templates against the Kubernetes API schema); a broken RayJob is refused with its field path; a
config that cannot run on KubeRay is refused naming its key; the vendored file is the pinned one.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from harbor_patch.environments import sandbox_egress
from hvt.cli import app
from hvt.config.load import load
from hvt.images.lockfile import read_pins
from hvt.kuberay import crd, manifest
from hvt.preflight.backend import K8S_VERBS
from hvt.run.launch import ATTACH_ENV
from tests.conftest import ROOT, filled_config

runner = CliRunner()
K8S_ENV = "harbor_patch.environments.kubernetes:KubernetesEnvironment"
DEP = manifest.Deployment(
    volumes=(manifest.Volume("models", "/models"), manifest.Volume("datasets", "/data"))
)
VOLUME_ARGS = ["--volume", "models:/models:ro", "--volume", "datasets:/data"]
API_VERSIONS = ("1.31", "1.33", "1.35")


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    """The shipped config/config.yaml, filled in, with Kubernetes sandboxes."""
    values = {"runtime_info.input.harbor_agent.environment_import_path": K8S_ENV, **overrides}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(filled_config(**values), sort_keys=False))
    return path


def two_node_profile(tmp_path: Path, **overrides: Any) -> Path:
    """A profile that extends the config, as config/smoke-2node.yaml does: two nodes of 4 GPUs."""
    write_config(tmp_path, **overrides)
    path = tmp_path / "two-nodes.yaml"
    path.write_text(
        "extends: config.yaml\nruntime_info:\n  input:\n    infrastructure:\n"
        "      nnodes: 2\n      ngpus_per_node: 4\n"
    )
    return path


def render(config: Path, dep: manifest.Deployment = DEP) -> list[dict[str, Any]]:
    from hvt.kuberay.cli import config_text

    return manifest.objects(load(config), dep, config_text(config))


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def pod_templates(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"] for g in groups]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- rendering ------------------------------------------------------------------------------


def test_shipped_config_renders_a_valid_rayjob(tmp_path: Path) -> None:
    objects = render(write_config(tmp_path))
    assert [o["kind"] for o in objects] == [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "RayJob",
    ]
    job = by_kind(objects, "RayJob")
    assert crd.validate(job) == []
    cluster = job["spec"]["rayClusterSpec"]
    assert "workerGroupSpecs" not in cluster  # nnodes: 1, the head is the one node
    (head, proxy) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert head["image"] == "verl-swe-rl/trainer:latest"
    assert proxy["image"] == "verl-swe-rl/proxy:latest"
    assert proxy["args"] == ["proxy", "--config", "/etc/hvt/config.yaml", "--port", "8002"]
    assert "readinessProbe" not in proxy  # the head must be ready before the job starts


def test_two_node_profile_has_a_worker_group_and_gpus_per_pod(tmp_path: Path) -> None:
    objects = render(two_node_profile(tmp_path))
    job = by_kind(objects, "RayJob")
    assert crd.validate(job) == []
    cluster = job["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    assert cluster["enableInTreeAutoscaling"] is False
    gpus = []
    for template in pod_templates(job):
        ray = template["spec"]["containers"][0]
        assert ray["resources"]["limits"]["nvidia.com/gpu"] == 4
        gpus.append(ray["resources"]["limits"]["nvidia.com/gpu"])
    head_gpus, worker_gpus = gpus
    assert head_gpus + group["replicas"] * worker_gpus == 2 * 4  # nnodes x ngpus_per_node
    # the worker pods run Ray only: no proxy, no attach address, no proxy URL of their own
    (worker,) = group["template"]["spec"]["containers"]
    assert ATTACH_ENV not in env_of(worker) and "HVT_PROXY_URL" not in env_of(worker)
    # the embedded config is the profile, `extends` resolved: the pods read the same run
    text = by_kind(objects, "ConfigMap")["data"]["config.yaml"]
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text(text)
    assert load(embedded) == load(tmp_path / "two-nodes.yaml")


def test_sandbox_namespace_is_the_configs_and_rbac_only_there(tmp_path: Path) -> None:
    config = write_config(tmp_path, **{"runtime_info.input.k8s.namespace": "swe-sandboxes"})
    dep = manifest.Deployment(name="rl-a", namespace="rl-train", volumes=DEP.volumes)
    objects = render(config, dep)
    where = {(o["kind"], o["metadata"].get("namespace")) for o in objects}
    assert where == {
        ("Namespace", None),
        ("ServiceAccount", "rl-train"),
        ("ConfigMap", "rl-train"),
        ("RayJob", "rl-train"),
        ("Role", "swe-sandboxes"),
        ("RoleBinding", "swe-sandboxes"),
        ("NetworkPolicy", "swe-sandboxes"),
    }
    assert by_kind(objects, "Namespace")["metadata"]["name"] == "rl-train"  # not the sandboxes'
    binding = by_kind(objects, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rl-a-trainer", "namespace": "rl-train"}
    ]
    assert binding["roleRef"]["name"] == by_kind(objects, "Role")["metadata"]["name"]
    for template in pod_templates(by_kind(objects, "RayJob")):
        assert template["spec"]["serviceAccountName"] == "rl-a-trainer"
    # the pods find the sandbox namespace in the config they mount, unchanged
    embedded = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["config.yaml"])
    assert embedded["runtime_info"]["input"]["k8s"]["namespace"] == "swe-sandboxes"
    # agent-phase sandboxes reach the head pod's LiteLLM port, and nothing else is opened
    policy = by_kind(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app": "harbor-sandbox", "hvt-egress": "proxy"}
    (rule,) = policy["egress"]
    (peer,) = rule["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "rl-train"}
    head_labels = pod_templates(by_kind(objects, "RayJob"))[0]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= head_labels.items()
    assert rule["ports"] == [{"protocol": "TCP", "port": 8002}]


def test_sandbox_labels_match_the_sandbox_code() -> None:
    assert manifest.EGRESS_LABEL == sandbox_egress.EGRESS_LABEL
    assert sandbox_egress.policy_label("allowlist") == manifest.EGRESS_PROXY


def test_sandbox_role_is_the_k8s_sandbox_roles_and_passes_the_preflight() -> None:
    template = (ROOT / "ansible/roles/k8s_sandbox/templates/sandbox-objects.yaml.j2").read_text()
    role = template.split("kind: Role\n", 1)[1].split("---", 1)[0]
    rules = yaml.safe_load(role[role.index("rules:") :])["rules"]
    assert rules == list(manifest.SANDBOX_RULES)
    granted = {
        (res, verb)
        for rule in manifest.SANDBOX_RULES
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    for (
        resource,
        sub,
        verb,
    ) in K8S_VERBS:  # what `hvt dryrun` asks the API (backend.kubernetes.rbac)
        assert (resource + (f"/{sub}" if sub else ""), verb) in granted


def test_head_attaches_launch_to_kuberays_ray_with_token_auth(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        **{
            "runtime_info.input.infrastructure.ray_port": 6390,
            "runtime_info.input.infrastructure.litellm_port": 8012,
        },
    )
    job = by_kind(render(config), "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] == "/opt/venv/bin/hvt launch --config /etc/hvt/config.yaml"
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["rayStartParams"]["port"] == "6390"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = env_of(head)
    names = [e["name"] for e in head["env"]]
    # the pod's address first: the values below refer to it, and K8s expands only earlier ones
    assert names[0] == "HVT_POD_IP" and env["HVT_POD_IP"] == {
        "fieldRef": {"fieldPath": "status.podIP"}
    }
    assert env[ATTACH_ENV] == "$(HVT_POD_IP):6390"
    assert env["HVT_PROXY_URL"] == "http://$(HVT_POD_IP):8012"
    assert not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "KUBECONFIG"} & env.keys()
    # the dashboard stays inside the cluster: no public service, no ingress
    head_group = cluster["headGroupSpec"]
    assert not {"serviceType", "enableIngress", "ingressOptions"} & head_group.keys()
    # KubeRay needs the Ray version for token auth; it is the trainer image's
    pins = read_pins(ROOT / "locks" / "trainer.lock")
    assert cluster["rayVersion"] == manifest.RAY_VERSION == pins["ray"]


def test_pods_run_unprivileged_and_mount_the_run(tmp_path: Path) -> None:
    job = by_kind(render(two_node_profile(tmp_path)), "RayJob")
    for template in pod_templates(job):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == manifest.UID
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["run"]["persistentVolumeClaim"] == {"claimName": "verl-swe-rl-run"}
        assert volumes["secrets"]["secret"]["secretName"] == "verl-swe-rl-secrets"
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {
                "drop": ["ALL"]
            }
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/workspace/run"]["name"] == "run"
            assert mounts["/models"]["readOnly"] is True
            assert env_of(container)["HVT_WORKDIR"] == "/workspace/run"


def test_secrets_stay_out_of_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-master-" + "x" * 40
    monkeypatch.setenv("LITELLM_MASTER_KEY", key)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-" + "y" * 40)
    out = tmp_path / "run.yaml"
    result = runner.invoke(
        app, ["kuberay", "render", "-c", str(write_config(tmp_path)), "-o", str(out), *VOLUME_ARGS]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert key not in text and "y" * 40 not in text
    assert "kind: Secret" not in text and "secretKeyRef" not in text
    for name in manifest.SECRET_KEYS[:2]:
        assert f"/run/secrets/{name}" in text  # by file, as compose mounts them


def test_core_objects_and_pod_templates_are_valid_for_the_kubernetes_api(tmp_path: Path) -> None:
    objects = render(two_node_profile(tmp_path))
    pods = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"pod-{n}"}, "spec": t["spec"]}
        for n, t in enumerate(pod_templates(by_kind(objects, "RayJob")))
    ]
    for obj in [o for o in objects if o["kind"] != "RayJob"] + pods:
        for version in API_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


# -- the CLI --------------------------------------------------------------------------------


def test_cli_writes_the_objects_and_says_what_they_are(tmp_path: Path) -> None:
    out = tmp_path / "rayjob.yaml"
    result = runner.invoke(
        app,
        ["kuberay", "render", "-c", str(two_node_profile(tmp_path)), "-o", str(out), *VOLUME_ARGS],
    )
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert [d["kind"] for d in docs][-1] == "RayJob"
    assert crd.validate(docs[-1]) == []
    assert "&id" not in out.read_text()  # no YAML anchors: kubectl users read it
    assert "1 head + 1 worker pod(s), 4 GPU(s) each" in result.output
    assert "sandbox pods in namespace rl-sandboxes" in result.output


@pytest.mark.parametrize(
    ("overrides", "args", "key"),
    [
        (
            {
                "runtime_info.input.harbor_agent.environment_import_path": (
                    "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"
                )
            },
            [],
            "runtime_info.input.harbor_agent.environment_import_path",
        ),
        (
            {"runtime_info.input.infrastructure.node_names": ["gpu1"]},
            [],
            "runtime_info.input.infrastructure.node_names",
        ),
        (
            {"runtime_info.input.k8s.kubeconfig": "/etc/verl-swe-rl/kube/config"},
            [],
            "runtime_info.input.k8s.kubeconfig",
        ),
        ({}, ["--volume", "datasets:/data"], "runtime_info.input.model.model_path"),
        ({}, ["--namespace", "rl-sandboxes"], "--namespace"),
        ({}, ["--memory", "8GB"], "--memory"),
        ({}, ["--name", "Verl_RL"], "--name"),
        ({}, ["--volume", "models"], "--volume"),
        ({}, ["--run-dir", "/workspace"], "--run-dir: /workspace would cover /workspace/repos"),
    ],
    ids=[
        "docker-backend",
        "node-names",
        "kubeconfig",
        "model-off-volume",
        "sandbox-ns",
        "memory",
        "name",
        "volume-syntax",
        "run-dir-over-the-image",
    ],
)
def test_what_cannot_run_on_kuberay_is_refused_naming_the_key(
    tmp_path: Path, overrides: dict[str, Any], args: list[str], key: str
) -> None:
    out = tmp_path / "rayjob.yaml"
    volumes = [] if any(a.startswith("--volume") for a in args) else VOLUME_ARGS
    result = runner.invoke(
        app,
        [
            "kuberay",
            "render",
            "-c",
            str(write_config(tmp_path, **overrides)),
            "-o",
            str(out),
            *volumes,
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    assert key in result.output, result.output
    assert not out.exists()


def test_a_config_problem_is_said_as_the_config_says_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, **{"runtime_info.input.infrastructure.nnodes": 0})
    result = runner.invoke(app, ["kuberay", "render", "-c", str(config), *VOLUME_ARGS])
    assert result.exit_code == 2
    assert "runtime_info.input.infrastructure.nnodes" in result.output


def test_cli_refuses_a_rayjob_the_crd_rejects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = manifest.rayjob

    def broken(cfg: Any, dep: manifest.Deployment) -> dict[str, Any]:
        job = real(cfg, dep)
        job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["port"] = 6379
        return job

    monkeypatch.setattr(manifest, "rayjob", broken)
    out = tmp_path / "rayjob.yaml"
    result = runner.invoke(
        app, ["kuberay", "render", "-c", str(write_config(tmp_path)), "-o", str(out), *VOLUME_ARGS]
    )
    assert result.exit_code == 1, result.output
    assert (
        "spec.rayClusterSpec.headGroupSpec.rayStartParams.port: expected a string" in result.output
    )
    assert "nothing was written" in result.output
    assert not out.exists()


# -- the schema check -----------------------------------------------------------------------


def _valid_job(tmp_path: Path) -> dict[str, Any]:
    return by_kind(render(two_node_profile(tmp_path)), "RayJob")


def _paths(violations: list[crd.Violation]) -> dict[str, crd.Violation]:
    return {v.path: v for v in violations}


def test_a_broken_rayjob_is_refused_with_its_field_paths(tmp_path: Path) -> None:
    job = copy.deepcopy(_valid_job(tmp_path))
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["imagePullPolcy"] = "Always"  # misspelt
    head["resources"]["limits"]["memory"] = "8GB"  # not a quantity
    head["env"].append({"name": "HVT_WORKDIR", "value": "/elsewhere"})  # a duplicate name
    cluster["authOptions"]["mode"] = "tokens"
    cluster["workerGroupSpecs"][0]["replicas"] = "one"
    del cluster["workerGroupSpecs"][0]["groupName"]
    job["spec"]["shutdownAfterJob"] = True
    job["metadata"]["name"] = "x" * 48

    found = _paths(crd.validate(job))

    containers = "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]"
    unknown = found[f"{containers}.imagePullPolcy"]
    assert unknown.message == "unknown field" and "imagePullPolicy" in unknown.fix
    assert "quantity" in found[f"{containers}.resources.limits.memory"].fix
    duplicate = found[f"{containers}.env[{len(head['env']) - 1}]"]
    assert "duplicate" in duplicate.message and "name='HVT_WORKDIR'" in duplicate.message
    assert "'token'" in found["spec.rayClusterSpec.authOptions.mode"].fix
    assert found["spec.rayClusterSpec.workerGroupSpecs[0].replicas"].fix == "write an integer"
    assert found["spec.rayClusterSpec.workerGroupSpecs[0].groupName"].message == (
        "required field is missing"
    )
    assert "shutdownAfterJobFinishes" in found["spec.shutdownAfterJob"].fix
    assert "at most 47" in found["metadata.name"].fix
    assert len(found) == 8, [v.render() for v in found.values()]
    # the one-line form names the path first
    assert unknown.render().startswith(f"{containers}.imagePullPolcy: unknown field (")


def test_field_paths_quote_keys_with_dots() -> None:
    assert crd.field_path(["spec", "a", 0, "limits", "nvidia.com/gpu"]) == (
        'spec.a[0].limits["nvidia.com/gpu"]'
    )
    assert crd.field_path([]) == "(the manifest)"


def test_strict_schema_refuses_unknown_fields_but_keeps_maps() -> None:
    schema = crd.schema()
    assert schema["additionalProperties"] is False
    spec = schema["properties"]["spec"]
    assert spec["additionalProperties"] is False
    # maps (labels, rayStartParams, resource limits) keep their own additionalProperties
    head = spec["properties"]["rayClusterSpec"]["properties"]["headGroupSpec"]
    assert head["properties"]["rayStartParams"]["additionalProperties"] == {"type": "string"}
    assert (
        "metadata" in schema["properties"]
        and "additionalProperties" not in (schema["properties"]["metadata"])
    )


# -- the vendored CRD -----------------------------------------------------------------------

SCHEMA_DIR = ROOT / "src" / "hvt" / "kuberay" / "schema"


def test_vendored_crd_is_the_pinned_file() -> None:
    raw = (SCHEMA_DIR / crd.CRD_FILE).read_bytes()
    assert hashlib.sha256(gzip.decompress(raw)).hexdigest() == crd.CRD_SHA256
    text = crd.crd_bytes()  # through importlib.resources, as the installed package reads it
    assert hashlib.sha256(text).hexdigest() == crd.CRD_SHA256
    assert b"name: rayjobs.ray.io" in text
    provenance = (SCHEMA_DIR / "PROVENANCE.md").read_text()
    for fact in (crd.KUBERAY_VERSION, crd.KUBERAY_COMMIT, crd.CRD_SOURCE, crd.CRD_SHA256):
        assert fact in provenance
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text()


def test_a_changed_crd_file_is_refused() -> None:
    raw = gzip.decompress((SCHEMA_DIR / crd.CRD_FILE).read_bytes())
    tampered = gzip.compress(raw.replace(b"minReplicas", b"minReplicaz", 1))
    with pytest.raises(crd.CrdError, match=re.escape(f"not the pinned {crd.CRD_SHA256}")):
        crd.crd_bytes(tampered)
    with pytest.raises(crd.CrdError, match="not gzip data"):
        crd.crd_bytes(b"apiVersion: v1\n")


def test_the_crd_ships_in_the_wheel() -> None:
    """hatch puts every file of src/hvt that git does not ignore into the wheel (checked by
    hand: `uv build --wheel` holds hvt/kuberay/schema/* and reads the CRD from there); these
    are the rules that keep it so."""
    import tomllib

    import pathspec

    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    wheel = wheel["targets"]["wheel"]
    assert "src/hvt" in wheel["packages"]
    assert not {"exclude", "only-include", "include"} & wheel.keys()
    ignored = pathspec.GitIgnoreSpec.from_lines((ROOT / ".gitignore").read_text().splitlines())
    for name in (crd.CRD_FILE, "PROVENANCE.md", "LICENSE"):
        path = f"src/hvt/kuberay/schema/{name}"
        assert (ROOT / path).is_file()
        assert not ignored.match_file(path), path
