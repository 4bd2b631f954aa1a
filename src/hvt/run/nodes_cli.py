"""`hvt nodes`: the run's Ray cluster by node; `--wait` until every trainer node has joined.

The head runs `hvt nodes --wait` before main_ppo (multi-node), `hvt nodes --lost --watch` beside
it (it exits naming the first trainer node the cluster loses, so that the launch stops a run that
would otherwise hang on the dead node's actors), and `hvt nodes --lost` after a failed run to
name the trainer node it lost. Users run plain `hvt nodes` in the trainer
container to see who joined: name, role, address, GPUs, alive or why it died.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hvt import ray_nodes
from hvt.config.bundle import default_config_path
from hvt.config.load import load_or_say
from hvt.config.run_paths import RunPaths
from hvt.run import node_checks, ray_auth, worker

WATCH_POLL_S = 5.0
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _connect(address: str, state: Path) -> None:
    import ray

    host, _, port = address.rpartition(":")
    why = worker.port_answers(host.strip("[]"), int(port))
    if why:
        console.print(
            f"[red]no Ray head answers at {address} ({why}): is the trainer's `hvt launch` "
            "running? (RAY_ADDRESS sets another address)[/]"
        )
        raise typer.Exit(2)
    token = ray_auth.token_path(state)
    # the run's token file (this bundle's own head); a token in the environment wins (KubeRay
    # gives every Ray container RAY_AUTH_TOKEN from its Secret)
    if token.is_file() and not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(token))
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)


def table(nodes: list[ray_nodes.Node]) -> Table:
    out = Table("node", "role", "address", "GPUs", "state")
    for n in nodes:
        state = "alive" if n.alive else f"dead: {n.death or 'no reason recorded'}"
        out.add_row(n.name, "head" if n.head else "worker", n.ip, f"{n.gpus:g}", state)
    return out


def _checks(alive: list[ray_nodes.Node], gpus_per_node: int, paths: RunPaths) -> int:
    """node_checks on every alive node, a line each; 2 when one failed."""
    results = node_checks.check(alive, gpus_per_node, paths.state)
    for r in results:
        mark = "[red]fail[/]" if not r.ok else "[yellow]warn[/]" if r.warn else "[green]ok[/]"
        console.print(f"[cyan]nodes[/] {mark} {r.name}: {escape(r.detail)}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        console.print(f"[bold red]nodes: {len(failed)} check(s) failed: {', '.join(failed)}[/]")
        return 2
    return 0


def nodes(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait until nnodes (and node_names) have joined")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(help="check every node: GPUs, the shared run directory, clock skew"),
    ] = False,
    lost: Annotated[
        bool, typer.Option("--lost", help="name the nodes that died and did not come back")
    ] = False,
    timeout: Annotated[
        int | None, typer.Option(help="--wait limit, s (default infrastructure.node_join_timeout)")
    ] = None,
    within: Annotated[
        float,
        typer.Option(
            help="--lost: look again for this long until a node is found dead (Ray marks a "
            "silent node dead after its health checks fail: about a minute)"
        ),
    ] = 0.0,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="--lost: keep looking (every 5 s) until a node is lost, however long; what "
            "hvt launch runs beside a multi-node trainer",
        ),
    ] = False,
) -> None:
    """The trainer nodes of this run's Ray cluster (exit 3 with --lost when one is gone)."""
    cfg = load_or_say(
        config or default_config_path(), lambda line: console.print(f"[red]{escape(line)}[/]")
    )
    if cfg is None:
        raise typer.Exit(2)
    i = cfg.inputs.infrastructure
    paths = RunPaths.from_config(cfg)
    _connect(os.environ.get("RAY_ADDRESS") or f"127.0.0.1:{i.ray_port}", paths.state)
    if wait:
        try:
            alive = ray_nodes.wait_for_nodes(
                i.nnodes,
                i.node_names,
                i.node_join_timeout if timeout is None else timeout,
                say=lambda line: console.print(f"[cyan]nodes[/] {line}"),
            )
        except ray_nodes.ClusterError as exc:
            console.print(f"[bold red]nodes: {exc}[/]")
            raise typer.Exit(2) from None
        raise typer.Exit(_checks(alive, i.ngpus_per_node, paths))
    found = ray_nodes.snapshot()
    if check:
        raise typer.Exit(_checks([n for n in found if n.alive], i.ngpus_per_node, paths))
    if lost:
        # --watch: only what dies from now on, however long that takes
        watched = {n.node_id for n in found if n.alive}
        deadline = float("inf") if watch else time.monotonic() + within
        gone = [] if watch else ray_nodes.lost(found)
        while not gone and time.monotonic() < deadline:
            time.sleep(WATCH_POLL_S if watch else 2.0)
            now = ray_nodes.snapshot()
            gone = ray_nodes.lost_since(watched, now) if watch else ray_nodes.lost(now)
        for n in gone:  # a line each, after LOST_PREFIX: Ray prints lines of its own here
            reason = n.death or "no reason recorded"
            console.print(f"{ray_nodes.LOST_PREFIX}{n.name} ({n.ip}): {reason}", markup=False)
        raise typer.Exit(ray_nodes.EXIT_LOST if gone else 0)
    console.print(table(found))
