"""`hvt repos`."""

from __future__ import annotations

import typer

from hvt.repos import trees


def register(app: typer.Typer) -> None:
    app.command("repos")(trees.repos_command)
