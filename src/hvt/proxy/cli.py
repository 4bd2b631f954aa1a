"""`hvt proxy`: the LiteLLM proxy container's entrypoint (see supervisor.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from hvt.proxy import litellm_config
from hvt.proxy import workers as workers_mod
from hvt.proxy.supervisor import ProxyError, ProxyOptions, Supervisor

if TYPE_CHECKING:
    from hvt.config.model import RunConfig

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(message: str) -> None:
    err.print(f"[hvt proxy] {message}", markup=False)


def _load_profile(config: Path) -> RunConfig:
    from hvt.config.load import load
    from hvt.config.problems import ConfigError

    try:
        return load(config)
    except ConfigError as exc:
        err.print(f"[red][hvt proxy] {exc.source}: {len(exc.problems)} problem(s)[/]")
        for problem in exc.problems:
            err.print(problem.render(), markup=False)
        raise typer.Exit(2) from None


def _check_workers(value: str | None) -> str | None:
    """Refuse a bad --workers while parsing, naming the option and the fix."""
    if value is not None:
        try:
            workers_mod.parse(value)
        except workers_mod.WorkersError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def _workers(option: str | None, profile: RunConfig | None) -> int:
    """--workers, else the profile's infrastructure.litellm_workers, else 1; `auto` resolved."""
    if option is not None:
        requested = workers_mod.parse(option)
    elif profile is not None:
        requested = workers_mod.parse(
            profile.inputs.infrastructure.litellm_workers, workers_mod.CONFIG_KEY
        )
    else:
        requested = 1
    count, line = workers_mod.resolve(requested, workers_mod.cpu_budget())
    _say(line)
    return count


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
        str | None,
        typer.Option(
            callback=_check_workers,
            metavar="N|auto",
            help="LiteLLM worker processes: a number, or auto (one per usable core less one, "
            "1 to 8; cgroup quota and affinity respected). Default: the profile's "
            "infrastructure.litellm_workers with --config, else 1",
        ),
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="serve TLS with this cert")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="... and this key")] = None,
) -> None:
    """Wait for the LiteLLM config, run LiteLLM with the master key, restart it on change."""
    profile = _load_profile(config) if config is not None else None
    served = profile.inputs.model.served_model_name if profile is not None else None
    options = ProxyOptions(
        config=litellm_config_path or litellm_config.default_path(),
        host=host,
        port=port,
        served_model_name=served,
        trials_root=trials_root,
        wait_timeout_s=wait_timeout,
        workers=_workers(workers, profile),
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
