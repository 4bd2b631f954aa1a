"""Run records: an append-only ledger (artifacts/index.yaml) and one archive folder per run.

artifacts/archives/run_NNN/ holds the config as run (secrets redacted), run.yaml (experiment,
status completed|interrupted|failed, exit code, times, the source of every tree in repos/) and
the path of the run's log. The ledger only ever grows: one YAML list item appended per run,
under a lock, so concurrent writers never interleave.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from hvt.config.run_paths import RunPaths, repos_dir
from hvt.config.scan import SECRET_KEY, SECRET_VALUE

Status = Literal["completed", "interrupted", "failed"]
REDACTED = "<redacted>"
RUN_DIR = re.compile(r"^run_(\d{3,})$")


def status_for(exit_code: int) -> Status:
    """0 completed; SIGINT/SIGTERM (130, 143, or negative signal numbers) interrupted."""
    if exit_code == 0:
        return "completed"
    if exit_code in (130, 143, -2, -15):
        return "interrupted"
    return "failed"


def redact(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [redact(v) for v in node]
    if isinstance(node, str) and SECRET_VALUE.match(node.strip()):
        return REDACTED
    return node


def tree_sources(base: Path | None = None) -> dict[str, str]:
    """What each tree in repos/ was built from (`hvt repos` records it), or its git commit."""
    from hvt.repos.trees import describe_marker, read_marker

    root = base or repos_dir()
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    for tree in sorted(p for p in root.iterdir() if p.is_dir()):
        marker = read_marker(tree)
        if marker is not None:
            out[tree.name] = f"{marker.get('source', '?')}: {describe_marker(marker)}"
            continue
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        out[tree.name] = head.stdout.strip() if head.returncode == 0 else "unknown"
    return out


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    exp_name: str
    status: Status
    exit_code: int
    started_at: str
    ended_at: str
    archive: Path


def _next_id(archives: Path) -> str:
    numbers = [int(m.group(1)) for p in archives.glob("run_*") if (m := RUN_DIR.match(p.name))]
    return f"run_{max(numbers, default=0) + 1:03d}"


def record(
    paths: RunPaths,
    config_file: Path,
    exp_name: str,
    exit_code: int,
    started_at: datetime,
    ended_at: datetime | None = None,
    reason: str = "",
) -> RunRecord:
    """Append the run; `reason` says why a failed run failed (e.g. the trainer node it lost)."""
    ended = ended_at or datetime.now(UTC)
    archives = paths.artifacts / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    index = paths.artifacts / "index.yaml"
    with (paths.artifacts / ".index.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run_id = _next_id(archives)
        folder = archives / run_id
        folder.mkdir()
        raw = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
        (folder / "config.yaml").write_text(yaml.safe_dump(redact(raw), sort_keys=False))
        status = status_for(exit_code)
        entry: dict[str, Any] = {
            "id": run_id,
            "exp_name": exp_name,
            "project": paths.project,
            "status": status,
            "exit_code": exit_code,
            "started_at": started_at.isoformat(timespec="seconds"),
            "ended_at": ended.isoformat(timespec="seconds"),
            "duration_s": round((ended - started_at).total_seconds()),
            "log": str(paths.logs / f"{exp_name}.log"),
            "checkpoints": str(paths.checkpoints / paths.project / exp_name),
            "trials": str(paths.project_trials / exp_name),
            "archive": str(folder),
            "repos": tree_sources(),
        }
        if reason:
            entry["reason"] = reason
        (folder / "run.yaml").write_text(yaml.safe_dump(entry, sort_keys=False))
        text = yaml.safe_dump([entry], sort_keys=False)
        fd = os.open(index, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                os.write(fd, b"# Run ledger: append-only, one item per run (hvt launch).\n")
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    return RunRecord(
        run_id,
        exp_name,
        status,
        exit_code,
        str(entry["started_at"]),
        str(entry["ended_at"]),
        folder,
    )


def ledger(paths: RunPaths) -> list[dict[str, Any]]:
    index = paths.artifacts / "index.yaml"
    if not index.is_file():
        return []
    return list(yaml.safe_load(index.read_text()) or [])
