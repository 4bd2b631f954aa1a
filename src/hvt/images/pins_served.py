"""Are the files our locks pin still served? PyPI hashes, npm integrity, Debian .debs.

CI runs this on every run (`make check-pins`), so an input that vanishes upstream (a yanked
wheel, a rebuilt Debian package) shows the day it happens, not when a build cache is gone.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from hvt.images.debian_fetch import open_url, stale_pins

PYPI_SIMPLE = "https://pypi.org/simple"
NPM = "https://registry.npmjs.org"
WORKERS = 8
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class Finding:
    source: str  # the lock file
    pin: str  # name==version
    problem: str  # empty when served


def uv_lock_hashes(path: Path) -> dict[tuple[str, str], set[str]]:
    """(name, version) -> its sha256 hashes, from a uv requirements lock."""
    pins: dict[tuple[str, str], set[str]] = {}
    current: tuple[str, str] | None = None
    for line in path.read_text().splitlines():
        if match := _PIN.match(line.strip()):
            current = (match.group(1), match.group(2))
            pins[current] = set()
        elif current is not None:
            pins[current].update(_HASH.findall(line))
    return pins


def _get_json(url: str, accept: str = "application/json") -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with open_url(request) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def pypi_served(name: str) -> set[str]:
    """sha256 of every file of the project the index serves and has not yanked (PEP 691)."""
    data = _get_json(f"{PYPI_SIMPLE}/{name}/", "application/vnd.pypi.simple.v1+json")
    return {
        str(f["hashes"]["sha256"])
        for f in data.get("files", [])
        if not f.get("yanked") and "sha256" in f.get("hashes", {})
    }


def check_pypi(lock: str, name: str, pins: dict[str, set[str]]) -> list[Finding]:
    """All pins of one project (version -> locked hashes) against one index page."""
    try:
        served = pypi_served(name)
    except urllib.error.HTTPError as exc:
        return [Finding(lock, f"{name}=={v}", f"the index answers {exc.code}") for v in pins]
    except OSError as exc:
        return [
            Finding(lock, f"{name}=={v}", f"could not be checked, the index is unreachable: {exc}")
            for v in pins
        ]
    findings = []
    for version, hashes in pins.items():
        pin = f"{name}=={version}"
        if not hashes:
            findings.append(Finding(lock, pin, "the lock has no hash for this pin"))
        elif not hashes & served:
            findings.append(
                Finding(lock, pin, "none of its locked files is served (deleted or yanked)")
            )
        else:
            findings.append(Finding(lock, pin, ""))
    return findings


def check_npm(lock: Path, name: str, version: str, integrity: str) -> list[Finding]:
    pin = f"{name}@{version}"
    try:
        data = _get_json(f"{NPM}/{name}/{version}")
    except urllib.error.HTTPError as exc:
        return [Finding(lock.name, pin, f"the npm registry answers {exc.code}")]
    except OSError as exc:
        return [
            Finding(lock.name, pin, f"could not be checked, the npm registry is unreachable: {exc}")
        ]
    dist = data.get("dist")
    served = dist.get("integrity") if isinstance(dist, dict) else None
    if served != integrity:
        return [Finding(lock.name, pin, f"integrity differs: locked {integrity}, served {served}")]
    return [Finding(lock.name, pin, "")]


def npm_pins(lock: Path) -> list[tuple[str, str, str]]:
    data = json.loads(lock.read_text())
    out = []
    for key, meta in data.get("packages", {}).items():
        if key.startswith("node_modules/") and "integrity" in meta:
            out.append((key.removeprefix("node_modules/"), meta["version"], meta["integrity"]))
    return out


def check_all(locks_dir: Path, say: Callable[[str], None]) -> list[Finding]:
    """Every pin of every lock; returns the findings with a problem (empty: all served)."""
    by_project: dict[str, dict[str, set[str]]] = {}  # name -> version -> hashes
    where: dict[str, str] = {}
    for name in ("trainer.lock", "proxy.lock", "uv.lock"):
        for (pkg, version), hashes in uv_lock_hashes(locks_dir / name).items():
            key = canonicalize_name(pkg)
            by_project.setdefault(key, {}).setdefault(version, set()).update(hashes)
            where.setdefault(key, name)
    jobs: list[Callable[[], list[Finding]]] = [
        partial(check_pypi, where[name], name, pins) for name, pins in by_project.items()
    ]
    npm_lock = locks_dir / "agent-runtime" / "package-lock.json"
    jobs += [
        partial(check_npm, npm_lock, pkg, version, integrity)
        for pkg, version, integrity in npm_pins(npm_lock)
    ]
    say(f"checking {len(by_project)} PyPI projects and the npm pins ({WORKERS} at a time)")
    with ThreadPoolExecutor(max_workers=WORKERS + 1) as pool:
        debian = pool.submit(stale_pins, locks_dir / "debian.lock")  # beside the index lookups
        results = [f for found in pool.map(lambda job: job(), jobs) for f in found]
        findings = [f for f in results if f.problem]
        say(f"PyPI and npm: {len(results) - len(findings)}/{len(results)} pins served")
        total, stale = debian.result()
    say(f"Debian: {total - len(stale)}/{total} files served")
    findings += [Finding("debian.lock", line.split(" ")[3], line) for line in stale]
    return findings
