"""`hvt dryrun`, with the sandbox hosts' task-image check registered into the preflight."""

from __future__ import annotations

import typer

from hvt.preflight import dryrun
from hvt.sandbox.images_check import check_task_images


def register(app: typer.Typer) -> None:
    dryrun.register_group(check_task_images)  # also what `hvt launch` runs before training
    app.command("dryrun")(dryrun.dryrun)
