"""Build one pinned source tree: from git at its commit, or from the PyPI release of the same code.

Everything is built in a scratch directory next to the target and moved into place only when it
is complete, so a failure leaves nothing half-done.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

from hvt.repos.spec import GitPin, PypiPin

MARKER = ".hvt-source.json"
# not part of a tree's identity: VCS data, caches, build by-products, our own marker
_IGNORED_DIRS = {".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "build"}
_IGNORED_SUFFIXES = (".pyc", ".egg-info")

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")

Say = Callable[[str], None]


class FetchError(Exception):
    """A source could not be fetched or built; the message says what to do."""


def iter_tree_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p in _IGNORED_DIRS or p.endswith(_IGNORED_SUFFIXES) for p in rel.parts):
            continue
        if rel.as_posix() == MARKER or not (path.is_file() or path.is_symlink()):
            continue
        yield path


def tree_manifest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of content (symlinks: of their target text)."""
    out: dict[str, str] = {}
    for path in iter_tree_files(root):
        data = str(path.readlink()).encode() if path.is_symlink() else path.read_bytes()
        out[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def manifest_digest(manifest: dict[str, str]) -> str:
    blob = "\n".join(f"{k} {v}" for k, v in sorted(manifest.items()))
    return hashlib.sha256(blob.encode()).hexdigest()


def git_reachable(url: str, timeout: float = 20.0) -> bool:
    try:
        proc = subprocess.run(
            ["git", "ls-remote", "--exit-code", url, "HEAD"],
            capture_output=True,
            timeout=timeout,
            env={"GIT_TERMINAL_PROMPT": "0", **_git_env()},
        )
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False
    return proc.returncode == 0


def _git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("GIT_", "HOME", "PATH", "SSL"))}


def _git(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def build_from_git(pin: GitPin, dest: Path, say: Say) -> str:
    """Clone `pin` into dest at its commit; returns the commit checked out."""
    say(f"git clone {pin.url} (ref {pin.ref})")
    dest.mkdir(parents=True)
    _git(["init", "-q"], dest)
    _git(["remote", "add", "origin", pin.url], dest)
    want = pin.commit or pin.ref
    _git(["fetch", "-q", "--depth", "1", "origin", want], dest)
    _git(["checkout", "-q", "--detach", "FETCH_HEAD"], dest)
    head = _git(["rev-parse", "HEAD"], dest)
    if pin.commit and head != pin.commit:
        raise FetchError(f"{pin.url}: fetched {head}, expected commit {pin.commit}")
    if not pin.commit:
        say(f"ref {pin.ref} is commit {head}: pin it as git.commit in config/repos.yaml")
    return head


def _simple_index_url(pin: PypiPin) -> str:
    return f"{pin.index_url.rstrip('/')}/{pin.name}/"


def download_release(pin: PypiPin, into: Path, say: Say) -> Path:
    """Download the pinned release file and check its sha256."""
    req = urllib.request.Request(
        _simple_index_url(pin), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            index = json.load(resp)
    except OSError as exc:
        raise FetchError(
            f"{_simple_index_url(pin)}: unreachable ({exc}); fix: check the network or "
            "pypi.index_url in config/repos.yaml"
        ) from exc
    urls = [f["url"] for f in index.get("files", []) if f.get("filename") == pin.filename]
    if not urls:
        raise FetchError(
            f"{pin.filename} is not on {pin.index_url} (fix: pypi.filename in config/repos.yaml)"
        )
    target = into / pin.filename
    say(f"downloading {pin.filename} from {pin.index_url}")
    digest = hashlib.sha256()
    with urllib.request.urlopen(urls[0], timeout=300) as resp, target.open("wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != pin.sha256:
        raise FetchError(
            f"{pin.filename}: sha256 {digest.hexdigest()} != pinned {pin.sha256} "
            "(the registry served another file; do not trust it)"
        )
    return target


def _safe_members(tar: tarfile.TarFile, top: str) -> list[tarfile.TarInfo]:
    members = []
    for member in tar.getmembers():
        parts = PurePosixPath(member.name).parts
        if not parts or parts[0] != top or ".." in parts or member.name.startswith("/"):
            raise FetchError(f"sdist member {member.name!r} is outside {top}/: refusing")
        members.append(member)
    return members


def unpack_sdist(archive: Path, pin: PypiPin, dest: Path) -> None:
    top = archive.name.removesuffix(".tar.gz")
    with tarfile.open(archive) as tar:
        members = _safe_members(tar, top)
        tar.extractall(dest.parent / ".sdist", members=members, filter="data")
    (dest.parent / ".sdist" / top).rename(dest)
    shutil.rmtree(dest.parent / ".sdist")


def _pyproject_from_metadata(meta_text: str, entry_points: str, packages: list[str]) -> str:
    """A pyproject.toml that installs the unpacked wheel sources (editable or not)."""
    meta = email.parser.Parser().parsestr(meta_text)
    deps: list[str] = []
    extras: dict[str, list[str]] = {name: [] for name in meta.get_all("Provides-Extra") or []}
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        extra = _extra_of(req, list(extras))
        if extra is None:
            deps.append(str(req))
        else:  # the marker stays: it names the extra, which is true when the extra is asked for
            extras[extra].append(str(req))
    scripts = _console_scripts(entry_points)

    def q(value: str) -> str:
        return json.dumps(value)

    out = [
        "# Generated by `hvt repos` from the wheel's METADATA: the release ships no sdist.",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f"name = {q(meta['Name'])}",
        f"version = {q(meta['Version'])}",
    ]
    if meta.get("Summary"):
        out.append(f"description = {q(meta['Summary'])}")
    if meta.get("Requires-Python"):
        out.append(f"requires-python = {q(meta['Requires-Python'])}")
    out.append("dependencies = [" + ", ".join(q(d) for d in deps) + "]")
    out += ["", "[project.optional-dependencies]"]
    out += [f"{q(k)} = [" + ", ".join(q(d) for d in v) + "]" for k, v in sorted(extras.items())]
    if scripts:
        out += ["", "[project.scripts]"] + [f"{q(k)} = {q(v)}" for k, v in scripts.items()]
    out += [
        "",
        "[tool.hatch.build.targets.wheel]",
        "packages = [" + ", ".join(q(f"src/{p}") for p in packages) + "]",
        "",
    ]
    return "\n".join(out)


def _extra_of(req: Requirement, extras: list[str]) -> str | None:
    """The extra a Requires-Dist line belongs to, or None for a base dependency."""
    if req.marker is None:
        return None
    found = _EXTRA_MARKER.search(str(req.marker))
    if found is None:
        return None
    if found.group(1) not in extras:
        raise FetchError(f"Requires-Dist {req} names an extra the wheel does not provide")
    return found.group(1)


def _console_scripts(text: str) -> dict[str, str]:
    scripts: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "console_scripts" and "=" in line:
            name, _, target = line.partition("=")
            scripts[name.strip()] = target.strip()
    return scripts


def unpack_wheel(archive: Path, dest: Path) -> None:
    """Lay a pure-Python wheel out as a source tree: src/<pkg>/ plus a generated pyproject."""
    with zipfile.ZipFile(archive) as whl:
        names = whl.namelist()
        dist_info = sorted(
            {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        )
        if len(dist_info) != 1:
            raise FetchError(
                f"{archive.name}: expected one .dist-info directory, found {dist_info}"
            )
        info = dist_info[0]
        wheel_meta = whl.read(f"{info}/WHEEL").decode()
        if "Root-Is-Purelib: true" not in wheel_meta:
            raise FetchError(f"{archive.name}: not a pure-Python wheel; cannot be a source tree")
        tops = sorted(
            {
                n.split("/")[0]
                for n in names
                if not n.split("/")[0].endswith((".dist-info", ".data"))
            }
        )
        src = dest / "src"
        for name in names:
            top = name.split("/")[0]
            if top.endswith((".dist-info", ".data")) or name.endswith("/"):
                continue
            parts = PurePosixPath(name).parts
            if ".." in parts or name.startswith("/"):
                raise FetchError(f"wheel member {name!r} escapes the tree: refusing")
            target = src.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(whl.read(name))
        meta = whl.read(f"{info}/METADATA").decode()
        entry_points = (
            whl.read(f"{info}/entry_points.txt").decode()
            if (f"{info}/entry_points.txt" in names)
            else ""
        )
    packages = [t.removesuffix(".py") for t in tops if (src / t).is_dir()]
    (dest / "pyproject.toml").write_text(_pyproject_from_metadata(meta, entry_points, packages))
    (dest / "PKG-INFO").write_text(meta)


def build_from_pypi(pin: PypiPin, dest: Path, scratch: Path, say: Say) -> None:
    archive = download_release(pin, scratch, say)
    if pin.kind == "sdist":
        unpack_sdist(archive, pin, dest)
    else:
        dest.mkdir(parents=True)
        unpack_wheel(archive, dest)


def apply_patches(tree: Path, patches: list[Path], say: Say) -> None:
    for patch in patches:
        say(f"applying {patch.name}")
        proc = subprocess.run(
            ["git", "apply", "--whitespace=nowarn", "-p1", str(patch)],
            cwd=tree,
            capture_output=True,
            text=True,
            # a tree from PyPI has no .git: stop git from using an enclosing repository
            env={**_git_env(), "GIT_CEILING_DIRECTORIES": str(tree.parent)},
        )
        if proc.returncode != 0:
            raise FetchError(
                f"{patch}: does not apply to the pinned tree: {proc.stderr.strip()} "
                "(fix: rebase the patch onto the pinned release)"
            )
