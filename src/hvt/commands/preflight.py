"""`hvt dryrun`."""

from __future__ import annotations

import typer

from hvt.preflight import dryrun


def register(app: typer.Typer) -> None:
    app.command("dryrun")(dryrun.dryrun)
