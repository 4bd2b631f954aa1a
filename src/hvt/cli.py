"""The `hvt` command line: one typer app, one sub-module per command group."""

from __future__ import annotations

import typer

from hvt import (
    __version__,
    base_images,
    clean,
    config_cli,
    dryrun_cli,
    health,
    launch,
    litellm_config_cli,
    metrics,
    pins_cli,
    proxy_cli,
    repos,
    smoke,
    tasks_index,
    verify_venv,
    wandb_sync,
)

app = typer.Typer(
    name="hvt",
    help="Operate the Verl-SWE-RL bundle: config, preflight, launch, clean.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cli.app, name="config")
app.add_typer(smoke.app, name="smoke")
app.add_typer(base_images.app, name="images")
app.add_typer(tasks_index.app, name="tasks")
app.add_typer(pins_cli.app, name="pins")
app.command("dryrun")(dryrun_cli.dryrun)
app.command("launch")(launch.launch)
app.command("health")(health.health)
app.command("wandb-sync")(wandb_sync.wandb_sync)
app.command("litellm-config")(litellm_config_cli.litellm_config_cmd)
app.command("proxy")(proxy_cli.proxy_cmd)
app.command("clean")(clean.clean)
app.command("metrics")(metrics.metrics)
app.command("repos")(repos.repos_command)
app.command("verify-venv")(verify_venv.verify_venv_command)


@app.callback()
def main() -> None:
    """Operate the Verl-SWE-RL bundle."""


@app.command()
def version() -> None:
    """Print the harbor-verl-train version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
