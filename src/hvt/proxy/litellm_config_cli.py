"""`hvt litellm-config`: wait for every vLLM replica in Ray, write the LiteLLM config."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hvt.proxy import discovery, litellm_config
from hvt.proxy.discovery import DiscoveryError, Replica

err = Console(stderr=True, highlight=False, soft_wrap=True)


def _plan(
    config: Path | None, expected: int | None, served_model_name: str | None
) -> tuple[int, str]:
    served = served_model_name
    count = expected
    if config is not None:
        from hvt.config.load import load
        from hvt.config.problems import ConfigError

        try:
            cfg = load(config)
        except ConfigError as exc:
            err.print(f"[bold red]{exc.source}: {len(exc.problems)} problem(s)[/]")
            for problem in exc.problems:
                err.print(problem.render(), markup=False)
            raise typer.Exit(2) from None
        inputs = cfg.inputs
        served = served or inputs.model.served_model_name
        if count is None:
            try:
                count = discovery.expected_replicas(
                    inputs.infrastructure.nnodes,
                    inputs.infrastructure.ngpus_per_node,
                    inputs.vllm.gen_tp,
                )
            except DiscoveryError as exc:
                err.print(f"[red]{config}: {exc}[/]")
                raise typer.Exit(2) from None
    if count is None:
        err.print(
            "[red]expected replica count unknown: pass --config config/config.yaml "
            "(nnodes x ngpus_per_node / vllm.gen_tp) or --expected N[/]"
        )
        raise typer.Exit(2)
    if count < 1:
        err.print(f"[red]--expected must be >= 1, got {count}[/]")
        raise typer.Exit(2)
    served = served or "vllm_model"
    try:
        litellm_config.check_served_model_name(served)
    except ValueError as exc:
        err.print(
            f"[red]runtime_info.input.model.served_model_name / --served-model-name: {exc}[/]"
        )
        raise typer.Exit(2) from None
    return count, served


class _Progress:
    """One line when the picture changes, and at least every `every_s` seconds."""

    def __init__(self, expected: int, timeout_s: float, every_s: float = 30.0) -> None:
        self.expected = expected
        self.timeout_s = timeout_s
        self.every_s = every_s
        self._last: tuple[object, ...] = ()
        self._last_t = -every_s

    def __call__(self, ready: Sequence[Replica], waiting: dict[int, str], elapsed: float) -> None:
        state = (tuple(r.index for r in ready), tuple(sorted(waiting)))
        if state == self._last and elapsed - self._last_t < self.every_s:
            return
        self._last, self._last_t = state, elapsed
        names = ", ".join(r.where for r in ready) or "none"
        pending = [
            f"vllm_server_{i}_0 ({waiting.get(i, 'not registered')})"
            for i in range(self.expected)
            if i not in {r.index for r in ready}
        ]
        err.print(
            f"waiting for vLLM replicas: {len(ready)}/{self.expected} ready [{names}]"
            + (f"; pending: {'; '.join(pending)}" if pending else "")
            + f" ({elapsed:.0f}/{self.timeout_s:.0f} s)",
            markup=False,
        )


def litellm_config_cmd(
    config: Annotated[
        Path | None,
        typer.Option(help="run profile (config/config.yaml): served name and replica count"),
    ] = None,
    expected: Annotated[
        int | None, typer.Option(help="replicas to wait for (default: GPUs / vllm.gen_tp)")
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="vLLM served model name (default from --config)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help=f"LiteLLM config to write (default ${litellm_config.PATH_ENV} or "
            f"{litellm_config.DEFAULT_PATH})"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for all replicas")] = (
        discovery.DEFAULT_TIMEOUT_S
    ),
    poll: Annotated[float, typer.Option(help="seconds between Ray polls")] = 5.0,
    watch: Annotated[
        bool, typer.Option(help="keep running; rewrite the file when the replica set changes")
    ] = False,
    allow_partial: Annotated[
        bool, typer.Option(help="on timeout, write the replicas that answer instead of failing")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray address (default RAY_ADDRESS or auto)")
    ] = None,
    request_timeout: Annotated[int, typer.Option(help="LiteLLM request timeout, seconds")] = 900,
) -> None:
    """Wait until every vLLM replica (Ray actors vllm_server_<i>_0) serves, write LiteLLM config."""
    count, served = _plan(config, expected, served_model_name)
    path = out or litellm_config.default_path()
    settings = litellm_config.ProxySettings(served, request_timeout_s=request_timeout)
    import os

    source = discovery.RaySource(ray_address or os.environ.get("RAY_ADDRESS"))
    err.print(
        f"discovering {count} vLLM replica(s) of {served!r} in Ray; writing {path}", markup=False
    )
    try:
        replicas = discovery.wait_for_replicas(
            source, count, timeout, poll, _Progress(count, timeout), allow_partial=allow_partial
        )
    except DiscoveryError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    if len({r.index for r in replicas} & set(range(count))) < count:
        err.print(f"[yellow]--allow-partial: writing {len(replicas)}/{count} replicas[/]")
    if len(replicas) > count:
        err.print(
            f"[yellow]{len(replicas)} replicas answer but {count} were expected; serving all "
            "(check nnodes/ngpus_per_node/gen_tp)[/]"
        )
    _write(path, replicas, settings)
    if watch:
        _watch(source, path, replicas, settings, count, poll)
    source.close()


def _write(path: Path, replicas: Sequence[Replica], settings: litellm_config.ProxySettings) -> None:
    changed = litellm_config.write(path, replicas, settings)
    listing = ", ".join(r.where for r in replicas)
    verb = "wrote" if changed else "unchanged"
    err.print(f"{verb} {path}: {len(replicas)} replica(s) [{listing}]", markup=False)


def _watch(
    source: discovery.RaySource,
    path: Path,
    current: Sequence[Replica],
    settings: litellm_config.ProxySettings,
    expected: int,
    poll: float,
) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    known = [(r.index, r.api_base) for r in current]
    incomplete_since: float | None = None
    err.print("watching the replica set (SIGTERM to stop)", markup=False)
    while not stop.wait(poll):
        try:
            ready, waiting = source.snapshot()
        except Exception as exc:  # the trainer (and its Ray cluster) may be restarting
            err.print(f"[yellow]Ray not reachable: {exc}; keeping {path}[/]")
            continue
        now = [(r.index, r.api_base) for r in ready]
        if now == known:
            incomplete_since = None
            continue
        indices = {r.index for r in ready}
        if not all(i in indices for i in range(expected)):
            if incomplete_since is None:
                incomplete_since = time.monotonic()
                missing = sorted(set(range(expected)) - indices)
                err.print(
                    f"[yellow]replica set changed but incomplete (missing {missing}: "
                    f"{[waiting.get(i, 'not registered') for i in missing]}); "
                    f"keeping {path} until all {expected} answer[/]"
                )
            continue
        incomplete_since = None
        known = now
        _write(path, ready, settings)
