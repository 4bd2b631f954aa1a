"""`hvt clean`: stop what this bundle started, and nothing else.

Ours means: a process carrying HVT_BUNDLE=<workdir> (see ownership.py), the state directory
<workdir>/run, this bundle's Ray temp dir, and, on request, this project's logs, trials and
sandboxes labelled harbor-run=<pod_name_prefix>. Never by broad name, never every GPU process,
never checkpoints or wandb runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer
from rich.console import Console

from hvt import ownership, sandbox_labels
from hvt.config.bundle import default_config_path
from hvt.config.load import check
from hvt.config.model import RunConfig
from hvt.config.run_paths import RunPaths

LABEL = sandbox_labels.RUN_LABEL
SAFE_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
STOP_GRACE_S = 10.0

console = Console(highlight=False, soft_wrap=True)


class CleanError(Exception):
    """A request clean refuses; the message names the culprit and the fix."""


@dataclass
class Action:
    what: str
    run: Callable[[], str]


def check_prefix(prefix: str) -> str:
    if not prefix or not SAFE_PREFIX.match(prefix):
        raise CleanError(
            f"harbor_agent.pod_name_prefix {prefix!r} is empty or a pattern: deleting by it "
            "could remove sandboxes that are not this run's (set a plain name such as "
            "swe-lego-live-rl)"
        )
    return prefix


def _stop(procs: list[psutil.Process]) -> str:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    killed = f", {len(alive)} needed SIGKILL" if alive else ""
    return f"stopped {len(procs)} process(es){killed}"


def _remove_tree(path: Path) -> str:
    shutil.rmtree(path, ignore_errors=False)
    return f"removed {path}"


def _remove_files(files: list[Path]) -> str:
    for f in files:
        f.unlink(missing_ok=True)
    return f"removed {len(files)} file(s)"


def _delete_pods(cfg: RunConfig, prefix: str) -> str:
    from kubernetes import client, config

    k = cfg.inputs.k8s
    kubeconfig = k.kubeconfig or os.environ.get("KUBECONFIG") or None
    api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    core = client.CoreV1Api(api_client)
    selector = f"{LABEL}={prefix}"
    pods = core.list_namespaced_pod(k.namespace, label_selector=selector, _request_timeout=30)
    names = [p.metadata.name for p in pods.items if p.metadata and p.metadata.name]
    for name in names:
        core.delete_namespaced_pod(name, k.namespace, grace_period_seconds=5, _request_timeout=30)
    return f"deleted {len(names)} pod(s) labelled {selector} in {k.namespace}"


def sandbox_daemons(cfg: RunConfig) -> list[tuple[str, Path | None]]:
    """The Docker daemons sandboxes run on: each fleet host, or the one docker_host; with the
    certificate directory of each tcp:// host."""
    from hvt.preflight.backend import cert_dir_for_config

    h = cfg.inputs.harbor_agent

    def certs(host: str, configured: Path | None) -> Path | None:
        if not host.startswith("tcp://"):
            return None
        if h.allow_insecure_test_network and host.endswith(":2375"):
            return None
        return configured

    if h.docker_hosts:
        return [
            (
                d.docker_host,
                certs(
                    d.docker_host,
                    Path(d.docker_cert_path) if d.docker_cert_path else cert_dir_for_config(cfg),
                ),
            )
            for d in h.docker_hosts
        ]
    host = h.docker_host or "unix:///var/run/docker.sock"
    return [(host, certs(host, cert_dir_for_config(cfg)))]


@dataclass
class Sandboxes:
    """This run's labelled containers and networks on one daemon. The networks are what a
    trainer killed between `compose up` creating them and starting the containers leaves."""

    containers: list[Any]
    networks: list[Any]

    def counts(self) -> str:
        networks = f" and {len(self.networks)} network(s)" if self.networks else ""
        return f"{len(self.containers)} sandbox container(s){networks}"

    def names(self) -> str:
        names = [c.name for c in self.containers] + [n.name for n in self.networks]
        return ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")


def find_sandboxes(host: str, certs: Path | None, prefix: str) -> Sandboxes:
    from hvt.docker_remote import connect

    client = connect(host, certs, timeout=30)
    label = {"label": f"{LABEL}={prefix}"}
    return Sandboxes(
        containers=list(client.containers.list(all=True, filters=label)),
        networks=list(client.networks.list(filters=label)),
    )


def remove_sandboxes(found: Sandboxes, host: str, prefix: str) -> str:
    for c in found.containers:
        c.remove(force=True)
    for n in found.networks:  # after the containers: a network in use cannot go
        n.remove()
    return f"removed {found.counts()} labelled {LABEL}={prefix} on {host}"


def orphans(found: Sandboxes, host: str) -> Sandboxes:
    """The sandboxes a process of this host (`harbor-owner-host`) made and that process is
    gone: what a trainer stopped mid-trial leaves. A live owner, or another host's, keeps its
    sandboxes: they may be another run's that shares the prefix."""

    def orphaned(obj: Any) -> bool:
        labels = obj.labels if hasattr(obj, "labels") else obj.attrs.get("Labels") or {}
        pid = labels.get(sandbox_labels.OWNER_PID_LABEL, "")
        return (
            labels.get(sandbox_labels.OWNER_HOST_LABEL) == host
            and pid.isdigit()
            and not psutil.pid_exists(int(pid))
        )

    return Sandboxes(
        containers=[c for c in found.containers if orphaned(c)],
        networks=[n for n in found.networks if orphaned(n)],
    )


def reap_orphans(cfg: RunConfig, say: Callable[[str], None]) -> int:
    """Remove, on every Docker sandbox host, this run's sandboxes whose maker on this host is
    gone (containers, then networks); how many containers and networks went. A daemon that
    cannot be reached is said and skipped, and nothing here raises: `hvt launch` and `hvt
    worker` call it on start. Kubernetes pods have their own reaper and deadline."""
    if cfg.inputs.harbor_agent.backend == "kubernetes":
        return 0
    try:
        prefix = check_prefix(cfg.inputs.harbor_agent.pod_name_prefix)
        daemons = sandbox_daemons(cfg)
    except Exception as exc:  # never fail or hold up a start over it: `hvt clean --pods` remains
        say(f"could not look for orphaned sandboxes: {exc} (hvt clean --pods removes them)")
        return 0
    removed = 0
    for host, certs in daemons:
        try:
            found = orphans(find_sandboxes(host, certs, prefix), sandbox_labels.this_host())
            if found.containers or found.networks:
                say(f"{remove_sandboxes(found, host, prefix)}: their trial processes are gone")
                removed += len(found.containers) + len(found.networks)
        except Exception as exc:
            say(f"could not check {host} for orphaned sandboxes: {exc}")
    return removed


def _container_actions(cfg: RunConfig, prefix: str) -> tuple[list[Action], list[str]]:
    """One action per daemon that holds labelled sandboxes; a note for each that holds none
    or cannot be reached (clean goes on with the others)."""
    actions: list[Action] = []
    notes: list[str] = []
    for host, certs in sandbox_daemons(cfg):
        try:
            found = find_sandboxes(host, certs, prefix)
        except Exception as exc:
            notes.append(f"could not list sandboxes on {host}: {exc} (check the daemon)")
            continue
        if not found.containers and not found.networks:
            notes.append(f"no sandbox container or network labelled {LABEL}={prefix} on {host}")
            continue
        actions.append(
            Action(
                f"remove {found.counts()} labelled {LABEL}={prefix} on {host} ({found.names()})",
                lambda f=found, h=host: remove_sandboxes(f, h, prefix),  # type: ignore[misc]
            )
        )
    return actions, notes


def plan(
    cfg: RunConfig, paths: RunPaths, *, logs: bool, trials: bool, pods: bool
) -> tuple[list[Action], list[str]]:
    """What clean would do, and notes about things it will not touch."""
    actions: list[Action] = []
    notes: list[str] = []
    procs = list(ownership.our_processes(paths.workdir))
    if procs:
        names = ", ".join(ownership.describe(p) for p in procs[:6])
        more = f" and {len(procs) - 6} more" if len(procs) > 6 else ""
        actions.append(Action(f"stop this bundle's processes: {names}{more}", lambda: _stop(procs)))
    port = cfg.inputs.infrastructure.litellm_port
    holder = ownership.listener(port)
    if holder is not None and holder not in procs and not ownership.is_ours(holder, paths.workdir):
        notes.append(
            f"port {port} is held by {ownership.describe(holder)}, which this bundle "
            "did not start: left alone (stop it yourself if it is a stray LiteLLM)"
        )
    for directory in (paths.state, paths.ray_temp):
        if directory.is_dir():
            actions.append(Action(f"remove {directory}", lambda d=directory: _remove_tree(d)))  # type: ignore[misc]
    if logs and paths.logs.is_dir():
        files = sorted(paths.logs.glob("*.log"))
        if files:
            actions.append(
                Action(
                    f"remove {len(files)} log file(s) in {paths.logs}", lambda: _remove_files(files)
                )
            )
    if trials and paths.project_trials.is_dir():
        actions.append(
            Action(
                f"remove trials {paths.project_trials}", lambda: _remove_tree(paths.project_trials)
            )
        )
    if pods:
        prefix = check_prefix(cfg.inputs.harbor_agent.pod_name_prefix)
        if cfg.inputs.harbor_agent.backend == "kubernetes":
            actions.append(
                Action(
                    f"delete pods labelled {LABEL}={prefix} in namespace "
                    f"{cfg.inputs.k8s.namespace}",
                    lambda: _delete_pods(cfg, prefix),
                )
            )
        else:
            sandbox_actions, sandbox_notes = _container_actions(cfg, prefix)
            actions += sandbox_actions
            notes += sandbox_notes
    notes.append(f"kept: checkpoints ({paths.checkpoints}) and wandb runs ({paths.wandb})")
    return actions, notes


def _load(config_file: Path) -> RunConfig:
    cfg, problems = check(config_file)
    if cfg is None:
        raise CleanError("; ".join(p.render() for p in problems))
    return cfg  # unfilled markers do not matter for cleaning


def clean(
    logs: Annotated[bool, typer.Option("--logs", help="also remove logs/*.log")] = False,
    trials: Annotated[
        bool, typer.Option("--trials", help="also remove this project's trials")
    ] = False,
    pods: Annotated[
        bool,
        typer.Option("--pods", help="also delete sandboxes labelled harbor-run=<pod_name_prefix>"),
    ] = False,
    all_: Annotated[bool, typer.Option("--all", help="--logs --trials --pods")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="list, change nothing")] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file")] = None,
) -> None:
    """Stop this bundle's LiteLLM and Ray and remove its temp state. Keeps checkpoints and wandb."""
    try:
        cfg = _load(config or default_config_path())
        paths = RunPaths.from_config(cfg)
        actions, notes = plan(
            cfg, paths, logs=logs or all_, trials=trials or all_, pods=pods or all_
        )
    except CleanError as exc:
        console.print(f"[bold red]hvt clean: {exc}[/]")
        raise typer.Exit(2) from None
    if not actions:
        console.print("nothing of this bundle's to clean")
    failed = 0
    for action in actions:
        if dry_run:
            console.print(f"[cyan]would[/] {action.what}")
            continue
        started = time.monotonic()
        try:
            result = action.run()
        except Exception as exc:
            failed += 1
            console.print(f"[bold red]failed[/] {action.what}: {exc}")
            continue
        console.print(f"[green]done[/] {result} ({time.monotonic() - started:.1f} s)")
    for note in notes:
        console.print(f"[dim]{note}[/]")
    raise typer.Exit(1 if failed else 0)
