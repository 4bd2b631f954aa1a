"""`hvt pins`: lock the Debian inputs of the image build, and check every pin is still served."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import docker.errors
import typer
from rich.console import Console

from hvt.config.bundle import bundle_root
from hvt.images.debian_lock import DebianLockError, lock
from hvt.images.pins_served import check_all

app = typer.Typer(help="Pinned inputs of the images: lock Debian packages, check all pins.")

DEFAULT_BASE = "python:3.12-slim-bookworm"


@app.command("lock-debian")
def lock_debian(
    base_image: Annotated[
        str, typer.Option(help="the base image the build uses (apt resolves inside it)")
    ],
    mirror: Annotated[str, typer.Option(help="Debian mirror")] = "http://deb.debian.org/debian",
    security_mirror: Annotated[
        str, typer.Option(help="Debian security mirror")
    ] = "http://deb.debian.org/debian-security",
) -> None:
    """Resolve locks/debian.in into locks/debian.lock (versions, archive paths, sha256)."""
    console = Console()
    locks = bundle_root() / "locks"
    try:
        lock(
            locks / "debian.in", locks / "debian.lock", base_image, mirror, security_mirror, console
        )
    except (DebianLockError, docker.errors.DockerException) as exc:
        console.print(f"[bold red]hvt pins lock-debian: {exc}[/]")
        raise typer.Exit(2) from exc


@app.command("check")
def check(
    locks_dir: Annotated[Path | None, typer.Option(help="default: the bundle's locks/")] = None,
) -> None:
    """Check that every file the locks pin is still served (PyPI, npm, Debian)."""
    console = Console()
    root = bundle_root()
    findings = check_all(locks_dir or root / "locks", console.print)
    for f in findings:
        console.print(f"[red]{f.source}: {f.pin}: {f.problem}[/]", soft_wrap=True)
    if findings:
        unchecked = sum("could not be checked" in f.problem for f in findings)
        console.print(
            f"[bold red]{len(findings) - unchecked} pin(s) no longer served (fix: make lock), "
            f"{unchecked} could not be checked (network; run make check-pins again)[/]"
        )
        raise typer.Exit(1)
    console.print("[green]every pinned input is still served[/]")
