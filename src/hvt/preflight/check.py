"""`hvt dryrun`: the preflight. Every check has a stable name, a status, a detail and a remedy.

A check that cannot apply on this machine (no GPU, no kubeconfig for a docker run) skips with
the reason; nothing passes silently. Exit 1 when anything fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hvt.config.model import RunConfig
from hvt.config.run_paths import RunPaths


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    remedy: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, remedy: str) -> Check:
    return Check(name, Status.WARN, detail, remedy)


def fail(name: str, detail: str, remedy: str) -> Check:
    return Check(name, Status.FAIL, detail, remedy)


def skip(name: str, reason: str) -> Check:
    return Check(name, Status.SKIP, reason)


@dataclass(frozen=True)
class Context:
    cfg: RunConfig
    config_file: Path
    paths: RunPaths


CheckGroup = Callable[[Context], Iterable[Check]]


def run(ctx: Context, groups: Iterable[CheckGroup]) -> list[Check]:
    results: list[Check] = []
    for group in groups:
        try:
            results.extend(group(ctx))
        except Exception as exc:  # a crashing check is a failed check, never a crashed dryrun
            name = getattr(group, "__name__", "check").removeprefix("check_").replace("_", ".")
            results.append(
                fail(
                    name,
                    f"the check itself crashed: {exc!r}",
                    "report this; run with --json for the full list",
                )
            )
    return results


STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.SKIP: "dim"}


def render_table(results: list[Check], console: Console) -> None:
    # Key paths and file paths are long single words: fold them onto the next line, never cut
    # them with an ellipsis (at 80 columns every `runtime_info.input.*` key would read the same).
    table = Table(title="hvt dryrun", show_lines=False)
    table.add_column("check", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("remedy", overflow="fold")
    for r in results:
        table.add_row(r.name, f"[{STYLE[r.status]}]{r.status.value}[/]", r.detail, r.remedy)
    console.print(table)
    counts = {s: sum(1 for r in results if r.status is s) for s in Status}
    verdict = "[bold red]NOT READY[/]" if counts[Status.FAIL] else "[bold green]READY[/]"
    console.print(
        f"{verdict}: {counts[Status.OK]} ok, {counts[Status.WARN]} warn,"
        f" {counts[Status.FAIL]} fail, {counts[Status.SKIP]} skip"
    )


def to_json(results: list[Check]) -> str:
    return json.dumps(
        {
            "ok": not any(r.status is Status.FAIL for r in results),
            "checks": [{**asdict(r), "status": r.status.value} for r in results],
        },
        indent=2,
    )
