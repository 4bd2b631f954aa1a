"""`hvt launch|health|wandb-sync|clean|metrics|tasks|worker|nodes`.

`launch` is defined here, not in hvt/run/launch.py: with --cpu-smoke it hands launch.run the
smoke's preparation (hvt.smoke.inputs), and only the command line may import smoke.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hvt.config.bundle import default_config_path
from hvt.config.model import RunConfig
from hvt.run import clean, health, metrics, nodes_cli, tasks_index, wandb_sync, worker
from hvt.run import launch as launch_run


def register(app: typer.Typer) -> None:
    app.add_typer(tasks_index.app, name="tasks")
    app.command("launch")(launch)
    app.command("health")(health.health)
    app.command("wandb-sync")(wandb_sync.wandb_sync)
    app.command("clean")(clean.clean)
    app.command("metrics")(metrics.metrics)
    app.command("worker")(worker.worker)
    app.command("nodes")(nodes_cli.nodes)


def launch(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file")] = None,
    cpu: Annotated[
        bool,
        typer.Option(
            "--cpu",
            help="CPU mode: verl's real trainer without a GPU (FSDP2 on gloo, the CPU rollout "
            "replica in place of vLLM; hvt.run.verl_command.CPU_OVERRIDES)",
        ),
    ] = False,
    cpu_smoke: Annotated[
        bool,
        typer.Option(
            "--cpu-smoke",
            help="--cpu, after making the smoke's tiny model and indexing config/smoke-tasks",
        ),
    ] = False,
    skip_preflight: Annotated[
        bool, typer.Option("--skip-preflight", help="start without `hvt dryrun` (not recommended)")
    ] = False,
    ray_address: Annotated[
        str,
        typer.Option(
            "--ray-address",
            envvar=launch_run.ATTACH_ENV,
            help="attach to the Ray cluster running at host:port (KubeRay's head: `hvt kuberay "
            "render` sets it) instead of starting a head; token auth from the environment",
        ),
    ] = "",
) -> None:
    """Start a run: preflight, Ray, discovery, verl main_ppo; record it on exit."""
    raise typer.Exit(
        launch_run.run(
            config or default_config_path(),
            cpu=cpu or cpu_smoke,
            skip_preflight=skip_preflight,
            prepare=_smoke_inputs if cpu_smoke else None,
            ray_address=ray_address,
        )
    )


def _smoke_inputs(cfg: RunConfig) -> str:
    """--cpu-smoke: the tiny model and the smoke tasks' index, which the preflight then checks."""
    from hvt.smoke.inputs import prepare_inputs  # torch and transformers: CPU smoke mode only

    model, rows = prepare_inputs(cfg)
    return f"tiny model {model}; {len(rows)} task(s) indexed"
