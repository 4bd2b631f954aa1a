"""`hvt worker`: a trainer host other than the head joins the head's Ray cluster and stays.

Order: load the config -> the head's address (--head, else HVT_RAY_HEAD, else
infrastructure.node0_ip:ray_port) -> wait, with progress, until the head's Ray port answers (the
head may still be in its preflight) -> wait for the run's Ray token in the shared run directory
(the head writes <run dir>/run/ray_auth_token; token auth as on the head) -> `ray start
--address=<head> --block` with this node's label, address and GPUs (hvt.run.ray_start).

A join that fails says why (the address, the token or the Ray version) and how to fix it, and
exits 2. Once joined it stays in the foreground; when Ray on this node ends (the head went away,
the node was stopped) it exits 1, so the service's restart policy joins it again.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from hvt import ownership, ray_nodes
from hvt.config.bundle import default_config_path
from hvt.config.load import load_or_say
from hvt.config.run_paths import RunPaths
from hvt.run import clean, ray_auth, ray_start

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
PROGRESS_EVERY_S = 15.0
TOKEN_GRACE_S = 60.0  # the head writes the token before it starts Ray: this is only slack
JOINED = "Ray runtime started"


class JoinError(Exception):
    """The node cannot join; the message names the culprit and the fix."""


def head_address(node0_ip: str, ray_port: int, override: str = "") -> tuple[str, int]:
    """(host, port) of the head's Ray GCS."""
    text = override or (f"{node0_ip}:{ray_port}" if node0_ip else "")
    if not text:
        raise JoinError(
            "no head address: set runtime_info.input.infrastructure.node0_ip to the head "
            "host's cluster address (or HVT_RAY_HEAD=host:port, or --head)"
        )
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JoinError(f"head address {text!r} is not host:port (HVT_RAY_HEAD or --head)")
    return host.strip("[]"), int(port)


def wait_until(
    ready: Callable[[], str],
    what: str,
    timeout_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = console.print,
) -> None:
    """Poll `ready` ("" when ready, else why not) with progress; JoinError past the timeout."""
    start = clock()
    last = -PROGRESS_EVERY_S
    while True:
        why = ready()
        elapsed = clock() - start
        if not why:
            return
        if elapsed >= timeout_s:
            raise JoinError(f"{what}: still not there after {elapsed:.0f} s ({why})")
        if elapsed - last >= PROGRESS_EVERY_S:
            say(f"[cyan]worker[/] waiting for {what} ({elapsed:.0f}/{timeout_s:.0f} s): {why}")
            last = elapsed
        sleep(2.0)


def port_answers(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3):
            return ""
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def join(cmd: list[str], env: dict[str, str], head: str, token: Path, paths: RunPaths) -> int:
    """Run `ray start --block`; JoinError if it never joined, else 1 when Ray here ends."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tail: deque[str] = deque(maxlen=60)
    joined = False
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line)
        if JOINED in line and not joined:
            joined = True
            console.print(f"[green]worker[/] {ray_nodes.node_name()} joined the Ray head at {head}")
    code = proc.wait()
    ownership.stop_ours(paths.workdir)  # the raylet and workers `ray start` left behind
    if stopping:
        console.print(f"[cyan]worker[/] stopped (signal {stopping[0]}); left the cluster")
        return 0
    if not joined:
        raise JoinError(ray_start.explain_join_failure("".join(tail), head, str(token)))
    console.print(
        f"[yellow]worker[/] Ray on this node ended (exit {code}): the head at {head} went away "
        "or this node was removed; the service's restart policy joins it again"
    )
    return 1


def run(config_file: Path, cpu: bool, head_override: str) -> int:
    cfg = load_or_say(config_file, lambda line: console.print(f"[red]{escape(line)}[/]"))
    if cfg is None:
        return 2
    i = cfg.inputs.infrastructure
    paths = RunPaths.from_config(cfg)
    # the sandboxes of this node's trials that a lost run left
    clean.reap_orphans(cfg, lambda line: console.print(f"[yellow]sandboxes[/] {escape(line)}"))
    try:
        host, port = head_address(i.node0_ip, i.ray_port, head_override)
        head = f"{host}:{port}"
        console.print(
            f"[cyan]worker[/] node {ray_nodes.node_name()} joining the Ray head at {head} "
            f"(run directory {paths.workdir})"
        )
        wait_until(
            lambda: port_answers(host, port),
            f"the Ray head at {head} (infrastructure.node0_ip / HVT_RAY_HEAD)",
            i.node_join_timeout,
        )
        token = ray_auth.token_path(paths.state)
        wait_until(
            lambda: "" if token.is_file() and token.stat().st_size else f"no {token}",
            f"the run's Ray token {token} (the head writes it; the run directory must be "
            "shared by every trainer host at the same path)",
            TOKEN_GRACE_S,
        )
        cmd = ["ray", "start", f"--address={head}", "--block"]
        cmd += ray_start.node_args(cfg, paths.ray_temp, cpu)
        env = ray_start.node_env(ownership.marked_env(paths.workdir), cpu)
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        return join(cmd, env, head, token, paths)
    except JoinError as exc:
        console.print(f"[bold red]hvt worker: {exc}[/]")
        return 2


def worker(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file")] = None,
    cpu: Annotated[
        bool,
        typer.Option("--cpu", help="CPU mode, as the head's --cpu: logical GPUs, no vLLM"),
    ] = False,
    head: Annotated[
        str,
        typer.Option(
            "--head",
            envvar="HVT_RAY_HEAD",
            help="the head's Ray address host:port (default infrastructure.node0_ip:ray_port)",
        ),
    ] = "",
) -> None:
    """Join this trainer host to the head's Ray cluster (multi-node) and stay joined."""
    raise typer.Exit(run(config or default_config_path(), cpu, head))
