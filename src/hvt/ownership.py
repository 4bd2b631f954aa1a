"""Which processes this bundle started: they carry HVT_BUNDLE=<workdir> in their environment.

Every process the bundle launches (Ray, LiteLLM, their workers) inherits the marker, so `hvt
clean` and the preflight can tell ours from anyone else's without matching by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil

MARKER = "HVT_BUNDLE"


def marker_value(workdir: Path) -> str:
    return str(workdir.resolve())


def marked_env(workdir: Path) -> dict[str, str]:
    """The environment for a child process the bundle starts."""
    return {**os.environ, MARKER: marker_value(workdir)}


def is_ours(proc: psutil.Process, workdir: Path) -> bool:
    try:
        return proc.environ().get(MARKER) == marker_value(workdir)
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def our_processes(workdir: Path) -> Iterator[psutil.Process]:
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid != me and is_ours(proc, workdir):
            yield proc


def stop_ours(workdir: Path, timeout_s: float = 15.0) -> None:
    """Terminate this bundle's processes on this host (SIGKILL what outlives the timeout)."""
    procs = list(our_processes(workdir))
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.kill()


def listener(port: int) -> psutil.Process | None:
    """The process listening on a TCP port (IPv4 or IPv6), if this host can see it."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None
            try:
                return psutil.Process(conn.pid)
            except psutil.NoSuchProcess:
                return None
    return None


def port_in_use(port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
        for c in psutil.net_connections(kind="tcp")
    )


def describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())[:80] or proc.name()
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        cmd = "?"
    return f"pid {proc.pid} ({cmd})"
