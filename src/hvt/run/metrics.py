"""`hvt metrics <log>`: verl's console lines `step:N - key:value - ...` to CSV.

Handles ANSI colour codes, Ray actor prefixes such as `(TaskRunner pid=123)`, and values
printed as `np.float64(0.5)` / `np.int64(3)` / `tensor(0.5)`. Lines for the same step merge.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\s*\([^)]*\bpid=\d+[^)]*\)\s*")
STEP = re.compile(r"(?:^|[^\w/])step:(\d+)\s+-\s+(.*)$")
WRAPPER = re.compile(r"^(?:np\.\w+|numpy\.\w+|tensor|torch\.tensor)\((.*)\)$")
PAIR = re.compile(r"\s+-\s+(?=[\w./@\-]+:)")


def _value(raw: str) -> str:
    text = raw.strip().rstrip(",")
    while (m := WRAPPER.match(text)) is not None:
        text = m.group(1).split(",")[0].strip()
    return text


def parse(lines: Iterable[str]) -> dict[int, dict[str, str]]:
    steps: dict[int, dict[str, str]] = {}
    for line in lines:
        clean = RAY_PREFIX.sub("", ANSI.sub("", line.rstrip("\n")))
        m = STEP.search(clean)
        if m is None:
            continue
        step = int(m.group(1))
        row = steps.setdefault(step, {})
        for part in PAIR.split(m.group(2)):
            key, sep, value = part.partition(":")
            if sep and key.strip():
                row[key.strip()] = _value(value)
    return steps


def to_csv(steps: dict[int, dict[str, str]], keys: list[str] | None = None) -> str:
    columns = keys or sorted({k for row in steps.values() for k in row})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", *columns])
    for step in sorted(steps):
        writer.writerow([step, *(steps[step].get(k, "") for k in columns)])
    return buf.getvalue()


def metrics(
    log: Annotated[Path, typer.Argument(help="a training log (logs/<exp>.log)")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="CSV file (default: stdout)")
    ] = None,
    keys: Annotated[str, typer.Option("--keys", help="comma-separated metric keys to keep")] = "",
) -> None:
    """Turn `step:N - key:value` lines of a training log into CSV."""
    if not log.is_file():
        typer.echo(f"hvt metrics: {log} does not exist (fix: pass logs/<exp>.log)", err=True)
        raise typer.Exit(2)
    with log.open(errors="replace") as fh:
        steps = parse(fh)
    if not steps:
        typer.echo(f"hvt metrics: no `step:N - key:value` lines in {log}", err=True)
        raise typer.Exit(1)
    text = to_csv(steps, [k for k in keys.split(",") if k] or None)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"{len(steps)} step(s) -> {output}", err=True)
