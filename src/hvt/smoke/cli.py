"""`hvt smoke`: the CPU smoke's own steps (certs for the TLS sandbox daemon; the rollout step)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hvt.images import base_images
from hvt.smoke.tls_certs import write_daemon_set

app = typer.Typer(help="The CPU smoke run (make smoke).", no_args_is_help=True)


@app.command("certs")
def certs(
    out: Annotated[Path, typer.Option(help="directory for server/ and client/")],
    san: Annotated[list[str], typer.Option(help="names and IPs the daemon answers to")],
    owner: Annotated[int | None, typer.Option(help="uid that gets the client files")] = None,
) -> None:
    """Issue a CA, a server certificate for the TLS sandbox daemon and a client certificate."""
    write_daemon_set(out, [*san, "localhost", "127.0.0.1"])
    if owner is not None:
        for path in [out / "client", *(out / "client").iterdir()]:
            os.chown(path, owner, owner)
    typer.echo(f"certificates in {out} (server/ for dockerd, client/ for the trainer)")


@app.command("step")
def step(
    config: Annotated[Path, typer.Option(help="the smoke profile (config/smoke.yaml)")],
    exp: Annotated[str, typer.Option(help="experiment name (hvt launch passes it)")] = "smoke",
) -> None:
    """One real rollout step on the CPU, link by link (run by `hvt launch --cpu-smoke`)."""
    from hvt.smoke import step as smoke_step

    raise typer.Exit(smoke_step.run(config, exp))


STACK_FILES = ("compose.yaml", "compose.cpu.yaml")
IMAGES = ("trainer", "proxy", "agent-runtime")


def _compose(root: Path, env: dict[str, str], *args: str) -> list[str]:
    files = [a for f in STACK_FILES for a in ("-f", str(root / f))]
    return [
        "docker",
        "compose",
        "--project-directory",
        str(root),
        "-p",
        env["HVT_SMOKE_PROJECT"],
        *files,
        *args,
    ]


def pull_missing(client: Any, refs: list[str]) -> None:
    """Pull the pinned public images this engine lacks, before compose needs them."""
    import subprocess

    wanted = [ref for ref in refs if ref not in base_images.present_images(client, refs)]
    for ref in wanted:
        typer.echo(f"hvt smoke: pulling {ref}")
        pulled = subprocess.run(
            ["docker", "pull", "-q", ref], capture_output=True, text=True, check=False
        )
        if pulled.returncode != 0:
            typer.echo(
                f"hvt smoke: cannot pull {ref}: {pulled.stderr.strip()[-500:]} (fix: network "
                "access to the registry; offline, `make testbed` and HVT_IMAGES=local)",
                err=True,
            )
            raise typer.Exit(2)


@app.command("stack")
def stack(
    data_dir: Annotated[Path, typer.Option(help="run directory (logs, trials, artifacts)")] = Path(
        "data/smoke"
    ),
    keep: Annotated[bool, typer.Option(help="leave the stack up after the step")] = False,
    project: Annotated[str, typer.Option(help="compose project name")] = "hvt-smoke",
) -> None:
    """`make smoke`: the CPU stack (compose.yaml + compose.cpu.yaml), one rollout step, down."""
    import subprocess

    import docker

    from hvt.config.bundle import bundle_root

    root = bundle_root()
    client = docker.from_env()
    try:
        images = base_images.resolve(os.environ, client)
    except base_images.NoImagesError as exc:
        typer.echo(f"hvt smoke: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"hvt smoke: {images.line}")
    prefix = os.environ.get("IMAGE_PREFIX", "verl-swe-rl")
    tag = os.environ.get("IMAGE_TAG", "latest")
    missing = [f"{prefix}/{name}:{tag}" for name in IMAGES]
    missing = [m for m in missing if not client.images.list(name=m)]
    if missing:
        typer.echo(f"hvt smoke: missing images {', '.join(missing)} (fix: make image)", err=True)
        raise typer.Exit(2)
    if images.source == "public":
        pull_missing(client, [images.python, images.dockerd])
    key = root / "secrets" / "litellm_master_key"
    if not key.is_file():
        typer.echo(f"hvt smoke: {key} is missing (fix: make secrets)", err=True)
        raise typer.Exit(2)
    data = data_dir.resolve()
    for sub in (data, data / "harbor_trials"):  # the proxy checks the trials root is mounted
        sub.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(sub, 1000, 1000)  # the containers' user writes the run directory
    sock = Path("/var/run/docker.sock")
    env = {
        **os.environ,
        "HVT_SMOKE_PROJECT": project,
        "HVT_DATA_DIR": str(data),
        "MODELS_DIR": str(data / "models"),
        "DATASETS_DIR": str(data / "datasets"),
        "DOCKER_GID": str(sock.stat().st_gid if sock.exists() else 999),
        "IMAGE_PREFIX": prefix,
        "IMAGE_TAG": tag,
        "DOCKERD_IMAGE": images.dockerd,  # the TLS sandbox daemon (compose.cpu.yaml)
        "HVT_TASK_BASE_IMAGE": images.python,  # the smoke tasks' BASE_IMAGE (step.py)
    }
    started = time.monotonic()
    typer.echo(f"hvt smoke: starting the CPU stack (project {project}, run dir {data})")
    up = subprocess.run(_compose(root, env, "up", "-d", "--quiet-pull"), env=env, check=False)
    code = up.returncode
    if code == 0:
        # follow the trainer until it exits; its exit code is the step's verdict
        subprocess.run(
            _compose(root, env, "logs", "-f", "--no-log-prefix", "trainer"), env=env, check=False
        )
        trainer = client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={project}",
                    "com.docker.compose.service=trainer",
                ]
            },
        )
        code = int(trainer[0].wait()["StatusCode"]) if trainer else 1
        if code != 0:
            typer.echo("hvt smoke: the step failed; the proxy's last lines:", err=True)
            subprocess.run(
                _compose(root, env, "logs", "--tail", "40", "litellm", "sandbox-tls"),
                env=env,
                check=False,
            )
    typer.echo(
        f"hvt smoke: step finished with exit code {code} after {time.monotonic() - started:.0f} s"
    )
    if not keep:
        subprocess.run(_compose(root, env, "down", "-v", "--remove-orphans"), env=env, check=False)
        leftovers = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"}
        )
        if leftovers:
            typer.echo(f"hvt smoke: {len(leftovers)} container(s) left behind", err=True)
            code = code or 1
    summaries = sorted(data.glob("harbor_trials/*/*/smoke-summary.json"))
    if summaries:
        typer.echo(f"hvt smoke: summary {summaries[-1]}")
    raise typer.Exit(code)
