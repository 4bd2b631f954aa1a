"""`hvt verify-venv`: prove a venv runs the code in /workspace/repos and nothing else.

Fails loudly unless:
  * harbor, verl, verl_patch and harbor_patch resolve under the repos root, and the harbor,
    verl and harbor-verl-train distributions are editable installs of trees there;
  * `from docker import DockerClient` gets the real SDK (no `docker/` folder shadows it);
  * every installed distribution has the version of the lock, and nothing else is installed;
  * `uv pip check` is clean, except the conflicts the overrides file declares on purpose;
  * the heavy imports (vllm, torch, ray, verl, harbor) work;
  * the Debian files the image was built from (/usr/share/hvt/debian/*.json, written by the
    build) are the ones locks/debian.lock pins; they are listed with the base image.
The checks run in the target interpreter (a subprocess), so any venv can be verified.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

import typer
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from rich.console import Console
from rich.table import Table

from hvt.config.bundle import bundle_root
from hvt.images import venv_probe
from hvt.images.lockfile import LockFileError, compare, read_pins

EDITABLE_MODULES = ("harbor", "verl", "verl_patch", "harbor_patch")
EDITABLE_DISTS = ("harbor", "verl", "harbor-verl-train")
HEAVY_IMPORTS = ("vllm", "torch", "ray", "verl", "harbor")
OWN_DIST = "harbor-verl-train"
_PROBE_MARK = "@@HVT-PROBE@@"
_PIP_CHECK = re.compile(
    r"^The package `(?P<pkg>[^`]+)` requires `(?P<req>[^`]+)`, but "
    r"(?:`(?P<have>[^`]+)` is installed|it's not installed)"
)


@dataclass
class Row:
    check: str
    subject: str
    version: str
    path: str
    ok: bool
    note: str = ""


class ProbeError(Exception):
    """The target interpreter could not be run or did not answer."""


def run_probe(python: Path, modules: list[str], imports: list[str], cwd: Path) -> dict[str, Any]:
    source = Path(venv_probe.__file__).read_text()
    args = json.dumps({"modules": modules, "imports": imports})
    try:
        proc = subprocess.run(
            [str(python), "-c", source, args], capture_output=True, text=True, cwd=cwd, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"{python}: could not run the probe: {exc}") from exc
    _, mark, payload = proc.stdout.rpartition(_PROBE_MARK)
    if proc.returncode != 0 or not mark:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise ProbeError(f"{python}: probe failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(payload)
    return result


def _under(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def check_modules(probe: dict[str, Any], modules: list[str], root: Path) -> list[Row]:
    rows = []
    for name in modules:
        info = probe["modules"][name]
        where = info["origin"] or (info["locations"][0] if info["locations"] else "")
        paths = [p for p in [info["origin"], *info["locations"]] if p]
        ok = info["error"] is None and bool(paths) and all(_under(p, root) for p in paths)
        note = info["error"] or ("" if ok else f"not under {root}")
        rows.append(Row("module", name, "", where, ok, note))
    return rows


def _editable_target(direct_url: dict[str, Any] | None) -> tuple[bool, str]:
    if not direct_url:
        return False, ""
    url = str(direct_url.get("url", ""))
    editable = bool(direct_url.get("dir_info", {}).get("editable"))
    parsed = urlparse(url)
    return editable, unquote(parsed.path) if parsed.scheme == "file" else url


def check_editables(probe: dict[str, Any], dists: list[str], root: Path) -> list[Row]:
    installed = {canonicalize_name(k): v for k, v in probe["distributions"].items()}
    rows = []
    for name in dists:
        info = installed.get(canonicalize_name(name))
        if info is None:
            rows.append(Row("editable", name, "", "", False, "not installed"))
            continue
        editable, target = _editable_target(info["direct_url"])
        ok = editable and _under(target, root)
        note = "" if ok else ("not editable" if not editable else f"points at {target}")
        rows.append(Row("editable", name, info["version"], target, ok, note))
    return rows


def check_docker(probe: dict[str, Any]) -> Row:
    info = probe["docker"]
    real = [str(Path(p).resolve()) for p in info["dist_files"]]
    got = str(Path(info["file"]).resolve()) if info["file"] and info["file"][0] != "[" else ""
    ok = bool(info["client_ok"]) and bool(real) and got in real
    if ok:
        note = ""
    elif info["error"]:
        note = str(info["error"])
    else:
        note = f"shadowed: `import docker` gets {info['file']}, not the SDK at {real or '?'}"
    version = next(
        (v["version"] for k, v in probe["distributions"].items() if k.lower() == "docker"), ""
    )
    return Row(
        "docker SDK", "from docker import DockerClient", version, info["file"] or "", ok, note
    )


def _same_version(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    try:
        return a == b or Version(a) == Version(b)
    except InvalidVersion:
        return False


def check_versions(probe: dict[str, Any], lock: Path) -> list[Row]:
    locked = read_pins(lock)
    installed: dict[str, str] = {
        str(canonicalize_name(k)): v["version"] for k, v in probe["distributions"].items()
    }
    diffs = [
        d
        for d in compare(locked, installed, allowed_extra={OWN_DIST})
        if not _same_version(d.locked, d.installed)
    ]
    rows = [
        Row("lock", d.name, d.installed or "-", f"lock: {d.locked or '-'}", False, d.kind)
        for d in diffs
    ]
    matched = len([n for n in locked if _same_version(locked[n], installed.get(n))])
    rows.append(
        Row(
            "lock",
            f"{matched}/{len(locked)} distributions",
            "",
            str(lock),
            not diffs,
            "" if not diffs else f"{len(diffs)} difference(s)",
        )
    )
    return rows


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    beside = Path(sys.executable).with_name("uv")
    if beside.is_file():
        return [str(beside)]
    raise ProbeError("uv not found on PATH (fix: install uv, the image has it in /opt/uv/bin)")


def check_pip(python: Path, overrides: dict[str, str]) -> list[Row]:
    proc = subprocess.run(
        [*_uv(), "pip", "check", "--python", str(python)], capture_output=True, text=True
    )
    text = proc.stdout + proc.stderr
    rows = []
    unexplained = 0
    for line in text.splitlines():
        match = _PIP_CHECK.match(line.strip())
        if match is None:
            continue
        try:
            required = str(canonicalize_name(Requirement(match["req"]).name))
        except InvalidRequirement:
            required = ""
        pinned = overrides.get(required)
        by_override = pinned is not None and _same_version(pinned, match["have"])
        unexplained += not by_override
        note = f"allowed: overrides pin {required}=={pinned}" if by_override else line.strip()
        rows.append(
            Row("pip check", match["pkg"], match["have"] or "-", match["req"], by_override, note)
        )
    clean = proc.returncode == 0 or (unexplained == 0 and rows)
    if not clean and not rows:
        rows.append(Row("pip check", "uv pip check", "", "", False, text.strip()[-300:]))
    rows.append(
        Row("pip check", "all distributions", "", "", bool(clean), "" if clean else "conflicts")
    )
    return rows


def check_imports(probe: dict[str, Any]) -> list[Row]:
    rows = []
    for name, info in probe["imports"].items():
        note = f"{info['seconds']:.1f} s" if info["ok"] else str(info["error"])
        rows.append(
            Row("import", name, info.get("version") or "", info.get("file") or "", info["ok"], note)
        )
    return rows


def verify(
    python: Path,
    lock: Path,
    overrides_file: Path | None,
    root: Path,
    modules: list[str],
    dists: list[str],
    imports: list[str],
    cwd: Path,
) -> list[Row]:
    probe = run_probe(python, modules, imports, cwd)
    overrides = read_pins(overrides_file) if overrides_file else {}
    rows = check_modules(probe, modules, root)
    rows += check_editables(probe, dists, root)
    rows.append(check_docker(probe))
    rows += check_versions(probe, lock)
    rows += check_pip(python, overrides)
    rows += check_imports(probe)
    return rows


def check_build_inputs(manifest_dir: Path, debian_lock: Path) -> list[Row]:
    """The base image and every Debian file the build fetched, against locks/debian.lock."""
    if not manifest_dir.is_dir():
        return []  # not an image of ours (a dev venv): nothing recorded
    base = manifest_dir / "base-image"
    rows = [
        Row(
            "built from",
            "base image",
            "",
            base.read_text().strip() if base.is_file() else "?",
            True,
        )
    ]
    locked: dict[tuple[str, str], str] = {}
    if debian_lock.is_file():
        for pkg in tomllib.loads(debian_lock.read_text()).get("package", []):
            locked[(pkg["group"], pkg["name"])] = pkg["sha256"]
    for path in sorted((manifest_dir / "debian").glob("*.json")):
        data = json.loads(path.read_text())
        for pkg in data["packages"]:
            want = locked.get((data["group"], pkg["name"]))
            ok = want == pkg["sha256"]
            note = "" if ok else f"lock says {want or 'nothing'}"
            rows.append(
                Row(f"debian {data['group']}", pkg["name"], pkg["version"],
                    f"sha256:{pkg['sha256'][:16]}", ok, note)
            )  # fmt: skip
    return rows


def render(rows: list[Row]) -> Table:
    table = Table(title="verify-venv")
    for col in ("check", "module / distribution", "version", "path", "verdict"):
        table.add_column(col, overflow="fold")
    for r in rows:
        verdict = "[green]ok[/]" if r.ok else "[bold red]FAIL[/]"
        if r.note:
            verdict += f" {r.note}"
        table.add_row(r.check, r.subject, r.version, r.path, verdict)
    return table


def _default(env: str, fallback: Path) -> Path:
    value = os.environ.get(env)
    return Path(value) if value else fallback


def verify_venv_command(
    python: Annotated[
        Path | None, typer.Option(help="interpreter of the venv to verify (default: this one)")
    ] = None,
    lock: Annotated[
        Path | None, typer.Option(help="lock file (default: $HVT_LOCK_FILE or locks/trainer.lock)")
    ] = None,
    overrides: Annotated[
        Path | None,
        typer.Option(help="deliberate pins that pip check may flag (default: locks/overrides.txt)"),
    ] = None,
    repos_root: Annotated[
        Path | None, typer.Option(help="where editable code must live (default: /workspace/repos)")
    ] = None,
    module: Annotated[
        list[str] | None, typer.Option(help="module that must resolve under the repos root")
    ] = None,
    dist: Annotated[
        list[str] | None, typer.Option(help="distribution that must be editable from there")
    ] = None,
    import_: Annotated[
        list[str] | None, typer.Option("--import", help="module that must import")
    ] = None,
) -> None:
    """Check that the venv runs the code in the repos root, at the locked versions."""
    bundle = bundle_root()
    target = python or Path(sys.executable)
    lock = lock or _default("HVT_LOCK_FILE", bundle / "locks" / "trainer.lock")
    overrides = overrides or _default("HVT_OVERRIDES_FILE", bundle / "locks" / "overrides.txt")
    root = repos_root or _default("HVT_REPOS_DIR", Path("/workspace/repos"))
    console = Console(width=max(Console().width, 160))
    imports = list(import_ if import_ is not None else HEAVY_IMPORTS)
    console.print(f"verifying {target} against {lock} (imports: {', '.join(imports) or 'none'})")
    try:
        rows = verify(
            target,
            lock,
            overrides if overrides.is_file() else None,
            root,
            list(module or EDITABLE_MODULES),
            list(dist or EDITABLE_DISTS),
            imports,
            Path.cwd(),
        )
        rows += check_build_inputs(
            _default("HVT_BUILD_MANIFEST_DIR", Path("/usr/share/hvt")),
            lock.with_name("debian.lock"),
        )
    except (ProbeError, LockFileError) as exc:
        console.print(f"[bold red]verify-venv: {exc}[/]")
        raise typer.Exit(2) from exc
    console.print(render(rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        console.print(f"[bold red]verify-venv FAILED: {len(failed)} check(s)[/]")
        raise typer.Exit(1)
    console.print(f"[bold green]verify-venv: the venv runs the code in {root}, as locked[/]")
