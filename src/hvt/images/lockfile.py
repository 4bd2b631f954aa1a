"""Read uv lock files (requirements format with hashes) and compare them to a venv."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


class LockFileError(Exception):
    """A lock or overrides file is missing or unreadable."""


def read_pins(path: Path) -> dict[str, str]:
    """Canonical name -> exact version, from `name==version` lines (hash lines are skipped)."""
    if not path.is_file():
        raise LockFileError(f"{path}: not found (fix: `make lock`, or pass the right --lock)")
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "--")):
            continue
        match = _PIN.match(stripped)
        if match is None:
            raise LockFileError(f"{path}:{number}: not an exact pin: {stripped!r}")
        pins[str(canonicalize_name(match.group(1)))] = match.group(2)
    if not pins:
        raise LockFileError(f"{path}: holds no pins")
    return pins


@dataclass(frozen=True)
class VersionDiff:
    name: str
    locked: str | None
    installed: str | None

    @property
    def kind(self) -> str:
        if self.installed is None:
            return "missing"
        if self.locked is None:
            return "not in the lock"
        return "version drift"


def compare(
    locked: dict[str, str], installed: dict[str, str], allowed_extra: set[str]
) -> list[VersionDiff]:
    """Every difference between the lock and the installed set (names canonical)."""
    diffs = []
    for name in sorted(locked.keys() | installed.keys()):
        want, have = locked.get(name), installed.get(name)
        if want == have or (want is None and name in allowed_extra):
            continue
        diffs.append(VersionDiff(name, want, have))
    return diffs


def read_inputs(path: Path) -> list[str]:
    """Requirement lines of a *.in file (comments and options dropped)."""
    out = []
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text and not text.startswith("-"):
            out.append(text)
    return out


def unsatisfied(requirements: list[str], pins: dict[str, str]) -> list[str]:
    """Each requirement the pins do not satisfy, with the reason (lock older than its inputs)."""
    problems = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(
            {"python_version": "3.12", "sys_platform": "linux", "platform_machine": "x86_64"}
        ):
            continue
        name = str(canonicalize_name(req.name))
        pinned = pins.get(name)
        if pinned is None:
            problems.append(f"{line}: not in the lock")
        elif req.specifier and not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{line}: the lock pins {pinned}")
    return problems
