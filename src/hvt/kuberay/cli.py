"""`hvt kuberay render`: the run's Kubernetes objects (a KubeRay RayJob and what it needs) as
YAML, validated against the vendored RayJob CRD before anything is written.

Exit codes: 0 written; 2 the config or an option cannot run on KubeRay (each problem names its
config key or option and the fix); 1 the rendered RayJob fails the CRD's schema (each problem
names its field path and the fix; nothing is written).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from hvt.config.bundle import default_config_path
from hvt.config.load import load_or_say, read
from hvt.kuberay import crd, manifest

app = typer.Typer(
    help="Run on Kubernetes with KubeRay: the RayJob and its objects, from the config.",
    no_args_is_help=True,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def kuberay() -> None:
    """Run on Kubernetes with KubeRay: `hvt kuberay render`."""


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings (the embedded config) as literal blocks, no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]], header: str) -> str:
    docs = [yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=100) for o in objects]
    return header + "".join(f"---\n{d}" for d in docs)


def config_text(config_file: Path) -> str:
    """The config as the pods read it: one file, `extends` resolved, comments dropped."""
    data, _ = read(config_file)
    return yaml.safe_dump(data, sort_keys=False, width=100)


def _say(line: str) -> None:
    err.print(f"[red]{escape(line)}[/]")


def render_checked(
    config_file: Path, dep: manifest.Deployment, say: Callable[[str], None] = _say
) -> tuple[list[dict[str, Any]] | None, int]:
    """(objects, 0), or (None, exit code) after saying every problem."""
    cfg = load_or_say(config_file, say)
    if cfg is None:
        return None, 2
    try:
        objects = manifest.objects(cfg, dep, config_text(config_file))
    except manifest.RenderError as exc:
        for problem in exc.problems:
            say(problem.render())
        return None, 2
    rayjob = next(o for o in objects if o["kind"] == crd.KIND)
    violations = crd.validate(rayjob)
    if violations:
        for v in violations:
            say(f"RayJob {v.render()}")
        say(
            f"the rendered RayJob fails KubeRay {crd.KUBERAY_VERSION}'s CRD schema "
            f"({len(violations)} problem(s)); nothing was written"
        )
        return None, 1
    return objects, 0


@app.command("render")
def render(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write here (default: stdout)")
    ] = None,
    name: Annotated[
        str, typer.Option(help="the RayJob's name, and the prefix of the other objects' names")
    ] = manifest.Deployment.name,
    namespace: Annotated[
        str,
        typer.Option(
            help="namespace of the RayJob (its own; the sandbox pods stay in k8s.namespace)"
        ),
    ] = manifest.Deployment.namespace,
    image_prefix: Annotated[
        str,
        typer.Option(envvar="IMAGE_PREFIX", help="registry/prefix of the trainer and proxy images"),
    ] = manifest.Deployment.image_prefix,
    image_tag: Annotated[
        str, typer.Option(envvar="IMAGE_TAG", help="tag of both images (make image)")
    ] = manifest.Deployment.image_tag,
    run_pvc: Annotated[
        str,
        typer.Option(
            help="ReadWriteMany PersistentVolumeClaim of the run directory (checkpoints, "
            "trials, logs), mounted by every Ray pod"
        ),
    ] = manifest.Deployment.run_pvc,
    run_dir: Annotated[
        str, typer.Option(help="where the pods mount it (their HVT_WORKDIR)")
    ] = manifest.Deployment.run_dir,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CLAIM:PATH[:ro|rw]",
            help="another PVC for every Ray pod (models, datasets; read-only unless :rw); "
            "repeat it. The config's paths must lie on these or the run directory",
        ),
    ] = None,
    secret: Annotated[
        str,
        typer.Option(
            help="Secret with the keys litellm_master_key, proxy_signing_key (and "
            "wandb_api_key), mounted at /run/secrets; never in the manifest"
        ),
    ] = manifest.Deployment.secret,
    cpus: Annotated[
        str, typer.Option(help="CPU request = limit of each Ray pod (default: not set)")
    ] = "",
    memory: Annotated[
        str, typer.Option(help="memory request = limit of each Ray pod, e.g. 512Gi")
    ] = "",
    image_pull_secret: Annotated[
        list[str] | None, typer.Option(help="imagePullSecrets of the Ray pods; repeat it")
    ] = None,
) -> None:
    """Render the run as Kubernetes objects for KubeRay, checked against the RayJob CRD."""
    config_file = config or default_config_path()
    try:
        volumes = tuple(manifest.Volume.parse(v) for v in volume or [])
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    dep = manifest.Deployment(
        name=name,
        namespace=namespace,
        image_prefix=image_prefix,
        image_tag=image_tag,
        run_pvc=run_pvc,
        run_dir=run_dir,
        volumes=volumes,
        secret=secret,
        cpus=cpus,
        memory=memory,
        image_pull_secrets=tuple(image_pull_secret or []),
    )
    try:
        objects, code = render_checked(config_file, dep)
    except crd.CrdError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    if objects is None:
        raise typer.Exit(code)
    header = (
        f"# Rendered by `hvt kuberay render` from {config_file}.\n"
        f"# The RayJob passed KubeRay {crd.KUBERAY_VERSION}'s CRD schema. "
        "Apply: kubectl apply --server-side -f <this file>\n"
    )
    text = to_yaml(objects, header)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
    err.print(f"[green]kuberay[/] {escape(summary(objects))}" + (f" -> {output}" if output else ""))


def summary(objects: list[dict[str, Any]]) -> str:
    """One line: the RayJob, its pods and GPUs, the sandbox namespace, the check."""
    job = next(o for o in objects if o["kind"] == crd.KIND)
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    gpus = int(head["resources"]["limits"][manifest.GPU])
    workers = sum(g["replicas"] for g in cluster.get("workerGroupSpecs", []))
    sandboxes = next(o for o in objects if o["kind"] == "Role")["metadata"]["namespace"]
    meta = job["metadata"]
    return (
        f"RayJob {meta['namespace']}/{meta['name']}: 1 head + {workers} worker pod(s), "
        f"{gpus} GPU(s) each; sandbox pods in namespace {sandboxes}; {len(objects)} objects; "
        f"valid against KubeRay {crd.KUBERAY_VERSION}'s RayJob CRD"
    )
