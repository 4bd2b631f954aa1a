"""`hvt health trainer`: the trainer container's healthcheck (cheap: no Ray import)."""

from __future__ import annotations

import fcntl
import socket
from pathlib import Path
from typing import Annotated

import typer

from hvt.config.bundle import default_config_path
from hvt.config.load import check
from hvt.config.run_paths import RunPaths


def _run_active(lock: Path) -> bool:
    """The launch lock is held by a live `hvt launch`."""
    if not lock.is_file():
        return False
    with lock.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def health(
    service: Annotated[str, typer.Argument(help="trainer")] = "trainer",
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
) -> None:
    """Exit 0 when the service is healthy; print what is wrong otherwise."""
    if service != "trainer":
        typer.echo(f"unknown service {service!r} (fix: hvt health trainer)", err=True)
        raise typer.Exit(2)
    path = config or default_config_path()
    cfg, _ = check(path)
    if cfg is None:
        typer.echo(f"{path} does not validate (run hvt config validate)", err=True)
        raise typer.Exit(1)
    paths = RunPaths.from_config(cfg)
    if not _run_active(paths.state / "launch.lock"):
        typer.echo("no run active (hvt launch is not holding its lock)", err=True)
        raise typer.Exit(1)
    port = cfg.inputs.infrastructure.ray_port
    with socket.socket() as s:
        s.settimeout(3)
        if s.connect_ex(("127.0.0.1", port)) != 0:
            typer.echo(f"Ray GCS is not answering on 127.0.0.1:{port}", err=True)
            raise typer.Exit(1)
    typer.echo("trainer healthy: run active, Ray up")
