"""`hvt wandb-sync`: the wandb sidecar. Syncs offline W&B runs with the key from a secret.

Without a key it keeps the offline runs where they are and says so; on stop (SIGTERM) it
syncs once more before exiting, so nothing logged just before a shutdown is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False, soft_wrap=True)


def api_key() -> str:
    key = os.environ.get("WANDB_API_KEY", "").strip()
    path = os.environ.get("WANDB_API_KEY_FILE", "")
    if not key and path and Path(path).is_file():
        key = Path(path).read_text().strip()
    return key


def offline_runs(directory: Path) -> list[Path]:
    """Offline run folders not yet synced (wandb leaves <run>.wandb.synced once it has)."""
    runs = []
    for run in sorted(directory.glob("**/offline-run-*")):
        if not run.is_dir():
            continue
        stamps = list(run.glob("*.wandb.synced"))
        data = list(run.glob("*.wandb"))
        if data and not stamps:
            runs.append(run)
    return runs


def sync_once(directory: Path, key: str) -> int:
    runs = offline_runs(directory)
    if not runs:
        return 0
    env = {**os.environ, "WANDB_API_KEY": key}
    done = 0
    for run in runs:
        out = subprocess.run(
            ["wandb", "sync", str(run)], env=env, capture_output=True, text=True, check=False
        )
        if out.returncode == 0:
            done += 1
            console.print(f"synced {run}")
        else:
            console.print(f"[red]wandb sync {run} failed[/]: {out.stderr.strip()[-300:]}")
    return done


def wandb_sync(
    directory: Annotated[Path, typer.Option("--dir", help="the run directory's wandb folder")],
    interval: Annotated[float, typer.Option(help="seconds between syncs")] = 300.0,
    once: Annotated[bool, typer.Option(help="sync once and exit")] = False,
) -> None:
    """Sync offline W&B runs periodically, and once more on stop."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    directory.mkdir(parents=True, exist_ok=True)
    key = api_key()
    if not key:
        console.print(
            f"no W&B key (secrets/wandb_api_key is empty): offline runs stay in "
            f"{directory}; add the key and restart wandb-sync to upload them"
        )
        if not once:
            stop.wait()
        return
    while True:
        count = sync_once(directory, key)
        console.print(f"{count} run(s) synced; {len(offline_runs(directory))} waiting")
        if once or stop.wait(interval):
            break
    if not once:
        console.print("stopping: final sync")
        sync_once(directory, key)
