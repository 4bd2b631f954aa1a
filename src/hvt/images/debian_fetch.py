"""Fetch the Debian packages pinned in locks/debian.lock, by sha256.

Stdlib only: the image build runs this file with the base image's python3 (a bind mount of
src/hvt/images/debian_fetch.py), and `hvt pins check` imports it on the host.

  python3 debian_fetch.py fetch LOCK GROUP DEST   download GROUP's files into DEST, verify each
                                                  sha256, write DEST/manifest.json
  python3 debian_fetch.py check LOCK              is every pinned file still served? (the
                                                  mirror's indexes now, then snapshot.debian.org)

A file is looked for on the mirror first, then on snapshot.debian.org at the lock's timestamp
(the archive that keeps old versions). When neither serves it, one line names the package, the
pinned version, the version the mirror serves now, and the fix (`make lock`); exit 1.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import lzma
import os
import sys
import time
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MIRRORS = {
    "debian": os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian"),
    "debian-security": os.environ.get(
        "DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
    ),
}
SNAPSHOT = os.environ.get("DEBIAN_SNAPSHOT", "https://snapshot.debian.org/archive")
TIMEOUT = 60
ATTEMPTS = 5  # transient errors (resets, timeouts, 5xx) are retried; a 404 is an answer


def open_url(request: urllib.request.Request | str) -> Any:
    """urlopen with retries on transient errors (DNS, resets, timeouts, 5xx) and backoff;
    an HTTP 4xx is an answer and is raised at once."""
    for attempt in range(ATTEMPTS):
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == ATTEMPTS - 1:
                raise
        except OSError:
            if attempt == ATTEMPTS - 1:
                raise
        time.sleep(2**attempt)
    raise AssertionError("unreachable")


class StalePin(Exception):
    """A pinned file is served by neither the mirror nor the snapshot archive."""


def urls_for(pkg: dict[str, Any], snapshot: str) -> list[str]:
    archive = pkg["archive"]
    urls = [f"{MIRRORS[archive].rstrip('/')}/{pkg['filename']}"]
    if snapshot and SNAPSHOT:
        urls.append(f"{SNAPSHOT.rstrip('/')}/{archive}/{snapshot}/{pkg['filename']}")
    return urls


def index_suites(pkg: dict[str, Any]) -> list[str]:
    suite = pkg["suite"]
    if pkg["archive"] == "debian-security":
        return [f"{suite}-security"]
    return [suite, f"{suite}-updates"]


@functools.cache
def index(archive: str, suite: str, arch: str) -> dict[str, list[dict[str, str]]]:
    """Package name -> its stanzas (Version, Filename, SHA256) in the mirror's index now."""
    url = f"{MIRRORS[archive].rstrip('/')}/dists/{suite}/main/binary-{arch}/Packages.xz"
    try:
        with open_url(url) as resp:
            text = lzma.decompress(resp.read()).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}  # e.g. a suite without -updates
        raise
    out: dict[str, list[dict[str, str]]] = {}
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            out.setdefault(fields["Package"], []).append(fields)
    return out


def served_version(pkg: dict[str, Any]) -> str:
    """The version(s) of pkg's name that the mirror's index lists now ("none" if it lists none)."""
    found = [
        f"{stanza['Version']} ({suite})"
        for suite in index_suites(pkg)
        for stanza in index(pkg["archive"], suite, pkg["arch"]).get(pkg["name"], [])
    ]
    return ", ".join(found) or "none"


def in_index(pkg: dict[str, Any]) -> bool:
    return any(
        stanza.get("Filename") == pkg["filename"] and stanza.get("SHA256") == pkg["sha256"]
        for suite in index_suites(pkg)
        for stanza in index(pkg["archive"], suite, pkg["arch"]).get(pkg["name"], [])
    )


def stale_line(pkg: dict[str, Any], lock: Path) -> str:
    return (
        f"debian pin stale: {pkg['name']} {pkg['version']} ({pkg['suite']}) is no longer served "
        f"by {MIRRORS[pkg['archive']]} nor the snapshot archive; the mirror now serves "
        f"{served_version(pkg)}. Fix: make lock (regenerates {lock.name}), then rebuild."
    )


def download(pkg: dict[str, Any], snapshot: str, dest: Path, lock: Path) -> Path:
    target = dest / Path(pkg["filename"]).name
    errors: list[str] = []
    for url in urls_for(pkg, snapshot):
        try:
            with open_url(url) as resp:
                data = resp.read()
        except (OSError, urllib.error.URLError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != pkg["sha256"]:
            raise SystemExit(
                f"debian pin mismatch: {pkg['name']} {pkg['version']} from {url} has sha256 "
                f"{digest}, the lock says {pkg['sha256']}. Fix: make lock if the archive "
                "rebuilt it on purpose; otherwise do not build (the file was tampered with)."
            )
        target.write_bytes(data)
        return target
    raise StalePin(stale_line(pkg, lock))


def is_served(pkg: dict[str, Any], snapshot: str) -> str:
    """ "" when a pinned URL serves the file; otherwise what each URL answered."""
    answers = []
    for url in urls_for(pkg, snapshot):
        try:
            with open_url(urllib.request.Request(url, method="HEAD")) as resp:
                length = resp.headers.get("Content-Length")
                if length is None or int(length) == pkg["size"]:
                    return ""
                answers.append(f"{url}: {length} bytes, the lock says {pkg['size']}")
        except OSError as exc:
            answers.append(f"{url}: {exc}")
    return "; ".join(answers)


def load(lock: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(lock.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"{lock}: cannot read the Debian lock ({exc}). Fix: make lock") from exc


def fetch(lock: Path, group: str, dest: Path) -> int:
    data = load(lock)
    pkgs = [p for p in data.get("package", []) if p["group"] == group]
    if not pkgs:
        raise SystemExit(f"{lock}: no packages for group {group!r}. Fix: make lock")
    dest.mkdir(parents=True, exist_ok=True)
    snapshot = data["meta"]["snapshot"]
    print(f"debian_fetch: {group}: {len(pkgs)} package(s), pinned by sha256", flush=True)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda p: download(p, snapshot, dest, lock), pkgs))
    except StalePin as exc:
        print(exc, file=sys.stderr)
        return 1
    manifest = [
        {k: p[k] for k in ("name", "version", "suite", "archive", "filename", "sha256")}
        for p in pkgs
    ]
    (dest / "manifest.json").write_text(
        json.dumps({"group": group, "lock_generated": data["meta"]["generated"],
                    "packages": manifest}, indent=1) + "\n"
    )  # fmt: skip
    print(f"debian_fetch: {group}: {len(pkgs)} file(s) verified", flush=True)
    return 0


def stale_pins(lock: Path) -> tuple[int, list[str]]:
    """(number of pins, one line per pin not served): every pin must be listed with its sha256
    in the mirror's index now, or else answer on the pool or the snapshot archive."""
    data = load(lock)
    pkgs: list[dict[str, Any]] = data.get("package", [])
    snapshot = data["meta"]["snapshot"]
    try:
        missing = [p for p in pkgs if not in_index(p)]
    except OSError as exc:
        return len(pkgs), [f"debian pin check: the mirror's index is unreachable: {exc}"]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda p: is_served(p, snapshot), missing))
    return len(pkgs), [stale_line(p, lock) for p, why in zip(missing, answers, strict=True) if why]


def check(lock: Path) -> int:
    total, stale = stale_pins(lock)
    for line in stale:
        print(line, file=sys.stderr)
    print(f"debian pins: {total - len(stale)}/{total} served", flush=True)
    return 1 if stale else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("lock", type=Path)
    f.add_argument("group")
    f.add_argument("dest", type=Path)
    c = sub.add_parser("check")
    c.add_argument("lock", type=Path)
    args = parser.parse_args()
    if args.cmd == "fetch":
        return fetch(args.lock, args.group, args.dest)
    return check(args.lock)


if __name__ == "__main__":
    sys.exit(main())
