"""The `hvt` command line: one typer app, one sub-module per command group."""

from __future__ import annotations

import typer

from hvt import (
    __version__,
    config_cli,
    dryrun_cli,
    litellm_config_cli,
    proxy_cli,
    repos,
    tasks_index,
    verify_venv,
)

app = typer.Typer(
    name="hvt",
    help="Operate the Verl-SWE-RL bundle: config, preflight, launch, clean.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cli.app, name="config")
app.add_typer(tasks_index.app, name="tasks")
app.command("dryrun")(dryrun_cli.dryrun)
app.command("litellm-config")(litellm_config_cli.litellm_config_cmd)
app.command("proxy")(proxy_cli.proxy_cmd)
app.command("repos")(repos.repos_command)
app.command("verify-venv")(verify_venv.verify_venv_command)


@app.callback()
def main() -> None:
    """Operate the Verl-SWE-RL bundle."""


@app.command()
def version() -> None:
    """Print the harbor-verl-train version."""
    typer.echo(__version__)
