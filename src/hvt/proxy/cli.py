"""`hvt proxy`: the LiteLLM proxy container's entrypoint (see supervisor.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hvt.proxy import litellm_config
from hvt.proxy.supervisor import ProxyError, ProxyOptions, Supervisor

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(message: str) -> None:
    err.print(f"[hvt proxy] {message}", markup=False)


def _served_name_from_config(config: Path) -> str:
    from hvt.config.load import load
    from hvt.config.problems import ConfigError

    try:
        return load(config).inputs.model.served_model_name
    except ConfigError as exc:
        err.print(f"[red][hvt proxy] {exc.source}: {len(exc.problems)} problem(s)[/]")
        for problem in exc.problems:
            err.print(problem.render(), markup=False)
        raise typer.Exit(2) from None


def proxy_cmd(
    litellm_config_path: Annotated[
        Path | None,
        typer.Option(
            "--litellm-config",
            help=f"LiteLLM config to serve (default ${litellm_config.PATH_ENV} or "
            f"{litellm_config.DEFAULT_PATH})",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="run profile: refuse a LiteLLM config without model.served_model_name"),
    ] = None,
    port: Annotated[
        int, typer.Option(help="listen port (in compose: 8002, published as litellm_port)")
    ] = 8002,
    host: Annotated[str, typer.Option(help="listen address")] = "0.0.0.0",
    trials_root: Annotated[
        Path | None,
        typer.Option(help="trials root for trajectory files (default $HVT_TRIALS_ROOT)"),
    ] = None,
    wait_timeout: Annotated[
        float, typer.Option(help="seconds to wait for the LiteLLM config; 0 waits forever")
    ] = 0.0,
    workers: Annotated[
        int, typer.Option(min=1, help="LiteLLM worker processes (about 40 req/s per core)")
    ] = 1,
    ssl_certfile: Annotated[Path | None, typer.Option(help="serve TLS with this cert")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="... and this key")] = None,
) -> None:
    """Wait for the LiteLLM config, run LiteLLM with the master key, restart it on change."""
    served = _served_name_from_config(config) if config is not None else None
    options = ProxyOptions(
        config=litellm_config_path or litellm_config.default_path(),
        host=host,
        port=port,
        served_model_name=served,
        trials_root=trials_root,
        wait_timeout_s=wait_timeout,
        workers=workers,
        ssl_certfile=ssl_certfile or _env_path("HVT_PROXY_TLS_CERT"),
        ssl_keyfile=ssl_keyfile or _env_path("HVT_PROXY_TLS_KEY"),
    )
    try:
        supervisor = Supervisor(options, say=_say)
        signal.signal(signal.SIGTERM, supervisor.request_stop)
        signal.signal(signal.SIGINT, supervisor.request_stop)
        code = supervisor.run()
    except ProxyError as exc:
        err.print(f"[red][hvt proxy] {exc}[/]")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None
