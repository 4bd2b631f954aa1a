"""`hvt tasks index <tasks_dir> -o train.parquet`: the dataset verl reads, one row per task.

A task is a directory (Harbor layout) directly under `tasks_dir` with `instruction.md` and
`task.toml`, and an environment: `environment/Dockerfile` or `[environment].docker_image`.
Its directory name is the instance id. Each row has what verl's RLHFDataset and the agent loop
read:

  prompt        [{"role": "user", "content": <instruction.md>}]   (the fallback prompt tokens)
  data_source   --data-source (default "harbor")
  ability       "swe"
  agent_name    the agent loop that runs the row (verl_patch: harbor_claude_code)
  reward_model  {"style": "harbor_verifier", "ground_truth": ""}  (the verifier decides)
  extra_info    {index, instance_id, harbor_task_path, split}

`harbor_task_path` is the task directory as the trainer sees it: the resolved path, or
`--root-as DIR` + the task name when the trainer mounts the tasks elsewhere. `split` is
`train` or `val`; validation trials go to `val_step_NNNN/` directories.
"""

from __future__ import annotations

import os
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

AGENT_LOOP_NAME = "harbor_claude_code"
SPLITS = ("train", "val")

app = typer.Typer(help="Build the parquet task indexes verl trains on.", no_args_is_help=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class TaskIndexError(ValueError):
    """The tasks directory cannot be indexed; the message names the culprits and the fix."""


@dataclass(frozen=True)
class TaskEntry:
    name: str
    path: Path
    instruction: str


def _task_problem(task_dir: Path) -> str | None:
    if not (task_dir / "instruction.md").is_file():
        return "no instruction.md"
    toml_path = task_dir / "task.toml"
    if not toml_path.is_file():
        return "no task.toml"
    try:
        config = tomllib.loads(toml_path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return f"task.toml does not parse ({exc})"
    environment = config.get("environment") or {}
    image = environment.get("docker_image") if isinstance(environment, dict) else None
    if not image and not (task_dir / "environment" / "Dockerfile").is_file():
        return "neither environment/Dockerfile nor [environment].docker_image"
    if not (task_dir / "tests" / "test.sh").is_file():
        return "no tests/test.sh (the verifier that gives the reward)"
    if not (task_dir / "instruction.md").read_text().strip():
        return "instruction.md is empty"
    return None


def discover(tasks_dir: Path) -> list[TaskEntry]:
    """Every task directly under `tasks_dir`, sorted by name; any broken one is an error."""
    if not tasks_dir.is_dir():
        raise TaskIndexError(f"{tasks_dir}: not a directory (pass the directory holding the tasks)")
    entries: list[TaskEntry] = []
    problems: list[str] = []
    for child in sorted(tasks_dir.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        problem = _task_problem(child)
        if problem:
            problems.append(f"{child.name}: {problem}")
            continue
        entries.append(
            TaskEntry(child.name, child.resolve(), (child / "instruction.md").read_text())
        )
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; ... {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise TaskIndexError(
            f"{tasks_dir}: {len(problems)} director{'y is' if len(problems) == 1 else 'ies are'} "
            f"not valid Harbor tasks: {shown} (fix or move them; a task needs instruction.md, "
            "task.toml, tests/test.sh and environment/Dockerfile or a docker_image)"
        )
    if not entries:
        raise TaskIndexError(f"{tasks_dir}: no task directories found")
    return entries


def task_path_as_seen(entry: TaskEntry, root_as: str | None) -> str:
    if root_as:
        return str(PurePosixPath(root_as) / entry.name)
    return str(entry.path)


def rows(
    entries: list[TaskEntry],
    split: str = "train",
    data_source: str = "harbor",
    agent_name: str = AGENT_LOOP_NAME,
    root_as: str | None = None,
) -> list[dict[str, Any]]:
    if split not in SPLITS:
        raise TaskIndexError(f"--split {split!r}: must be one of {', '.join(SPLITS)}")
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": entry.instruction}],
            "ability": "swe",
            "agent_name": agent_name,
            "reward_model": {"style": "harbor_verifier", "ground_truth": ""},
            "extra_info": {
                "index": index,
                "instance_id": entry.name,
                "harbor_task_path": task_path_as_seen(entry, root_as),
                "split": split,
            },
        }
        for index, entry in enumerate(entries)
    ]


def read_task_paths(index: Path) -> list[Path]:
    """The `extra_info.harbor_task_path` of every row of an index written by `rows`."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        table = pq.read_table(index, columns=["extra_info"])
    except Exception as exc:  # not a parquet file, or not one of ours
        raise TaskIndexError(f"{index}: not a tasks index ({exc})") from None
    return [Path(row["harbor_task_path"]) for row in table.column("extra_info").to_pylist()]


def write_parquet(table_rows: list[dict[str, Any]], output: Path) -> Path:
    """Write atomically (a temporary file renamed into place)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskIndexError(
            "pyarrow is not installed in this venv (pip install pyarrow, or use the trainer "
            "image: `docker compose run --rm trainer hvt tasks index ...`)"
        ) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(table_rows), tmp)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


@app.command("index")
def index_command(
    tasks_dir: Annotated[Path, typer.Argument(help="directory whose subdirectories are tasks")],
    output: Annotated[Path, typer.Option("--output", "-o", help="parquet file to write")],
    split: Annotated[
        str, typer.Option(help="train or val (val trials go to val_step_N)")
    ] = "train",
    data_source: Annotated[str, typer.Option(help="data_source column (metrics group by it)")] = (
        "harbor"
    ),
    root_as: Annotated[
        str | None,
        typer.Option(help="store task paths as ROOT_AS/<task> (where the trainer mounts them)"),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="keep only this many tasks")] = None,
    shuffle_seed: Annotated[
        int | None, typer.Option(help="shuffle the tasks with this seed before --limit")
    ] = None,
) -> None:
    """Index Harbor tasks into a parquet file for data.train_files / data.val_files."""
    try:
        entries = discover(tasks_dir)
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(entries)
        if limit is not None:
            entries = entries[:limit]
        table_rows = rows(entries, split, data_source, AGENT_LOOP_NAME, root_as)
        write_parquet(table_rows, output)
    except TaskIndexError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    out.print(f"[green]{output}[/]: {len(table_rows)} {split} task(s) from {tasks_dir}")
    for row in table_rows[:5]:
        out.print(
            f"  {row['extra_info']['instance_id']}  ->  {row['extra_info']['harbor_task_path']}"
        )
    if len(table_rows) > 5:
        out.print(f"  ... {len(table_rows) - 5} more")
