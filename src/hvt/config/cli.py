"""`hvt config validate|show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hvt.config import summary as config_summary
from hvt.config.bundle import default_config_path
from hvt.config.load import check
from hvt.config.problems import Problem

app = typer.Typer(help="Validate and summarise config/config.yaml.", no_args_is_help=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

FileArg = Annotated[Path | None, typer.Argument(help="config file (default config/config.yaml)")]


def _print_problems(source: str, problems: list[Problem]) -> None:
    err.print(f"[bold red]{source}: {len(problems)} problem(s)[/]", soft_wrap=True)
    for p in problems:
        where = f"  [dim]\\[line {p.line}][/]" if p.line else ""
        err.print(f"{p.render()}{where}", markup=True, soft_wrap=True)


@app.command("validate")
def validate_cmd(file: FileArg = None) -> None:
    """Exit 0 when the config is usable; else print every problem and exit 2."""
    path = file or default_config_path()
    _, problems = check(path)
    if problems:
        _print_problems(str(path), problems)
        raise typer.Exit(2)
    out.print(f"[green]{path}: valid[/]")


@app.command("show")
def show_cmd(file: FileArg = None) -> None:
    """Print the Run Configuration Summary (and any problems, which exit 2)."""
    path = file or default_config_path()
    cfg, problems = check(path)
    if cfg is not None:
        out.print(config_summary.render(cfg), markup=False)
    if problems:
        _print_problems(str(path), problems)
        raise typer.Exit(2)
