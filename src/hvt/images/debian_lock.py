"""`make lock` for Debian: resolve locks/debian.in into locks/debian.lock.

The resolution runs apt inside the base image the build uses, so the dependency closure is the
one the build will need, and the versions, archive paths and sha256 come from apt's
signature-checked indexes. The build (src/hvt/images/debian_fetch.py) then fetches exactly those
files and refuses any other.
"""

from __future__ import annotations

import re
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors
from rich.console import Console

_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) (.*) \[(\S+)\]\)")
# one apt source per archive and suite; trixie only for packages asked for by suite
_RESOLVE = r"""
set -eu
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
cat > /etc/apt/sources.list.d/hvt-lock.list <<EOF
deb {mirror} bookworm main
deb {mirror} bookworm-updates main
deb {security} bookworm-security main
deb {mirror} trixie main
EOF
printf 'Package: *\nPin: release n=trixie\nPin-Priority: 1\n' > /etc/apt/preferences.d/hvt-lock
apt-get update -qq >&2
{steps}
"""


class DebianLockError(Exception):
    """locks/debian.in is malformed or apt could not resolve it."""


@dataclass(frozen=True)
class Group:
    name: str
    kind: str
    suite: str
    packages: tuple[str, ...]


@dataclass(frozen=True)
class Pin:
    group: str
    name: str
    version: str
    suite: str
    archive: str
    arch: str
    filename: str
    size: int
    sha256: str


def read_groups(path: Path) -> list[Group]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DebianLockError(f"{path}: {exc}") from exc
    groups = []
    for name, spec in data.items():
        kind, suite, packages = spec.get("kind"), spec.get("suite"), spec.get("packages")
        if kind not in ("extract", "install"):
            raise DebianLockError(f"{path}: [{name}].kind must be 'extract' or 'install'")
        if suite not in ("bookworm", "trixie"):
            raise DebianLockError(f"{path}: [{name}].suite must be 'bookworm' or 'trixie'")
        if not packages or not all(isinstance(p, str) for p in packages):
            raise DebianLockError(f"{path}: [{name}].packages must be a list of package names")
        if kind == "install" and suite != "bookworm":
            raise DebianLockError(f"{path}: [{name}]: only bookworm packages can be installed")
        groups.append(Group(name, kind, suite, tuple(packages)))
    return groups


def resolve_script(groups: list[Group], mirror: str, security: str) -> str:
    steps = []
    for g in groups:
        steps.append(f"echo '@group {g.name}'")
        if g.kind == "install":
            pkgs = " ".join(g.packages)
            steps.append(f"apt-get install -s --no-install-recommends {pkgs} | grep '^Inst '")
        else:
            steps.extend(f"echo 'Inst {p} ({p}/{g.suite} {g.suite} [any])'" for p in g.packages)
    steps.append("echo '@records'")
    return _RESOLVE.format(mirror=mirror, security=security, steps="\n".join(steps))


def parse_resolution(text: str) -> dict[str, list[tuple[str, str, str]]]:
    """group -> [(package, version or pkg/suite, origin)] from the resolve script's output."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("@group "):
            current = line.split(" ", 1)[1]
            out[current] = []
        elif line == "@records":
            break
        elif match := _INST.match(line):
            out[current].append((match.group(1), match.group(2), match.group(3)))
    return out


def parse_records(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(package, version) -> fields, from `apt-cache show` stanzas."""
    records: dict[tuple[str, str], dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value
        if "Package" in fields and "Version" in fields:
            records[(fields["Package"], fields["Version"])] = fields
    return records


def _run(client: docker.DockerClient, image: str, script: str) -> str:
    try:
        out = client.containers.run(
            image, ["bash", "-c", script], remove=True, user="0", stderr=False, stdout=True
        )
    except docker.errors.ContainerError as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise DebianLockError(f"apt in {image} failed: {err.strip()[-800:]}") from exc
    except docker.errors.ImageNotFound as exc:
        raise DebianLockError(
            f"base image {image} is not here (fix: docker pull it, or make testbed offline)"
        ) from exc
    return out.decode() if isinstance(out, bytes) else str(out)


def resolve(
    groups: list[Group], image: str, mirror: str, security: str, console: Console
) -> list[Pin]:
    client = docker.from_env()
    console.print(f"resolving {len(groups)} group(s) with apt in {image} (about 30 s)")
    resolution = parse_resolution(_run(client, image, resolve_script(groups, mirror, security)))
    wanted: list[tuple[str, str, str, str]] = []  # group, name, version spec, origin
    for g in groups:
        for name, version, origin in resolution.get(g.name, []):
            wanted.append((g.name, name, version, origin))
    show = " ".join(f"'{name}={v}'" if "/" not in v else f"'{v}'" for _, name, v, _ in wanted)
    script = resolve_script([], mirror, security) + f"apt-cache show --no-all-versions {show}\n"
    records = parse_records(_run(client, image, script))
    pins: list[Pin] = []
    suites = {g.name: g.suite for g in groups}
    for group, name, version, origin in wanted:
        matches = [
            r
            for (pkg, ver), r in records.items()
            if pkg == name and ("/" in version or ver == version)
        ]
        if len(matches) != 1:
            raise DebianLockError(f"apt-cache show found {len(matches)} records for {name}")
        r = matches[0]
        security_only = "Debian-Security" in origin.split(",")[0]
        pins.append(
            Pin(
                group=group,
                name=name,
                version=r["Version"],
                suite=suites[group],
                archive="debian-security" if security_only else "debian",
                arch=r["Architecture"] if r["Architecture"] != "all" else "amd64",
                filename=r["Filename"],
                size=int(r["Size"]),
                sha256=r["SHA256"],
            )
        )
    return pins


def render(pins: list[Pin], image: str, source: Path, now: datetime) -> str:
    lines = [
        f"# Generated by `make lock` from {source.name}: do not edit. docs/images.md",
        "# Every file the image build fetches from Debian, by archive path and sha256.",
        "[meta]",
        f'generated = "{now.strftime("%Y-%m-%dT%H:%M:%SZ")}"',
        f'snapshot = "{now.strftime("%Y%m%dT%H%M%SZ")}"   # snapshot.debian.org fallback',
        f'resolved_in = "{image}"',
        "",
    ]
    for p in pins:
        lines += [
            "[[package]]",
            f'group = "{p.group}"',
            f'name = "{p.name}"',
            f'version = "{p.version}"',
            f'suite = "{p.suite}"',
            f'archive = "{p.archive}"',
            f'arch = "{p.arch}"',
            f'filename = "{p.filename}"',
            f"size = {p.size}",
            f'sha256 = "{p.sha256}"',
            "",
        ]
    return "\n".join(lines)


def lock(
    source: Path, target: Path, image: str, mirror: str, security: str, console: Console
) -> list[Pin]:
    started = time.monotonic()
    pins = resolve(read_groups(source), image, mirror, security, console)
    target.write_text(render(pins, image, source, datetime.now(UTC)))
    by_group: dict[str, int] = {}
    for p in pins:
        by_group[p.group] = by_group.get(p.group, 0) + 1
    summary = ", ".join(f"{g} {n}" for g, n in by_group.items())
    console.print(
        f"wrote {target}: {len(pins)} pins ({summary}) in {time.monotonic() - started:.0f} s"
    )
    return pins
