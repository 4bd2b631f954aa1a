"""`hvt litellm-config` (in the trainer) and `hvt proxy` (the proxy container's entrypoint)."""

from __future__ import annotations

import typer

from hvt.proxy import cli, litellm_config_cli


def register(app: typer.Typer) -> None:
    app.command("litellm-config")(litellm_config_cli.litellm_config_cmd)
    app.command("proxy")(cli.proxy_cmd)
