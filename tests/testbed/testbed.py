"""Prepare a machine with no GPU and no registry for the test suite (shared TESTBED.md).

Idempotent: a Docker engine with Compose v2 and buildx, running; the local stand-in images
`local/debian:bookworm`, `local/python:3.12-bookworm`, `local/debian-systemd:bookworm`,
`local/dockerd:bookworm` (the TLS sandbox daemons) and `local/chromium:bookworm` (the smoke's
TensorBoard screenshot).
A second run changes nothing and takes a few seconds.

Usage: python tests/testbed/testbed.py [--rebuild]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEBIAN_IMAGE = "local/debian:bookworm"
PYTHON_IMAGE = "local/python:3.12-bookworm"
SYSTEMD_IMAGE = "local/debian-systemd:bookworm"
DOCKERD_IMAGE = "local/dockerd:bookworm"
CHROMIUM_IMAGE = "local/chromium:bookworm"  # the smoke's TensorBoard screenshot
DOCKERD_LOG = Path("/var/log/dockerd.log")
APT_SOURCES = Path("/etc/apt/sources.list.d")
# Only these three come from trixie (`pkg/trixie` selects the package alone); every dependency
# is taken from bookworm. `-t trixie` would pull dependencies from trixie too and upgrade the
# host's libc6 (2.36 -> 2.41), python3 (3.11 -> 3.13) and dpkg (measured 2026-11-30).
ENGINE_PACKAGES = ("docker.io/trixie", "docker-compose/trixie", "docker-buildx/trixie")
INSTALL_FLAGS = ("-y", "-q", "--no-install-recommends")
# what may come from trixie: the three above and the containerd they need (newer than bookworm's)
FROM_TRIXIE = frozenset({"docker.io", "docker-compose", "docker-buildx", "containerd"})


def say(msg: str) -> None:
    print(f"[testbed] {msg}", flush=True)


def run(cmd: list[str], **kw: object) -> None:
    say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def debian_mirror() -> str:
    """The Debian mirror URI configured on this machine (never written down by hand)."""
    for path in sorted(APT_SOURCES.glob("*.sources")):
        block: dict[str, str] = {}
        for line in [*path.read_text().splitlines(), ""]:
            if not line.strip():
                suites = block.get("Suites", "").split()
                if "bookworm" in suites and "debian-security" not in block.get("URIs", ""):
                    return block["URIs"].split()[0]
                block = {}
            elif ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                block[key.strip()] = value.strip()
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
                return parts[1]
    raise SystemExit("no Debian bookworm mirror found in /etc/apt sources (fix: configure apt)")


def docker_ok() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def ensure_engine_packages() -> None:
    have = all(shutil.which(b) for b in ("docker", "dockerd", "debootstrap"))
    plugins = have and all(
        subprocess.run(["docker", plugin, "version"], capture_output=True).returncode == 0
        for plugin in ("compose", "buildx")
    )
    if plugins:
        say("docker engine, compose, buildx, debootstrap: installed")
        return
    mirror = debian_mirror()
    (APT_SOURCES / "trixie.sources").write_text(
        "Types: deb\n"
        f"URIs: {mirror}\n"
        "Suites: trixie\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    Path("/etc/apt/preferences.d/trixie").write_text(
        "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", *INSTALL_FLAGS, *ENGINE_PACKAGES], env=env)
    run(["apt-get", "install", *INSTALL_FLAGS, "debootstrap"], env=env)


_VERSION_ROW = re.compile(r"^ (\*\*\*| {3}) (\S+) -?\d+$")


def installed_from_trixie() -> dict[str, str]:
    """Installed packages whose installed version only trixie has: name -> version."""
    names = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Package}\\n"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    installed = [line[3:].strip() for line in names.splitlines() if line.startswith("ii ")]
    policy = subprocess.run(
        ["apt-cache", "policy", *installed], capture_output=True, text=True, check=True,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout  # fmt: skip
    origins: dict[tuple[str, str], set[str]] = {}  # (package, installed version) -> suites
    name, row = "", None
    for line in policy.splitlines():
        if line and not line.startswith(" "):
            name, row = line.rstrip(":"), None
        elif match := _VERSION_ROW.match(line):
            row = (name, match.group(2)) if match.group(1) == "***" else None
            if row:
                origins[row] = set()
        elif row and line.startswith("        ") and len(line.split()) >= 3:
            origins[row].add(line.split()[2].split("/")[0])
    bookworm = {"bookworm", "bookworm-updates", "bookworm-security"}
    return {
        n: v for (n, v), suites in origins.items() if "trixie" in suites and not suites & bookworm
    }


def report_host_drift() -> None:
    """Say so when an earlier test bed (or anyone) took packages beyond Docker from trixie."""
    drifted = {n: v for n, v in installed_from_trixie().items() if n not in FROM_TRIXIE}
    if not drifted:
        say("host packages: only Docker's came from trixie")
        return
    listing = ", ".join(f"{n} {v}" for n, v in sorted(drifted.items()))
    say(f"WARNING: {len(drifted)} package(s) on this host came from trixie: {listing}")
    say(
        "  an earlier `apt-get install -t trixie` (the old test bed) upgraded them; this test bed "
        "no longer does. To restore a bookworm package: apt-get install --allow-downgrades "
        "<name>/bookworm (python3: python3/bookworm python3-minimal/bookworm "
        "libpython3-stdlib/bookworm). Debian does not support downgrading libc6 or dpkg: "
        "for those, start from a fresh machine."
    )


def ensure_daemon() -> None:
    if docker_ok():
        say("docker daemon: running")
        return
    say(f"starting dockerd (log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    for waited in range(120):
        if docker_ok():
            say(f"docker daemon up after {waited} s")
            return
        if waited % 10 == 0:
            say(f"waiting for dockerd ({waited} s)")
        time.sleep(1)
    tail = DOCKERD_LOG.read_text(errors="replace")[-2000:]
    raise SystemExit(f"dockerd did not come up in 120 s; last log lines:\n{tail}")


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def build_debian(rebuild: bool) -> None:
    if image_exists(DEBIAN_IMAGE) and not rebuild:
        say(f"{DEBIAN_IMAGE}: present")
        return
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="hvt-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap bookworm from {mirror} (about a minute)")
        started = time.monotonic()
        run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
            stdout=subprocess.DEVNULL,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-", DEBIAN_IMAGE],
            stdin=tar.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            raise SystemExit("tar of the debootstrap root failed")
        say(f"{DEBIAN_IMAGE}: built in {time.monotonic() - started:.0f} s")


def python_prefix() -> Path:
    out = subprocess.run(
        ["pyenv", "prefix"],
        env={**os.environ, "PYENV_VERSION": "3.12.1"},
        capture_output=True,
        text=True,
    )
    if out.returncode == 0:
        return Path(out.stdout.strip())
    found = shutil.which("python3.12")
    if found:
        return Path(found).resolve().parent.parent
    raise SystemExit("no CPython 3.12 on this machine (fix: install it, e.g. pyenv install 3.12)")


def _skip_member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    # the interpreter's own tests and the build machine's site-packages stay out of the base
    if "test" in parts[:4] and "python3.12" in parts:
        return None
    if "site-packages" in parts and len(parts) > parts.index("site-packages") + 1:
        return None
    if "__pycache__" in parts:
        return None
    return info


def docker_build(tag: str, dockerfile: Path, context: Path) -> None:
    started = time.monotonic()
    run(
        [
            "docker",
            "build",
            "--progress=plain",
            "-t",
            tag,
            "-f",
            str(dockerfile),
            "--build-arg",
            f"DEBIAN_IMAGE={DEBIAN_IMAGE}",
            "--build-arg",
            f"DEBIAN_MIRROR={debian_mirror()}",
            str(context),
        ]
    )
    say(f"{tag}: built in {time.monotonic() - started:.0f} s")


def build_python(rebuild: bool) -> None:
    if image_exists(PYTHON_IMAGE) and not rebuild:
        say(f"{PYTHON_IMAGE}: present")
        return
    prefix = python_prefix()
    with tempfile.TemporaryDirectory(prefix="hvt-pyctx-") as tmp:
        ctx = Path(tmp)
        say(f"copying CPython from {prefix} into the build context")
        archive = ctx / "python.tar"
        with tarfile.open(archive, "w") as tar:
            for sub in ("bin", "lib", "include"):
                tar.add(prefix / sub, arcname=sub, filter=_skip_member)
        (ctx / "python").mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(ctx / "python", filter="tar")
        archive.unlink()
        shutil.copy(HERE / "python.Dockerfile", ctx / "Dockerfile")
        docker_build(PYTHON_IMAGE, ctx / "Dockerfile", ctx)


def build_from(tag: str, dockerfile: str, rebuild: bool) -> None:
    """An image from one of the Dockerfiles beside this script (no build context needed)."""
    if image_exists(tag) and not rebuild:
        say(f"{tag}: present")
        return
    with tempfile.TemporaryDirectory(prefix="hvt-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copy(HERE / dockerfile, ctx / "Dockerfile")
        docker_build(tag, ctx / "Dockerfile", ctx)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the stand-in images")
    parser.add_argument(
        "--packages-only", action="store_true", help="install the engine packages, nothing else"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the test bed installs packages and starts dockerd: run it as root")
    started = time.monotonic()
    ensure_engine_packages()
    report_host_drift()
    if args.packages_only:
        return 0
    ensure_daemon()
    build_debian(args.rebuild)
    build_python(args.rebuild)
    build_from(SYSTEMD_IMAGE, "systemd.Dockerfile", args.rebuild)
    build_from(DOCKERD_IMAGE, "dockerd.Dockerfile", args.rebuild)
    build_from(CHROMIUM_IMAGE, "chromium.Dockerfile", args.rebuild)
    say(f"ready in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
