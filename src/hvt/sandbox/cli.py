"""`hvt sandbox check` and `hvt sandbox warm`: the command lines of hvt.sandbox.check and
hvt.sandbox.warm (progress bar, table, summary, exit code)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hvt.sandbox.check import hosts_and_limits

if TYPE_CHECKING:
    from hvt.config.model import RunConfig

app = typer.Typer(
    help="The sandbox hosts: task images warmed, the oracle on every task and host.",
    no_args_is_help=True,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def sandbox() -> None:
    """The sandbox hosts: `hvt sandbox warm`, `hvt sandbox check`."""


TasksOption = Annotated[
    Path, typer.Option("--tasks", help="directory whose subdirectories are Harbor tasks")
]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="config file")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="only the first N tasks")]


def _load(config: Path | None, tasks: Path, limit: int | None) -> tuple[RunConfig, list[Path]]:
    """The run config and the task directories; a bad one exits 2 naming it."""
    from hvt.config.bundle import default_config_path
    from hvt.config.load import load
    from hvt.config.problems import ConfigError
    from hvt.run.tasks_index import TaskIndexError, discover

    try:
        cfg = load(config or default_config_path())
        entries = discover(tasks)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error:[/] {escape(problem.render())}")
        raise typer.Exit(2) from None
    except TaskIndexError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    return cfg, [Path(e.path) for e in entries][:limit]


@app.command("warm")
def warm_command(
    tasks: TasksOption,
    config: ConfigOption = None,
    limit: LimitOption = None,
    parallel: Annotated[
        int, typer.Option(min=1, help="builds at once per host (also within its limit)")
    ] = 4,
    rebuild: Annotated[
        bool, typer.Option(help="build even where the image is there (BuildKit's cache applies)")
    ] = False,
) -> None:
    """Build (or pull) every task's sandbox image on every sandbox host before training, so
    trials start without building. A second run finds them all and builds nothing. Exit 1
    when any task failed on any host, naming both."""
    from hvt.sandbox.warm import Summary, Warmed, WarmError, require_warmable, warm
    from verl_patch.rollout_settings import RolloutSettings

    cfg, task_dirs = _load(config, tasks, limit)
    scratch = Path(tempfile.mkdtemp(prefix="hvt-warm-trials-"))
    settings = RolloutSettings.from_run_config(cfg, trials_dir=scratch)
    try:
        require_warmable(settings)
    except WarmError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    hosts = hosts_and_limits(settings)
    out.print(
        f"warming {len(task_dirs)} task image(s) on {len(hosts)} host(s): "
        + ", ".join(f"{h} ({min(n, parallel)} at once)" for h, n in hosts)
    )
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]task images"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.description}"), console=out,
    ) as progress:  # fmt: skip
        bar = progress.add_task("", total=len(task_dirs) * len(hosts))

        def done(w: Warmed) -> None:
            progress.update(bar, advance=1, description=f"last: {w.task} on {w.host} ({w.source})")

        outcomes = asyncio.run(warm(settings, task_dirs, parallel, rebuild, on_done=done))
    table = Table(title="task images")
    for col in ("task", "host", "image", "result", "GB", "seconds"):
        table.add_column(col)
    for w in outcomes:
        result = w.source if w.ok else f"[red]{w.source}[/]"
        table.add_row(w.task, w.host, w.image or "-", result, f"{w.size_bytes / 1e9:.2f}",
                      f"{w.seconds:.0f}")  # fmt: skip
    out.print(table)
    s = Summary.of(outcomes, time.monotonic() - started)
    out.print(
        f"{s.images} image(s) on the hosts, {s.gigabytes:.2f} GB: {s.built} built, {s.pulled} "
        f"pulled, {s.present} already there, {s.failed} failed, in {s.seconds:.0f} s"
    )
    for w in outcomes:
        if not w.ok:
            where = f"{escape(w.task)} on {escape(w.host)}"
            err.print(f"[red]failed:[/] {where}: {escape(w.error or '')}")
    raise typer.Exit(1 if s.failed else 0)


@app.command("check")
def check_command(
    tasks: TasksOption,
    config: ConfigOption = None,
    trials_dir: Annotated[
        Path | None,
        typer.Option(
            help="where the trials go (default: $HVT_TRIALS_ROOT or ./harbor_trials, "
            "then sandbox-check/<UTC time>)"
        ),
    ] = None,
    limit: LimitOption = None,
) -> None:
    """Run Harbor's oracle agent on every task on every sandbox host: each must build, start
    and get reward 1 from its verifier. Exit 1 otherwise, naming the task and host."""
    from hvt.sandbox.check import Outcome, run_checks
    from verl_patch.rollout_settings import RolloutSettings

    cfg, task_dirs = _load(config, tasks, limit)
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
