"""`hvt repos`: put each pinned source of config/repos.yaml in repos/<name>, patches applied.

A tree is built once (from git at its commit, or, when git cannot reach the URL, from the PyPI
release of the same code) and recorded in repos/<name>/.hvt-source.json with the hash of every
file. Re-running is a no-op; a tree whose files changed (dirty) or whose pins changed in the
config (drifted) is reported with the fix and never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hvt.config.bundle import bundle_root
from hvt.repos.fetch import (
    MARKER,
    FetchError,
    Say,
    apply_patches,
    build_from_git,
    build_from_pypi,
    git_reachable,
    manifest_digest,
    tree_manifest,
)
from hvt.repos.spec import RepoPin, ReposConfigError, load_spec


class Source(StrEnum):
    AUTO = "auto"
    GIT = "git"
    PYPI = "pypi"


class State(StrEnum):
    BUILT = "built"
    UP_TO_DATE = "up to date"
    DIRTY = "dirty"
    DRIFTED = "drifted"
    UNMANAGED = "unmanaged"
    FAILED = "failed"


@dataclass
class RepoReport:
    name: str
    state: State
    source: str = ""
    detail: str = ""
    fix: str = ""
    changed: list[str] = field(default_factory=list)


def _patch_ids(pin: RepoPin, root: Path) -> list[dict[str, str]]:
    ids = []
    for rel in pin.patches:
        path = root / rel
        if not path.is_file():
            raise ReposConfigError(
                f"config/repos.yaml: patch {rel} not found under {root} (fix: add the file or "
                "remove it from patches:)"
            )
        ids.append({"file": rel, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return ids


def wanted_identity(pin: RepoPin, bundle: Path) -> dict[str, Any]:
    """What the config asks for: the release (by both of its names) and the patches."""
    return {
        "git": {"url": pin.git.url, "ref": pin.git.ref, "commit": pin.git.commit},
        "pypi": {"filename": pin.pypi.filename, "sha256": pin.pypi.sha256},
        "patches": _patch_ids(pin, bundle),
    }


def read_marker(tree: Path) -> dict[str, Any] | None:
    path = tree / MARKER
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _drift(marker: dict[str, Any], wanted: dict[str, Any]) -> str:
    have = marker.get("wanted", {})
    diffs = []
    if have.get("patches") != wanted["patches"]:
        diffs.append("patches")
    if marker.get("source") == "git":
        if have.get("git", {}).get("url") != wanted["git"]["url"]:
            diffs.append("git.url")
        if wanted["git"]["commit"] and marker.get("commit") != wanted["git"]["commit"]:
            diffs.append(f"git.commit (tree at {marker.get('commit')})")
        elif have.get("git", {}).get("ref") != wanted["git"]["ref"]:
            diffs.append("git.ref")
    elif have.get("pypi") != wanted["pypi"]:
        diffs.append(f"pypi (tree from {have.get('pypi', {}).get('filename')})")
    return ", ".join(diffs)


def inspect_tree(name: str, tree: Path, wanted: dict[str, Any]) -> RepoReport | None:
    """The state of an existing tree, or None when there is none yet."""
    if not tree.exists():
        return None
    rel = f"repos/{name}"
    marker = read_marker(tree)
    if marker is None:
        return RepoReport(
            name,
            State.UNMANAGED,
            detail=f"{rel} exists but was not made by `hvt repos`",
            fix=f"move it away (mv {rel} {rel}.old) and run `make repos` again",
        )
    source = str(marker.get("source", "?"))
    drift = _drift(marker, wanted)
    if drift:
        return RepoReport(
            name,
            State.DRIFTED,
            source,
            detail=f"config/repos.yaml changed since the tree was made: {drift}",
            fix=f"keep your tree by reverting config/repos.yaml, or move it away "
            f"(mv {rel} {rel}.old) and run `make repos` to build the new pin",
        )
    recorded: dict[str, str] = marker.get("files", {})
    current = tree_manifest(tree)
    changed = sorted(
        {p for p in recorded.keys() | current.keys() if recorded.get(p) != current.get(p)}
    )
    if changed:
        return RepoReport(
            name,
            State.DIRTY,
            source,
            detail=f"{len(changed)} file(s) differ from the pinned tree",
            fix=f"the image will carry your edits; to keep them reproducible, save them as a "
            f"patch under patches/{name}/ and list it in config/repos.yaml, then rebuild the tree",
            changed=changed,
        )
    return RepoReport(name, State.UP_TO_DATE, source, detail=describe_marker(marker))


def describe_marker(marker: dict[str, Any]) -> str:
    """What a tree was built from: `commit <sha>` or the release file."""
    if marker.get("source") == "git":
        return f"commit {str(marker.get('commit'))[:12]}"
    return str(marker.get("wanted", {}).get("pypi", {}).get("filename", ""))


def build_tree(
    name: str, pin: RepoPin, root: Path, bundle: Path, source: Source, say: Say
) -> RepoReport:
    """Build repos/<name> in a scratch dir and move it into place when complete."""
    wanted = wanted_identity(pin, bundle)
    tree = root / name
    root.mkdir(parents=True, exist_ok=True)
    use_git = source is Source.GIT
    if source is Source.AUTO:
        use_git = git_reachable(pin.git.url)
        if not use_git:
            say(f"{name}: git cannot reach {pin.git.url}; building from {pin.pypi.filename}")
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp:
        scratch = Path(tmp)
        staged = scratch / name
        commit = None
        if use_git:
            commit = build_from_git(pin.git, staged, say)
        else:
            build_from_pypi(pin.pypi, staged, scratch, say)
        apply_patches(staged, [bundle / p for p in pin.patches], say)
        files = tree_manifest(staged)
        marker = {
            "name": name,
            "source": "git" if use_git else "pypi",
            "commit": commit,
            "wanted": wanted,
            "tree_sha256": manifest_digest(files),
            "files": files,
        }
        (staged / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        staged.rename(tree)
    return RepoReport(name, State.BUILT, str(marker["source"]), detail=describe_marker(marker))


def sync_repos(
    config: Path, root: Path, bundle: Path, source: Source, say: Say, only: list[str] | None = None
) -> list[RepoReport]:
    spec = load_spec(config)
    unknown = sorted(set(only or []) - spec.repos.keys())
    if unknown:
        raise ReposConfigError(f"{config}: no repo named {', '.join(unknown)}")
    reports = []
    for name, pin in spec.repos.items():
        if only and name not in only:
            continue
        existing = inspect_tree(name, root / name, wanted_identity(pin, bundle))
        if existing is not None:
            reports.append(existing)
            continue
        try:
            reports.append(build_tree(name, pin, root, bundle, source, say))
        except FetchError as exc:
            reports.append(RepoReport(name, State.FAILED, detail=str(exc)))
    return reports


def _table(reports: list[RepoReport]) -> Table:
    colours = {
        State.BUILT: "green",
        State.UP_TO_DATE: "green",
        State.DIRTY: "yellow",
        State.DRIFTED: "red",
        State.UNMANAGED: "red",
        State.FAILED: "red",
    }
    table = Table(title="repos/")
    for col in ("repo", "state", "source", "detail"):
        table.add_column(col)
    for r in reports:
        table.add_row(r.name, f"[{colours[r.state]}]{r.state}[/]", r.source, r.detail)
    return table


def repos_command(
    config: Annotated[
        Path | None, typer.Option(help="pins file (default: config/repos.yaml of the bundle)")
    ] = None,
    root: Annotated[Path | None, typer.Option(help="where the trees go (default: repos/)")] = None,
    source: Annotated[
        Source, typer.Option(help="auto: git when reachable, else the PyPI release")
    ] = Source.AUTO,
    strict: Annotated[bool, typer.Option(help="a dirty tree is an error too")] = False,
    name: Annotated[list[str] | None, typer.Argument(help="only these repos")] = None,
) -> None:
    """Fetch the pinned harbor and verl sources into repos/ (no-op when they are in place)."""
    console = Console(stderr=True)
    bundle = bundle_root()
    config = config or bundle / "config" / "repos.yaml"
    root = root or bundle / "repos"

    def say(msg: str) -> None:
        console.print(f"[dim]repos:[/] {msg}")

    try:
        reports = sync_repos(config, root, bundle, source, say, only=name)
    except ReposConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    Console().print(_table(reports))
    bad = {State.DRIFTED, State.UNMANAGED, State.FAILED} | ({State.DIRTY} if strict else set())
    for r in reports:
        if r.state in bad | {State.DIRTY}:
            style = "red" if r.state in bad else "yellow"
            console.print(f"[{style}]{r.name}: {r.detail}[/]")
            for path in r.changed[:10]:
                console.print(f"    {path}")
            if len(r.changed) > 10:
                console.print(f"    … and {len(r.changed) - 10} more")
            if r.fix:
                console.print(f"    fix: {r.fix}")
    if any(r.state in bad for r in reports):
        raise typer.Exit(1)


def inspect_all(bundle: Path, root: Path) -> list[RepoReport]:
    """The state of every pinned tree, read-only (the preflight's view; `make repos` fixes)."""
    spec = load_spec(bundle / "config" / "repos.yaml")
    reports = []
    for name, pin in spec.repos.items():
        report = inspect_tree(name, root / name, wanted_identity(pin, bundle))
        reports.append(
            report
            or RepoReport(
                name, State.FAILED, detail=f"{root / name} is missing", fix="run `make repos`"
            )
        )
    return reports
