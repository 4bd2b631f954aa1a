"""`hvt images show|base|dockerd`, `hvt pins lock-debian|check`, `hvt verify-venv`."""

from __future__ import annotations

import typer

from hvt.images import base_images, pins_cli, verify_venv


def register(app: typer.Typer) -> None:
    app.add_typer(base_images.app, name="images")
    app.add_typer(pins_cli.app, name="pins")
    app.command("verify-venv")(verify_venv.verify_venv_command)
