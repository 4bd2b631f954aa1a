"""`hvt smoke stack` (make smoke)."""

from __future__ import annotations

import typer

from hvt.smoke import cli


def register(app: typer.Typer) -> None:
    app.add_typer(cli.app, name="smoke")
