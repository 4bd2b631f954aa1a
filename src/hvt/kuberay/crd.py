"""KubeRay's RayJob CRD, vendored (schema/, see PROVENANCE.md), and a RayJob checked against it.

`schema()` reads the pinned file once, refuses it unless its sha256 is the pinned one, and
returns the `openAPIV3Schema` of version v1 made strict: an object with listed properties
admits no others (the API server's strict field validation, `kubectl apply
--validate=strict`, refuses unknown fields the same way; without it a misspelt field is
silently dropped). `validate()` checks a manifest against it with jsonschema and adds what
JSON Schema cannot say but the API server and KubeRay check: list-map keys and set items unique
(`x-kubernetes-list-type`), the RayJob's name (a DNS-1035 label of at most 47 characters,
KubeRay's own limit) and namespace. Each problem names its field path, what is wrong and the
fix. Not evaluated here: the CRD's CEL rules (`x-kubernetes-validations`; the manifests we
render use none of the fields they guard) and KubeRay's controller-side checks beyond the
name; the opt-in cluster test (tests/k8s/test_kuberay_cluster.py) asks a real API server.
"""

from __future__ import annotations

import copy
import difflib
import gzip
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

KUBERAY_VERSION = "v1.7.0"
KUBERAY_COMMIT = "59d663aeec13760646da3db9c1cf8cfe883e30b7"
CRD_SOURCE = "ray-operator/config/crd/bases/ray.io_rayjobs.yaml"
CRD_FILE = "ray.io_rayjobs.yaml.gz"
# of the YAML as released (uncompressed): `git show v1.7.0:<CRD_SOURCE> | sha256sum`
CRD_SHA256 = "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5"
API_VERSION = "ray.io/v1"
KIND = "RayJob"
# KubeRay (utils.MaxRayJobNameLength): the RayCluster it makes adds "-" and 5 characters to the
# RayJob's name, and a RayCluster's name may have 53
MAX_NAME = 47
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY_HINT = "write a Kubernetes quantity such as 8, 500m or 64Gi"


class CrdError(RuntimeError):
    """The vendored CRD is missing or is not the pinned file."""


@dataclass(frozen=True)
class Violation:
    """A manifest problem: the field path, what is wrong, how to fix it."""

    path: str
    message: str
    fix: str

    def render(self) -> str:
        return f"{self.path}: {self.message} ({self.fix})"


def crd_bytes(data: bytes | None = None) -> bytes:
    """The CRD's YAML, its sha256 checked (`data`: gzip bytes in place of the vendored file)."""
    if data is None:
        ref = resources.files("hvt.kuberay").joinpath("schema", CRD_FILE)
        try:
            data = ref.read_bytes()
        except OSError as exc:
            raise CrdError(
                f"the vendored RayJob CRD {CRD_FILE} cannot be read ({exc}): reinstall "
                "harbor-verl-train; the file ships in hvt/kuberay/schema/"
            ) from None
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise CrdError(f"the vendored RayJob CRD {CRD_FILE} is not gzip data: {exc}") from None
    digest = hashlib.sha256(text).hexdigest()
    if digest != CRD_SHA256:
        raise CrdError(
            f"the vendored RayJob CRD {CRD_FILE} has sha256 {digest}, not the pinned "
            f"{CRD_SHA256} (KubeRay {KUBERAY_VERSION}, {CRD_SOURCE}): restore it from that tag "
            "(hvt/kuberay/schema/PROVENANCE.md)"
        )
    return text


def openapi_schema(crd: Mapping[str, Any], version: str = "v1") -> dict[str, Any]:
    """The openAPIV3Schema of one version of a CRD."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return dict(entry["schema"]["openAPIV3Schema"])
    raise CrdError(f"the RayJob CRD has no version {version}")


def strict(schema: Any) -> Any:
    """A copy in which every object with listed properties refuses unlisted ones."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out)
    return out


@cache
def schema() -> dict[str, Any]:
    """The strict schema of ray.io/v1 RayJob, from the vendored, checked CRD."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 0.2 s with libyaml, 3 s without
    crd = yaml.load(crd_bytes(), Loader=loader)  # a safe loader, C or Python
    return strict(openapi_schema(crd))  # type: ignore[no-any-return]


# -- paths and messages --------------------------------------------------------------------


def field_path(parts: Iterable[str | int]) -> str:
    """`spec.rayClusterSpec.workerGroupSpecs[0].template...limits["nvidia.com/gpu"]`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out or "(the manifest)"


def _explain(parts: Sequence[str | int]) -> str:
    names = [p for p in parts if isinstance(p, str)]
    return "kubectl explain rayjob" + "".join(f".{n}" for n in names)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
}


def _from_error(err: Any) -> list[Violation]:
    """One jsonschema error as violations (one per unknown or missing field)."""
    parts = list(err.absolute_path)
    kind = err.validator
    instance = err.instance
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = sorted(err.schema.get("properties", {}))
        out = []
        for key in sorted(k for k in instance if k not in known):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            fix = f"did you mean {close[0]!r}?" if close else f"remove it; known here: {shown}"
            out.append(Violation(field_path([*parts, key]), "unknown field", fix))
        return out
    if kind == "required" and isinstance(instance, dict):
        return [
            Violation(field_path([*parts, name]), "required field is missing", "add it")
            for name in err.validator_value
            if name not in instance
        ]
    path = field_path(parts)
    if kind == "type":
        want = err.validator_value
        words = [
            TYPE_WORDS.get(str(w), str(w)) for w in (want if isinstance(want, list) else [want])
        ]
        word = " or ".join(words)
        return [Violation(path, f"expected {word}, got {_describe(instance)}", f"write {word}")]
    if kind == "enum":
        allowed = ", ".join(repr(v) for v in err.validator_value)
        return [Violation(path, f"{_describe(instance)} is not allowed", f"use one of {allowed}")]
    if kind == "pattern":
        quantity = len(parts) >= 2 and parts[-2] in ("limits", "requests")
        fix = QUANTITY_HINT if quantity else f"it must match {err.validator_value}"
        return [Violation(path, f"{_describe(instance)} has the wrong format", fix)]
    if kind == "anyOf" and err.schema.get("x-kubernetes-int-or-string"):
        return [
            Violation(
                path, f"expected an integer or a string, got {_describe(instance)}", "write one"
            )
        ]
    return [Violation(path, err.message, f"see `{_explain(parts)}`")]


def _list_key_violations(node_schema: Any, value: Any, parts: list[str | int]) -> list[Violation]:
    """`x-kubernetes-list-type: map` keys and `set` items must be unique (the API server
    refuses duplicates); JSON Schema has no word for either."""
    out: list[Violation] = []
    if not isinstance(node_schema, dict):
        return out
    if isinstance(value, list):
        list_type = node_schema.get("x-kubernetes-list-type")
        keys = node_schema.get("x-kubernetes-list-map-keys") or []
        seen: dict[Any, int] = {}
        for i, item in enumerate(value):
            if list_type == "map" and keys and isinstance(item, dict):
                ident: Any = tuple(item.get(k) for k in keys)
                what = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
            elif list_type == "set":
                ident, what = repr(item), _describe(item)
            else:
                ident = None
            if ident is not None:
                if ident in seen:
                    out.append(
                        Violation(
                            field_path([*parts, i]),
                            f"duplicate of item {seen[ident]} ({what})",
                            "give each item its own "
                            + (" and ".join(keys) if list_type == "map" else "value"),
                        )
                    )
                else:
                    seen[ident] = i
            out += _list_key_violations(node_schema.get("items"), item, [*parts, i])
    elif isinstance(value, dict):
        props = node_schema.get("properties") or {}
        extra = node_schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            out += _list_key_violations(sub, item, [*parts, key])
    return out


def _metadata_violations(manifest: Mapping[str, Any]) -> list[Violation]:
    out = []
    if manifest.get("apiVersion") != API_VERSION:
        out.append(
            Violation(
                "apiVersion", f"{_describe(manifest.get('apiVersion'))}", f"write {API_VERSION}"
            )
        )
    if manifest.get("kind") != KIND:
        out.append(Violation("kind", f"{_describe(manifest.get('kind'))}", f"write {KIND}"))
    meta = manifest.get("metadata")
    if not isinstance(meta, dict):
        return [*out, Violation("metadata", "required mapping is missing", "add metadata.name")]
    name = meta.get("name")
    if not isinstance(name, str) or not DNS1035_LABEL.match(name) or len(name) > MAX_NAME:
        out.append(
            Violation(
                "metadata.name",
                f"{_describe(name)} is not a RayJob name",
                f"use a lowercase DNS-1035 label (a-z first, then a-z, 0-9, '-') of at most "
                f"{MAX_NAME} characters (KubeRay adds a suffix for its RayCluster)",
            )
        )
    namespace = meta.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or not DNS1123_LABEL.match(namespace) or len(namespace) > 63
    ):
        out.append(
            Violation(
                "metadata.namespace",
                f"{_describe(namespace)} is not a namespace name",
                "use a lowercase DNS label of at most 63 characters",
            )
        )
    return out


def validate(manifest: Mapping[str, Any]) -> list[Violation]:
    """Every problem of a RayJob manifest against the vendored CRD; [] when it is valid."""
    from jsonschema import Draft202012Validator

    rayjob_schema = schema()
    validator = Draft202012Validator(rayjob_schema)
    out = _metadata_violations(manifest)
    for err in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path))):
        out += _from_error(err)
    out += _list_key_violations(rayjob_schema, manifest, [])
    return out
