"""`hvt sandbox check`: Harbor's oracle on every task and sandbox host."""

from __future__ import annotations

import typer

from hvt.sandbox import cli


def register(app: typer.Typer) -> None:
    app.add_typer(cli.app, name="sandbox")
