"""`hvt smoke`: the CPU smoke's own steps (certs for the TLS sandbox daemon; the rollout step)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from hvt.tls_certs import write_daemon_set

app = typer.Typer(help="The CPU smoke run (make smoke).", no_args_is_help=True)


@app.command("certs")
def certs(
    out: Annotated[Path, typer.Option(help="directory for server/ and client/")],
    san: Annotated[list[str], typer.Option(help="names and IPs the daemon answers to")],
    owner: Annotated[int | None, typer.Option(help="uid that gets the client files")] = None,
) -> None:
    """Issue a CA, a server certificate for the TLS sandbox daemon and a client certificate."""
    write_daemon_set(out, [*san, "localhost", "127.0.0.1"])
    if owner is not None:
        for path in [out / "client", *(out / "client").iterdir()]:
            os.chown(path, owner, owner)
    typer.echo(f"certificates in {out} (server/ for dockerd, client/ for the trainer)")
