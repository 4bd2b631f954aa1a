"""Which base images `make smoke` and `make image` use (docs/images.md, "Base images").

Where a registry answers: the public images pinned by digest (the Python base of the Dockerfile
and of the smoke tasks; a Docker-in-Docker image for the smoke's TLS sandbox daemon). Where none
answers (the test bed: TESTBED.md), the local stand-ins `make testbed` builds. `choose` decides
from a probe result and the images this engine has, and does nothing else; `probe` asks the
registry (`GET <url>/v2/`: 200 or 401 means it answers); `resolve` puts the two together.

Overrides: HVT_IMAGES=public|local forces the choice (auto: decide); HVT_REGISTRY_URL is the URL
probed (a mirror's https://mirror.example/v2/, when Docker pulls through one).
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import typer

# The Dockerfile's ARG BASE_IMAGE default (and the smoke tasks'); tests/unit/test_base_images.py
# keeps the copies equal.
PYTHON_BASE = (
    "python:3.12-slim-bookworm"
    "@sha256:032c52613401895aa3d418a4c563d2d05f993bc3ecc065c8f4e2280978acd249"
)
# docker-library's docker:27.5.1-dind, the last 27.x build and the digest `docker:27` resolves to
# (a GitLab runner log: "Using docker image sha256:aa3df78e... for docker:27"); pinned as
# docker.io/library/docker:27.5.1-dind@sha256:aa3df78e... in several public repositories (code
# search, e.g. a NemoClaw e2e test). Not pulled from here: no registry answers on the test bed.
DOCKERD_IMAGE = (
    "docker:27.5.1-dind@sha256:aa3df78ecf320f5fafdce71c659f1629e96e9de0968305fe1de670e0ca9176ce"
)
STAND_IN_PYTHON = "local/python:3.12-bookworm"
STAND_IN_DOCKERD = "local/dockerd:bookworm"
DEFAULT_REGISTRY_URL = "https://registry-1.docker.io/v2/"
PROBE_TIMEOUT_S = 3.0
ANSWERS = (200, 401)  # /v2/ answers 401 without credentials, 200 on an open mirror

Mode = Literal["auto", "public", "local"]
Source = Literal["public", "local"]
MODES: tuple[Mode, ...] = ("auto", "public", "local")


class NoImagesError(RuntimeError):
    """Neither the public images nor the stand-ins can be used; the message names the fix."""


@dataclass(frozen=True)
class Probe:
    url: str
    answered: bool
    detail: str  # "HTTP 401", "HTTP 503", "Name or service not known", "timed out after 3 s"

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc or self.url


@dataclass(frozen=True)
class Images:
    source: Source
    python: str
    dockerd: str
    reason: str

    @property
    def line(self) -> str:
        label = "public" if self.source == "public" else "local stand-ins"
        return f"images: {label} ({self.reason}) — {self.python}, {self.dockerd}"


PUBLIC = (PYTHON_BASE, DOCKERD_IMAGE)
STAND_INS = (STAND_IN_PYTHON, STAND_IN_DOCKERD)
ALL_IMAGES = PUBLIC + STAND_INS


def is_stand_in(ref: str) -> bool:
    return ref in STAND_INS or ref.startswith("local/")


def choose(probe: Probe | None, present: Collection[str], mode: Mode = "auto") -> Images:
    """The images to use. `probe`: the registry's answer (None when not asked); `present`: the
    references (of ALL_IMAGES) this engine has. Raises NoImagesError naming the fix."""
    missing = [ref for ref in STAND_INS if ref not in present]
    if mode == "public":
        return Images("public", *PUBLIC, "HVT_IMAGES=public")
    if mode == "local":
        if missing:
            raise NoImagesError(
                f"HVT_IMAGES=local, but {_names(missing)} missing on this Docker engine "
                "(fix: `make testbed` builds the stand-ins; or HVT_IMAGES=auto where a registry "
                "answers)"
            )
        return Images("local", *STAND_INS, "HVT_IMAGES=local")
    if probe is not None and probe.answered:
        return Images("public", *PUBLIC, f"{probe.host} answered")
    why = f"{probe.host}: {probe.detail}" if probe is not None else "not asked"
    if all(ref in present for ref in PUBLIC):
        return Images("public", *PUBLIC, f"no registry answered ({why}); both are on this engine")
    if not missing:
        return Images("local", *STAND_INS, f"no registry answered: {why}")
    url = probe.url if probe is not None else DEFAULT_REGISTRY_URL
    raise NoImagesError(
        f"no registry answered ({why}) and the offline stand-in {_names(missing)} missing on "
        f"this Docker engine. Fix: give this machine network access to the registry ({url}; "
        "HVT_REGISTRY_URL=<mirror>/v2/ for a mirror), or build the stand-ins offline with "
        "`make testbed` (root, debootstrap)"
    )


def _names(refs: list[str]) -> str:
    return f"{' and '.join(refs)} {'is' if len(refs) == 1 else 'are'}"


def probe(url: str = DEFAULT_REGISTRY_URL, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """GET the registry's /v2/ endpoint once; the whole probe (DNS included) ends by `timeout`."""
    result: list[Probe] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            text = str(reason)
            if isinstance(reason, TimeoutError) or "timed out" in text:
                text = f"timed out after {timeout:g} s"
            elif isinstance(reason, OSError) and reason.strerror:
                text = reason.strerror
            result.append(Probe(url, False, text))
            return
        result.append(Probe(url, status in ANSWERS, f"HTTP {status}"))

    if not url.startswith(("http://", "https://")):
        return Probe(url, False, "not an http(s) URL")
    worker = threading.Thread(target=ask, name="registry-probe", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)  # name resolution is not bounded by urlopen's timeout
    return result[0] if result else Probe(url, False, f"timed out after {timeout:g} s")


def mode_from(environ: Mapping[str, str]) -> Mode:
    value = environ.get("HVT_IMAGES", "").strip().lower() or "auto"
    for mode in MODES:
        if value == mode:
            return mode
    raise NoImagesError(f"HVT_IMAGES={value!r}: use public, local or auto")


def present_images(client: Any, refs: Collection[str] = ALL_IMAGES) -> set[str]:
    """The references of `refs` this engine has (by its own name resolution)."""
    import docker.errors

    found = set()
    for ref in refs:
        try:
            client.images.get(ref)
        except docker.errors.ImageNotFound:
            continue
        found.add(ref)
    return found


def resolve(environ: Mapping[str, str] | None = None, client: Any = None) -> Images:
    """Probe (unless HVT_IMAGES forces the choice), look at this engine's images, choose."""
    import docker
    import docker.errors

    env = os.environ if environ is None else environ
    mode = mode_from(env)
    asked = None
    if mode == "auto":
        asked = probe(env.get("HVT_REGISTRY_URL") or DEFAULT_REGISTRY_URL)
    try:
        engine = client or docker.from_env(timeout=30)
        present = present_images(engine)
    except docker.errors.DockerException as exc:
        if mode == "public" or (asked is not None and asked.answered):
            present = set()  # the build itself will say what is wrong with the engine
        else:
            raise NoImagesError(f"cannot ask the Docker engine for its images: {exc}") from None
    return choose(asked, present, mode)


# -- hvt images ---------------------------------------------------------------------------------

app = typer.Typer(
    help="The base images make image / make smoke use (public pinned, or the local stand-ins).",
    no_args_is_help=True,
)


def _resolved() -> Images:
    try:
        return resolve()
    except NoImagesError as exc:
        typer.echo(f"hvt images: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("show")
def show() -> None:
    """One line: which images, and why."""
    typer.echo(_resolved().line)


@app.command("base")
def base() -> None:
    """The Python base image (stdout; the reason on stderr), for BASE_IMAGE in the Makefile."""
    images = _resolved()
    typer.echo(images.line, err=True)
    typer.echo(images.python)


@app.command("dockerd")
def dockerd() -> None:
    """The image of the smoke's TLS sandbox daemon (stdout; the reason on stderr)."""
    images = _resolved()
    typer.echo(images.line, err=True)
    typer.echo(images.dockerd)
