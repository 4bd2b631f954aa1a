"""Build-time only: make an installed venv the same on every build (python3, stdlib only).

settle <python> <uv> <lock>   Some wheels ship the same file (nvidia-cutlass-dsl-libs-base and
                              -cu13 overlay one tree; flashinfer-python and torch-c-dlpack-ext
                              both ship a top-level build_backend.py). uv installs in parallel,
                              so which copy survives varies between builds. Reinstall every
                              owner of a shared file one by one, sorted by name: the last name
                              wins, on every build (-cu13 over -base, as intended).
strip <site-packages>         Drop uv_cache.json (source mtimes, written for editable installs)
                              from each dist-info and from its RECORD.
bytecode <dir>                Run with the venv's own python. Compile every module under
                              <dir> once, at build time, as unchecked-hash .pyc (no source
                              mtime inside). The runtime user cannot write to /opt/venv, so
                              without them every process compiled torch, ray, transformers
                              and verl again at import (about 40 s of CPU each, measured in
                              the trainer image; 12-21 s with them). Timestamp .pyc left by
                              build backends are removed first, then only the modules without
                              one are compiled, so a later layer adds only its own.
"""

from __future__ import annotations

import csv
import importlib.util
import py_compile
import re
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _site_packages(python: str) -> Path:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_entries(lock: Path) -> dict[str, str]:
    """Canonical name -> the lock's whole entry (pin line and hash lines)."""
    entries: dict[str, str] = {}
    current = None
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==", line)
        if match:
            current = _norm(match.group(1))
            entries[current] = line + "\n"
        elif current and line.startswith("    --hash"):
            entries[current] += line + "\n"
        elif not line.startswith(" "):
            current = None
    return entries


def settle(python: str, uv: str, lock: Path) -> None:
    site = _site_packages(python)
    owners: dict[str, set[str]] = defaultdict(set)
    for record in site.glob("*.dist-info/RECORD"):
        name = _norm(record.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0])
        for row in csv.reader(record.read_text().splitlines()):
            if row and "__pycache__" not in row[0] and not row[0].endswith("/"):
                owners[row[0]].add(name)
    shared = sorted({n for names in owners.values() if len(names) > 1 for n in names})
    if not shared:
        print("settle: no file is shipped by two distributions")
        return
    entries = _lock_entries(lock)
    missing = [n for n in shared if n not in entries]
    if missing:
        raise SystemExit(f"settle: {missing} share files but are not in {lock}")
    print(f"settle: reinstalling in name order: {', '.join(shared)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in shared:
            one = Path(tmp) / f"{name}.txt"
            one.write_text(entries[name])
            subprocess.run(
                [
                    uv,
                    "pip",
                    "install",
                    "--python",
                    python,
                    "--reinstall",
                    "--no-deps",
                    "--require-hashes",
                    "-q",
                    "-r",
                    str(one),
                ],
                check=True,
            )


def strip(site: Path) -> None:
    for cache in site.glob("*.dist-info/uv_cache.json"):
        record = cache.parent / "RECORD"
        rel = f"{cache.parent.name}/uv_cache.json"
        lines = [
            ln
            for ln in record.read_text().splitlines(keepends=True)
            if not ln.startswith(rel + ",")
        ]
        record.write_text("".join(lines))
        cache.unlink()
        print(f"strip: {rel}")


def _timestamp_pyc(path: Path) -> bool:
    """A .pyc whose header carries a source mtime (flags word 0), not a source hash (PEP 552)."""
    with path.open("rb") as f:
        header = f.read(8)
    return len(header) < 8 or int.from_bytes(header[4:8], "little") == 0


def _compile(source: str) -> bool:
    try:
        with warnings.catch_warnings():  # wheels' own SyntaxWarnings: theirs, not ours
            warnings.simplefilter("ignore")
            py_compile.compile(
                source,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
    except py_compile.PyCompileError:
        return False  # test fixtures that are not valid Python 3: skipped, as pip does
    return True


def bytecode(root: Path) -> None:
    stale = [p for p in root.rglob("__pycache__/*.pyc") if _timestamp_pyc(p)]
    for pyc in stale:
        pyc.unlink()
    todo = sorted(
        str(p)
        for p in root.rglob("*.py")
        if p.is_file() and not Path(importlib.util.cache_from_source(str(p))).exists()
    )
    with ProcessPoolExecutor() as pool:
        compiled = sum(pool.map(_compile, todo, chunksize=64))
    print(
        f"bytecode: {compiled} .pyc written under {root} ({len(todo) - compiled} not Python 3, "
        f"{len(stale)} timestamp .pyc removed)"
    )


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[0] == "settle":
        settle(argv[1], argv[2], Path(argv[3]))
    elif len(argv) == 2 and argv[0] == "strip":
        strip(Path(argv[1]))
    elif len(argv) == 2 and argv[0] == "bytecode":
        bytecode(Path(argv[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
