"""Debian pins: the lock's parser, and src/hvt/images/debian_fetch.py against a mirror of our own.

The mirror is a folder served on 127.0.0.1 with a `dists/.../Packages.xz` index and a `pool/`,
like deb.debian.org; a pin it no longer serves must stop the fetch with one line that names the
package, the pinned version, the version served now, and `make lock`.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import lzma
import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hvt.images.debian_lock import (
    DebianLockError,
    Pin,
    parse_records,
    parse_resolution,
    read_groups,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
FETCH = ROOT / "src" / "hvt" / "images" / "debian_fetch.py"


def test_the_shipped_lock_covers_every_group_of_debian_in() -> None:
    groups = read_groups(ROOT / "locks" / "debian.in")
    lock = tomllib.loads((ROOT / "locks" / "debian.lock").read_text())
    pins = lock["package"]
    for group in groups:
        names = {p["name"] for p in pins if p["group"] == group.name}
        assert set(group.packages) - {"libstdc++6"} <= names, group.name  # libstdc++6: in base
    for pin in pins:
        assert len(pin["sha256"]) == 64 and pin["filename"].startswith("pool/"), pin
        assert pin["archive"] in ("debian", "debian-security")


def test_resolution_and_records_parse_apt_output() -> None:
    out = (
        "@group trainer\n"
        "Inst perl-base [5.36.0-7+deb12u3] (5.36.0-7+deb12u4 Debian-Security:12/oldstable-security"
        " [amd64])\n"
        "Inst git (1:2.39.5-0+deb12u3 Debian:12.15/oldstable [amd64])\n"
        "@group cli-tools\n"
        "Inst docker-cli (docker-cli/trixie trixie [any])\n"
        "@records\n"
    )
    assert parse_resolution(out) == {
        "trainer": [
            ("perl-base", "5.36.0-7+deb12u4", "Debian-Security:12/oldstable-security"),
            ("git", "1:2.39.5-0+deb12u3", "Debian:12.15/oldstable"),
        ],
        "cli-tools": [("docker-cli", "docker-cli/trixie", "trixie")],
    }
    records = parse_records(
        "Package: git\nVersion: 1:2.39.5-0+deb12u3\nFilename: pool/main/g/git/x.deb\n"
        "Description: fast\n scalable\n\nPackage: procps\nVersion: 2:4.0.2-3\n"
    )
    assert records[("git", "1:2.39.5-0+deb12u3")]["Filename"] == "pool/main/g/git/x.deb"
    assert ("procps", "2:4.0.2-3") in records


def test_debian_in_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "debian.in"
    path.write_text('[x]\nkind = "install"\nsuite = "trixie"\npackages = ["git"]\n')
    with pytest.raises(DebianLockError, match=r"\[x\]: only bookworm packages can be installed"):
        read_groups(path)
    path.write_text('[x]\nkind = "copy"\nsuite = "bookworm"\npackages = ["git"]\n')
    with pytest.raises(DebianLockError, match=r"\[x\]\.kind must be"):
        read_groups(path)


# ---- a mirror of our own ---------------------------------------------------------------------
DEB = b"!<arch>\nnot really a deb, but bytes with a hash\n"


def _pin(version: str, data: bytes = DEB) -> Pin:
    return Pin(
        group="tools",
        name="hello",
        version=version,
        suite="trixie",
        archive="debian",
        arch="amd64",
        filename=f"pool/main/h/hello/hello_{version}_amd64.deb",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A Debian-like mirror on 127.0.0.1 serving hello 2.0 (and its index)."""
    root = tmp_path / "mirror"
    served = _pin("2.0")
    (root / served.filename).parent.mkdir(parents=True)
    (root / served.filename).write_bytes(DEB)
    index = root / "dists" / "trixie" / "main" / "binary-amd64"
    index.mkdir(parents=True)
    stanza = (
        f"Package: hello\nVersion: 2.0\nFilename: {served.filename}\nSize: {served.size}\n"
        f"SHA256: {served.sha256}\n\n"
    )
    (index / "Packages.xz").write_bytes(lzma.compress(stanza.encode()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _run(tmp_path: Path, url: str, pin: Pin, *args: str) -> subprocess.CompletedProcess[str]:
    lock = tmp_path / "debian.lock"
    lock.write_text(render([pin], "test-base", Path("debian.in"), datetime.now(UTC)))
    env = {**os.environ, "DEBIAN_MIRROR": url, "DEBIAN_SNAPSHOT": ""}
    return subprocess.run(
        [sys.executable, str(FETCH), *args[:1], str(lock), *args[1:]],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_a_served_pin_is_fetched_and_recorded(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    dest = tmp_path / "debs"
    result = _run(tmp_path, mirror[1], _pin("2.0"), "fetch", "tools", str(dest))
    assert result.returncode == 0, result.stderr
    assert (dest / "hello_2.0_amd64.deb").read_bytes() == DEB
    manifest = (dest / "manifest.json").read_text()
    assert '"name": "hello"' in manifest and hashlib.sha256(DEB).hexdigest() in manifest
    assert _run(tmp_path, mirror[1], _pin("2.0"), "check").returncode == 0


def test_a_stale_pin_stops_with_one_line(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    """The archive rebuilt hello as 2.0 after we pinned 1.9: name, pinned, served, fix."""
    for args in (("fetch", "tools", str(tmp_path / "debs")), ("check",)):
        result = _run(tmp_path, mirror[1], _pin("1.9"), *args)
        assert result.returncode == 1
        lines = [line for line in result.stderr.splitlines() if line.startswith("debian pin")]
        assert len(lines) == 1, result.stderr
        assert "hello 1.9 (trixie) is no longer served" in lines[0]
        assert "the mirror now serves 2.0 (trixie)" in lines[0]
        assert lines[0].endswith("Fix: make lock (regenerates debian.lock), then rebuild.")


def test_a_file_with_another_hash_is_refused(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    result = _run(
        tmp_path, mirror[1], _pin("2.0", b"other bytes"), "fetch", "tools", str(tmp_path / "x")
    )
    assert result.returncode == 1
    assert "debian pin mismatch: hello 2.0" in result.stderr
    assert not (tmp_path / "x" / "hello_2.0_amd64.deb").exists()
