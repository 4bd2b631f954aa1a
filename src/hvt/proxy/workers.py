"""How many LiteLLM worker processes `hvt proxy` runs: a number, or `auto` from the usable cores.

`auto` counts the cores this process may really use, not the machine's:

- the CPU affinity mask (`os.sched_getaffinity`: `taskset`, `docker run --cpuset-cpus`), and
- the CPU quota of its cgroup and every parent (cgroup v2 `cpu.max`, v1
  `cpu.cfs_quota_us`/`cpu.cfs_period_us`: `docker run --cpus`, compose `cpus:`, Kubernetes CPU
  limits), rounded down to whole cores, at least 1;

and then takes **one worker per usable core, less one core** (the supervisor, each worker's
trajectory-writer thread and the kernel's share of the network traffic), at least 1 and at
most `AUTO_MAX_WORKERS`. One call cost a worker 50-84 ms of CPU on the busy development box
(docs/proxy.md section 5: about 3 workers per 100 concurrent agents), so the cap covers about
260 agents; more workers than that only hold memory (about 350 MB each) and lengthen LiteLLM's
start and restart.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
AUTO_RESERVED_CORES = 1
AUTO_MAX_WORKERS = 8
OPTION = "--workers"
CONFIG_KEY = "infrastructure.litellm_workers"


class WorkersError(ValueError):
    """A worker count that is neither a whole number >= 1 nor `auto`; says the fix."""


def parse(value: str | int, where: str = OPTION) -> int | None:
    """A worker count (int >= 1), or None for `auto`; WorkersError naming `where` otherwise."""
    if isinstance(value, bool):
        raise WorkersError(_bad(where, value))
    if isinstance(value, int):
        if value >= 1:
            return value
        raise WorkersError(_bad(where, value))
    text = value.strip()
    if text.lower() == AUTO:
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise WorkersError(_bad(where, value))


def _bad(where: str, value: object) -> str:
    return (
        f"{where} must be a whole number of LiteLLM worker processes (1 or more) or "
        f"'{AUTO}', got {value!r}: e.g. {where} {AUTO} (one per usable core less one, at most "
        f"{AUTO_MAX_WORKERS}) or {where} 2"
    )


@dataclass(frozen=True)
class CpuBudget:
    """The cores this process may use, and where each limit came from."""

    affinity: int  # CPUs in the affinity mask
    online: int  # os.cpu_count()
    quota: float | None = None  # CPUs the cgroup quota allows; None = no quota
    quota_source: str = ""  # the file that set the tightest quota

    @property
    def cores(self) -> int:
        """Whole cores usable: the affinity count, lowered by a quota (rounded down, >= 1)."""
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.floor(self.quota)))

    def describe(self) -> str:
        quota = (
            f"cgroup quota {self.quota:g} CPUs in {self.quota_source}"
            if self.quota is not None
            else "no cgroup CPU quota"
        )
        return f"{self.cores} cores available ({quota}; affinity {self.affinity} of {self.online})"


def auto_workers(cores: int) -> int:
    """The `auto` rule: one worker per usable core less AUTO_RESERVED_CORES, in [1, cap]."""
    return max(1, min(AUTO_MAX_WORKERS, cores - AUTO_RESERVED_CORES))


def resolve(requested: int | None, budget: CpuBudget) -> tuple[int, str]:
    """(workers, the line to print at start) for a count or None (`auto`)."""
    if requested is None:
        workers = auto_workers(budget.cores)
        return workers, (
            f"{workers} LiteLLM worker{'s' if workers != 1 else ''} ({OPTION} {AUTO}: one per "
            f"core less {AUTO_RESERVED_CORES}, 1 to {AUTO_MAX_WORKERS}): {budget.describe()}"
        )
    line = (
        f"{requested} LiteLLM worker{'s' if requested != 1 else ''} ({OPTION} {requested}): "
        f"{budget.describe()}"
    )
    if requested > budget.cores:
        line += f"; more workers than cores: they compete for {budget.cores}"
    return requested, line


# --- reading the limits ------------------------------------------------------------------------


def cpu_budget(proc: Path = Path("/proc/self")) -> CpuBudget:
    """This process's CpuBudget, from its affinity mask and its cgroup's CPU quota."""
    online = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = online
    found = cgroup_quota(proc)
    if found is None:
        return CpuBudget(affinity=affinity, online=online)
    return CpuBudget(affinity=affinity, online=online, quota=found[0], quota_source=found[1])


def cgroup_quota(proc: Path = Path("/proc/self")) -> tuple[float, str] | None:
    """(CPUs, file) of the tightest CPU quota on this process's cgroup path; None without one.

    Reads /proc/self/cgroup and /proc/self/mountinfo, then `cpu.max` (v2: "<quota> <period>" or
    "max <period>") or `cpu.cfs_quota_us` / `cpu.cfs_period_us` (v1: -1 = none) in the process's
    cgroup directory and each parent up to the mount point. Unreadable files count as no limit.
    """
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    best: tuple[float, str] | None = None
    for line in memberships:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = True
        elif "cpu" in controllers.split(","):
            v2 = False
        else:
            continue
        for mount_root, mount_point in _cgroup_mounts(mounts, v2):
            for directory in _cgroup_dirs(Path(mount_point), mount_root, path):
                quota = _read_v2(directory) if v2 else _read_v1(directory)
                if quota is not None and (best is None or quota[0] < best[0]):
                    best = quota
    return best


def _cgroup_mounts(mountinfo: list[str], v2: bool) -> list[tuple[str, str]]:
    """(root, mount point) of the cgroup2 mounts, or of the v1 mounts holding `cpu`."""
    found = []
    for line in mountinfo:
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        fstype, options = after[0], after[2].split(",")
        if (v2 and fstype == "cgroup2") or (not v2 and fstype == "cgroup" and "cpu" in options):
            found.append((_unescape(fields[3]), _unescape(fields[4])))
    return found


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def _cgroup_dirs(mount_point: Path, mount_root: str, path: str) -> list[Path]:
    """The process's cgroup directory under the mount point, then each parent to the mount."""
    rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
    if rel.startswith(".."):
        rel = "."
    here = mount_point / rel
    if not here.is_dir():  # another cgroup namespace's view: only the mount itself is ours
        here = mount_point
    dirs = [here]
    while here != mount_point and mount_point in here.parents:
        here = here.parent
        dirs.append(here)
    return dirs


def _read_v2(directory: Path) -> tuple[float, str] | None:
    target = directory / "cpu.max"
    try:
        quota, _, period = target.read_text().strip().partition(" ")
    except OSError:
        return None
    if quota == "max":
        return None
    try:
        cpus = int(quota) / int(period or "100000")
    except (ValueError, ZeroDivisionError):
        return None
    return (cpus, str(target)) if cpus > 0 else None


def _read_v1(directory: Path) -> tuple[float, str] | None:
    target = directory / "cpu.cfs_quota_us"
    try:
        quota = int(target.read_text().strip())
        period = int((directory / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period, str(target)
