"""The smoke's closing report: the checks, every rollout, and what verl logged per step."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hvt.smoke.verify import SHOWN_METRICS, Check

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def backend(trial_dir: str) -> str:
    """Where the trial's sandbox ran, from the config Harbor wrote into the trial directory."""
    try:
        config = json.loads((Path(trial_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "?"
    env = config.get("environment") or {}
    kwargs = env.get("kwargs") or {}
    host = kwargs.get("docker_host")
    if host:
        return "local engine" if str(host).startswith("unix://") else f"TLS {host}"
    kind = env.get("import_path") or env.get("type") or "docker"
    return "local docker" if "docker" in str(kind).lower() else str(kind).rsplit(":", 1)[-1]


@dataclass
class Run:
    """One experiment of the smoke: its training mode, name, rollouts and verl's step lines."""

    mode: str
    exp: str
    rows: list[dict[str, Any]]
    steps: dict[int, dict[str, str]]


def print_report(checks: list[Check], runs: list[Run], seconds: float) -> None:
    trials = Table(title="Harbor trials (rollouts.jsonl)")
    for col in ("mode", "step", "trial", "backend", "termination", "reward", "tokens", "seconds"):
        trials.add_column(col)
    for run in runs:
        for r in run.rows:
            metrics = r.get("metrics") or {}
            exact = ", exact" if metrics.get("tokens_exact") else ""
            trials.add_row(
                run.mode,
                str(r.get("step")),
                Path(str(r.get("trial_dir", "?"))).name,
                backend(str(r.get("trial_dir", ""))),
                str(r.get("termination")),
                f"{float(r.get('reward') or 0):.2f}",
                f"{r.get('prompt_tokens')}+{r.get('response_tokens')}"
                f" ({r.get('trained_tokens')} trained{exact})",
                f"{float(metrics.get('time/rollout', 0)):.0f}",
            )
    console.print(trials)
    logged = Table(title="what verl logged (step lines of the run logs)")
    logged.add_column("mode")
    logged.add_column("step")
    for name in SHOWN_METRICS:
        logged.add_column(name)
    for run in runs:
        for step in sorted(run.steps):
            logged.add_row(
                run.mode,
                str(step),
                *(run.steps[step].get(name, "-")[:10] for name in SHOWN_METRICS),
            )
    console.print(logged)
    links = Table(title="the chain")
    for col in ("check", "", "detail"):
        links.add_column(col)
    for c in checks:
        links.add_row(c.name, "[green]ok[/]" if c.ok else "[bold red]BROKEN[/]", c.detail)
    console.print(links)
    verdict = "PASSED" if all(c.ok for c in checks) else "FAILED"
    console.print(f"[bold]smoke {verdict}[/] in {seconds:.0f} s")


def verdict_lines(
    broken: list[Check], code: int, run_dir: Path, failures: list[str] | None = None
) -> list[str]:
    """The smoke's last lines: PASSED, or what went wrong (each failure it said on the way)
    and each broken check with its detail: a log's tail, such as CI's, shows what failed
    without the tables and the teardown's lines above it."""
    if code == 0:
        return [f"hvt smoke: PASSED (run directory {run_dir})"]
    lines = [f"hvt smoke: FAILED, exit {code} (run directory {run_dir})"]
    lines += [f"hvt smoke: FAILURE {' '.join(f.removeprefix('hvt smoke: ').split())}"
              for f in failures or []]  # fmt: skip
    lines += [f"hvt smoke: BROKEN {c.name}: {c.detail}" for c in broken]
    if not broken and not failures:
        lines.append(
            "hvt smoke: no check failed: the stack, the trainer or the teardown did (see above)"
        )
    return lines
