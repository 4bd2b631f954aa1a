"""`hvt sandbox check`: the command line of hvt.sandbox.check (progress bar, table, exit code)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="The sandbox hosts: the oracle on every task and host.", no_args_is_help=True
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def sandbox() -> None:
    """The sandbox hosts: `hvt sandbox check`."""


@app.command("check")
def check_command(
    tasks: Annotated[
        Path, typer.Option("--tasks", help="directory whose subdirectories are Harbor tasks")
    ],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file")] = None,
    trials_dir: Annotated[
        Path | None,
        typer.Option(
            help="where the trials go (default: $HVT_TRIALS_ROOT or ./harbor_trials, "
            "then sandbox-check/<UTC time>)"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N tasks")] = None,
) -> None:
    """Run Harbor's oracle agent on every task on every sandbox host: each must build, start
    and get reward 1 from its verifier. Exit 1 otherwise, naming the task and host."""
    from hvt.config.bundle import default_config_path
    from hvt.config.load import load
    from hvt.config.problems import ConfigError
    from hvt.run.tasks_index import TaskIndexError, discover
    from hvt.sandbox.check import Outcome, hosts_and_limits, run_checks
    from verl_patch.rollout_settings import RolloutSettings

    config = config or default_config_path()
    try:
        cfg = load(config)
        entries = discover(tasks)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error:[/] {escape(problem.render())}")
        raise typer.Exit(2) from None
    except TaskIndexError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    task_dirs = [Path(e.path) for e in entries][:limit]
    root = trials_dir or Path(os.environ.get("HVT_TRIALS_ROOT") or "harbor_trials")
    where = root / "sandbox-check" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    settings = RolloutSettings.from_run_config(cfg, trials_dir=where)
    hosts = hosts_and_limits(settings)
    total = len(task_dirs) * len(hosts)
    out.print(
        f"oracle on {len(task_dirs)} task(s) x {len(hosts)} host(s): "
        + ", ".join(f"{h} (up to {n} at once)" for h, n in hosts)
        + f"; trials in {where}"
    )
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]oracle trials"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.description}"), console=out,
    ) as progress:  # fmt: skip
        bar = progress.add_task("", total=total)

        def done(o: Outcome) -> None:
            progress.update(bar, advance=1, description=f"last: {o.task} on {o.host}")

        outcomes = asyncio.run(run_checks(settings, task_dirs, on_done=done))
    table = Table(title="oracle trials")
    for col in ("task", "host", "reward", "termination", "seconds"):
        table.add_column(col)
    for o in outcomes:
        reward = "none" if o.reward is None else f"{o.reward:.2f}"
        table.add_row(o.task, o.host, reward if o.ok else f"[red]{reward}[/]",
                      o.termination, f"{o.seconds:.0f}")  # fmt: skip
    out.print(table)
    failed = [o for o in outcomes if not o.ok]
    out.print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} oracle trials got reward 1 in "
        f"{time.monotonic() - started:.0f} s"
    )
    for o in failed:
        err.print(
            f"[red]failed:[/] {escape(o.task)} on {escape(o.host)}: reward "
            f"{'none' if o.reward is None else o.reward} ({o.termination}"
            f"{', ' + o.exception if o.exception else ''}); see {escape(o.trial_dir)}/trial.log"
        )
    raise typer.Exit(1 if failed else 0)
