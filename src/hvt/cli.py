"""The `hvt` command line: one typer app; hvt/commands/<part>.py adds each part's commands."""

from __future__ import annotations

import typer

from hvt import __version__
from hvt.commands import (
    config,
    images,
    kuberay,
    preflight,
    proxy,
    repos,
    run,
    sandbox,
    smoke,
)

app = typer.Typer(
    name="hvt",
    help="Operate the Verl-SWE-RL bundle: config, preflight, launch, clean.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config.register(app)
preflight.register(app)
run.register(app)
proxy.register(app)
repos.register(app)
images.register(app)
sandbox.register(app)
kuberay.register(app)
smoke.register(app)


@app.callback()
def main() -> None:
    """Operate the Verl-SWE-RL bundle."""


@app.command()
def version() -> None:
    """Print the harbor-verl-train version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
