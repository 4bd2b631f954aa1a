"""`hvt config validate|show`."""

from __future__ import annotations

import typer

from hvt.config import cli


def register(app: typer.Typer) -> None:
    app.add_typer(cli.app, name="config")
