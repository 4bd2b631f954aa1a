"""`hvt dryrun`: validate the config, then run every preflight check against this host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hvt.config import summary as config_summary
from hvt.config.bundle import default_config_path
from hvt.config.load import check
from hvt.config.run_paths import RunPaths
from hvt.preflight import backend as checks_backend
from hvt.preflight import host as checks_host
from hvt.preflight import trees as checks_trees
from hvt.preflight.check import (
    Check,
    CheckGroup,
    Context,
    Status,
    fail,
    ok,
    render_table,
    run,
    to_json,
)

GROUPS: tuple[CheckGroup, ...] = (
    checks_trees.check_repos,
    checks_trees.check_venv,
    checks_trees.check_inputs,
    checks_trees.check_model_heads,
    checks_backend.check_backend,
    checks_host.check_ports,
    checks_host.check_writable,
    checks_host.check_wandb,
    checks_host.check_gpus,
    checks_host.check_disk,
    checks_host.check_nodes,
    checks_host.check_residue,
)


def register_group(group: CheckGroup) -> None:
    """Add a check group from a part the preflight does not import (the command line does it:
    hvt.commands.preflight registers the sandbox image check)."""
    global GROUPS
    if group not in GROUPS:
        GROUPS = (*GROUPS, group)


def preflight(config_file: Path) -> tuple[list[Check], Context | None]:
    """All checks for a config file; the context is None when the config cannot be typed."""
    cfg, problems = check(config_file)
    results = [fail("config.valid", f"{p.path}: {p.message}", p.fix) for p in problems]
    if not problems:
        results.append(ok("config.valid", str(config_file)))
    if cfg is None:
        return results, None
    ctx = Context(cfg=cfg, config_file=config_file, paths=RunPaths.from_config(cfg))
    return results + run(ctx, GROUPS), ctx


def dryrun(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="config file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Preflight: every check with its status, detail and remedy. Exit 1 if any fails."""
    results, ctx = preflight(config or default_config_path())
    failed = any(r.status is Status.FAIL for r in results)
    if as_json:
        typer.echo(to_json(results))
    else:
        console = Console(highlight=False)
        if ctx is not None:
            console.print(config_summary.render(ctx.cfg), markup=False, soft_wrap=True)
        render_table(results, console)
    raise typer.Exit(1 if failed else 0)
