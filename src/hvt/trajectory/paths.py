"""Map the trial header of a proxied call to its trajectory file, refusing any path escape.

The agent sends `x-harbor-trial-dir: <step>/<trial>` (relative to the trials root) or an
absolute path under the root. The record goes to
`<root>/<step>/<trial>/proxy/litellm-trajectory.jsonl`: `proxy/`, not `agent/`, which Harbor
shares with the sandbox (bind-mounted on the local engine, copied back from a remote one), so
the code in a sandbox cannot write or replace its own trajectory. Refused: empty or NUL-bearing
values,
any `..` component, absolute paths outside the root, a trial directory that does not exist, and
a symlink anywhere below the root (each directory is opened with O_NOFOLLOW relative to its
parent's descriptor, so a symlink swapped in after the check cannot redirect the write either).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path, PurePosixPath

HEADER = "x-harbor-trial-dir"
ROOT_ENV = "HVT_TRIALS_ROOT"
RECORD_DIR = "proxy"  # in the trial dir; never shared with the sandbox
FILE_NAME = "litellm-trajectory.jsonl"
MAX_HEADER_LEN = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class RouteRefused(ValueError):
    """The header does not name a trial directory under the trials root."""


def trial_parts(root: Path, header: str) -> tuple[str, ...]:
    """The trial directory as path components below `root` (lexical checks only)."""
    if not header or not header.strip():
        raise RouteRefused("empty trial dir")
    if "\x00" in header or len(header) > MAX_HEADER_LEN:
        raise RouteRefused("trial dir contains NUL or is too long")
    value = header.strip()
    raw = PurePosixPath(value)
    if ".." in raw.parts:
        raise RouteRefused(f"trial dir {value!r} contains '..'")
    if raw.is_absolute():
        for base in _root_spellings(root):
            try:
                parts = raw.relative_to(base).parts
                break
            except ValueError:
                continue
        else:
            raise RouteRefused(f"absolute trial dir {value!r} is outside the trials root {root}")
    else:
        parts = raw.parts
    parts = tuple(p for p in parts if p not in ("", "."))
    if not parts:
        raise RouteRefused(f"trial dir {value!r} is the trials root itself")
    return parts


def _root_spellings(root: Path) -> list[PurePosixPath]:
    spellings = [PurePosixPath(os.path.normpath(root))]
    real = PurePosixPath(os.path.realpath(root))
    if real not in spellings:
        spellings.append(real)
    return spellings


def open_for_append(root: Path, parts: tuple[str, ...]) -> int:
    """Open (creating `agent/` and the file if needed) the trajectory file for appending."""
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            raise RouteRefused(f"trials root {root} cannot be opened: {exc.strerror}") from None
        for part in parts:
            fds.append(_open_dir(fds[-1], part, root, parts))
        try:
            agent = os.open(RECORD_DIR, _DIR_FLAGS, dir_fd=fds[-1])
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(RECORD_DIR, 0o755, dir_fd=fds[-1])
            agent = _open_dir(fds[-1], RECORD_DIR, root, parts)
        except OSError as exc:
            raise _refusal(exc, RECORD_DIR, root, parts) from None
        fds.append(agent)
        try:
            return os.open(FILE_NAME, _FILE_FLAGS, 0o644, dir_fd=agent)
        except OSError as exc:
            raise _refusal(exc, f"{RECORD_DIR}/{FILE_NAME}", root, parts) from None
    finally:
        for fd in fds:
            os.close(fd)


def _open_dir(parent_fd: int, name: str, root: Path, parts: tuple[str, ...]) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        raise _refusal(exc, name, root, parts) from None


def _refusal(exc: OSError, name: str, root: Path, parts: tuple[str, ...]) -> RouteRefused:
    where = f"{root}/{'/'.join(parts)}"
    if exc.errno in (errno.ELOOP, errno.ENOTDIR) or (
        exc.errno == errno.EEXIST and name.endswith(FILE_NAME)
    ):
        return RouteRefused(f"{name!r} under {where} is a symlink or not a directory")
    if exc.errno == errno.ENOENT:
        return RouteRefused(f"trial dir {where} does not exist (component {name!r})")
    return RouteRefused(f"cannot open {name!r} under {where}: {exc.strerror}")
