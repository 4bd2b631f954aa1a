"""`hvt smoke`: the CPU smoke (`make smoke`: the stack with its TLS sandbox daemons, its checks)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hvt.images import base_images
from hvt.smoke import report, tls_certs, verify, verify_nodes

app = typer.Typer(help="The CPU smoke run (make smoke).", no_args_is_help=True)


@app.callback()
def smoke() -> None:
    """The CPU smoke run (make smoke): `hvt smoke stack`."""


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
            _failed(
                f"hvt smoke: cannot pull {ref}: {pulled.stderr.strip()[-500:]} (fix: network "
                "access to the registry; offline, `make testbed` and HVT_IMAGES=local)"
            )
            raise typer.Exit(2)


SMOKE_CONFIG = "config/smoke.yaml"  # training.mode sync; the fleet and tasks of every experiment
ASYNC_CONFIG = "config/smoke-async.yaml"  # the same, training.mode colocate_async
TWO_NODE_CONFIG = "config/smoke-2node.yaml"  # colocate_async on two trainer nodes (--nodes 2)
WORKER = "worker"  # compose.cpu.yaml: the second trainer node (profile worker)
NODE_PROXY = "node-proxy"  # its own LiteLLM proxy (profile worker): one proxy per node
LOSS_WAIT_S = 15 * 60  # how long a run may take to notice its lost node and exit
RESTART_AFTER = 2  # steps of the last experiment's first launch; the resumed one runs the rest
RUN_WAIT_S = 45 * 60


FAILURES: list[str] = []  # what went wrong, said again in the last lines (report.verdict_lines)


def _failed(text: str) -> None:
    FAILURES.append(text)
    typer.echo(text, err=True)


SANDBOX_DAEMONS = ("sandbox-a", "sandbox-b")  # compose.cpu.yaml; config/smoke.yaml's fleet


def _remove_sandboxes(prefix: str) -> None:
    from hvt.run import clean

    local = "unix:///var/run/docker.sock"
    found = clean.find_sandboxes(local, None, prefix)
    if found.containers or found.networks:
        typer.echo(
            f"hvt smoke: {clean.remove_sandboxes(found, local, prefix)}, which hvt launch left"
        )


def _service(client: Any, project: str, service: str = "trainer") -> Any:
    found = client.containers.list(
        all=True,
        filters={
            "label": [
                f"com.docker.compose.project={project}",
                f"com.docker.compose.service={service}",
            ]
        },
    )
    return found[0] if found else None


def _sandbox_daemons(
    root: Path, env: dict[str, str], client: Any, project: str, refs: list[str]
) -> bool:
    """Start the smoke's TLS sandbox daemons (healthy), then load the images their sandboxes
    need (the tasks' base, the agent runtime), which a real sandbox host pulls from a registry:
    there is none here."""
    typer.echo(f"hvt smoke: starting the TLS sandbox daemons {', '.join(SANDBOX_DAEMONS)}")
    up = subprocess.run(
        _compose(root, env, "up", "-d", "--wait", *SANDBOX_DAEMONS), env=env, check=False
    )
    if up.returncode != 0:
        _failed("hvt smoke: the sandbox daemons did not become healthy")
        return False
    # one `docker save` of all the images (shared layers once), fed to every daemon at once
    started = time.monotonic()
    typer.echo(f"hvt smoke: loading {', '.join(refs)} into {', '.join(SANDBOX_DAEMONS)}")
    save = subprocess.Popen(["docker", "save", *refs], stdout=subprocess.PIPE)
    loads = {
        name: subprocess.Popen(
            ["docker", "exec", "-i", _service(client, project, name).name, "docker", "load", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name in SANDBOX_DAEMONS
    }
    assert save.stdout is not None
    broken: set[str] = set()
    while chunk := save.stdout.read(1 << 20):
        for name, load in loads.items():
            if name in broken:
                continue
            try:
                assert load.stdin is not None
                load.stdin.write(chunk)
            except BrokenPipeError:
                broken.add(name)
    ok = save.wait() == 0
    for name, load in loads.items():
        assert load.stdin is not None and load.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            load.stdin.close()
        said = load.stdout.read().decode(errors="replace")
        if load.wait() != 0 or name in broken:
            _failed(f"hvt smoke: cannot load the images into {name}: {said[-500:]}")
            ok = False
    if ok:
        typer.echo(f"hvt smoke: images loaded after {time.monotonic() - started:.0f} s")
    return ok


def _follow(root: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Stream the trainer's log here (a new follower after each restart)."""
    return subprocess.Popen(
        _compose(root, env, "logs", "-f", "--no-log-prefix", "--since", "1s", "trainer"), env=env
    )


def _checkpointed(data: Path, project_name: str) -> int:
    """The latest checkpointed step of the current experiment (0: none yet)."""
    state = data / "run" / "current_exp"
    if not state.is_file():
        return 0
    marker = (
        data
        / "checkpoints"
        / project_name
        / state.read_text().strip()
        / "latest_checkpointed_iteration.txt"
    )
    try:
        return int(marker.read_text().strip())
    except (OSError, ValueError):
        return 0


def _dashboard_tags(root: Path, env: dict[str, str], port: int) -> dict[str, int] | None:
    """TensorBoard's scalar series, from the dashboard service's HTTP API, once it serves every
    series the smoke requires (it loads event files in the background: an early answer holds
    only part of them), else what it served last."""
    up = subprocess.run(
        _compose(root, env, "--profile", "dashboard", "up", "-d", "dashboard"), env=env, check=False
    )
    if up.returncode != 0:
        return None
    deadline = time.monotonic() + 180
    last = ""
    tags: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            tags = verify.tensorboard_tags(f"http://127.0.0.1:{port}")
            if verify.tensorboard_check(tags).ok:
                return tags
            last = f"{len(tags)} scalar series so far"
        except OSError as exc:
            last = str(exc)
        time.sleep(3)
    _failed(f"hvt smoke: TensorBoard on 127.0.0.1:{port} after 180 s: {last}")
    return tags


SCREENSHOT_IMAGE = "local/chromium:bookworm"  # make testbed (tests/testbed/chromium.Dockerfile)


def _screenshot(client: Any, project: str, data: Path) -> verify.Check:
    """One headless-chromium screenshot of the dashboard's charts: <run>/tensorboard.png."""
    image = os.environ.get("HVT_SCREENSHOT_IMAGE", SCREENSHOT_IMAGE)
    if not client.images.list(name=image):
        return verify.Check(
            "dashboard screenshot", False, f"no image {image} (fix: make testbed builds it)"
        )
    out = data / "tensorboard.png"
    typer.echo(f"hvt smoke: screenshot of the dashboard's charts -> {out}")
    command = [
        "docker", "run", "--rm", "--network", f"{project}_default",
        "--user", f"{data.stat().st_uid}:{data.stat().st_gid}",
        "-v", f"{data}:/out", image,
        "--window-size=1600,1100", "--virtual-time-budget=30000",
        "--screenshot=/out/tensorboard.png",
        "http://dashboard:6006/?darkMode=false#timeseries",
    ]  # fmt: skip
    shot = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if shot.returncode != 0:
        return verify.Check(
            "dashboard screenshot",
            False,
            f"chromium exited {shot.returncode}: {shot.stderr[-400:]}",
        )
    return verify.screenshot(out)


def _oracle(root: Path, env: dict[str, str]) -> verify.Check:
    """`hvt sandbox check` in a trainer container: Harbor's oracle on each smoke task on every
    host of the fleet, so each verifier is seen to give reward 1 (the tiny model never does)."""
    typer.echo("hvt smoke: the oracle on every smoke task and sandbox host (hvt sandbox check)")
    command = _compose(
        root, env, "run", "--rm", "--no-deps", "-T", "trainer", "sandbox", "check",
        "--config", f"/workspace/{SMOKE_CONFIG}", "--tasks", "/workspace/config/smoke-tasks",
    )  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    said = run.stdout + run.stderr
    typer.echo(said[-3000:])
    summary = next(
        (ln.strip() for ln in said.splitlines() if "oracle trials got reward 1" in ln), ""
    )
    return verify.Check(
        "oracle", run.returncode == 0, summary or f"hvt sandbox check exited {run.returncode}"
    )


def _run_to_end(root: Path, env: dict[str, str], client: Any, project: str) -> int:
    """Follow the trainer until it exits by itself; its exit code."""
    follower = _follow(root, env)
    try:
        result = _service(client, project).wait(timeout=RUN_WAIT_S)
    except Exception as exc:  # requests' ReadTimeout, a vanished container
        _failed(f"hvt smoke: the trainer did not finish in {RUN_WAIT_S // 60} min ({exc})")
        return 1
    finally:
        time.sleep(2)
        follower.terminate()
    return int(result["StatusCode"])


def _run_and_resume(
    root: Path,
    env: dict[str, str],
    client: Any,
    project: str,
    data: Path,
    project_name: str,
    lose: tuple[str, ...] = (),
) -> tuple[int, float | None]:
    """Follow the trainer; after global_step_{RESTART_AFTER}, restart it, or (`lose`: a node's
    services) stop that node as a host that died, wait for the run to fail, and start it and
    the trainer again.
    The last exit code, and how long the run took to notice the lost node."""
    follower = _follow(root, env)
    started = time.monotonic()
    noticed: float | None = None
    try:
        while True:
            trainer = _service(client, project)
            trainer.reload()
            if trainer.status == "exited":
                _failed(
                    f"hvt smoke: the trainer exited before global_step_{RESTART_AFTER} "
                    f"(exit {trainer.attrs['State']['ExitCode']})"
                )
                return int(trainer.attrs["State"]["ExitCode"]) or 1, None
            if _checkpointed(data, project_name) >= RESTART_AFTER:
                break
            if time.monotonic() - started > RUN_WAIT_S:
                _failed(f"hvt smoke: no global_step_{RESTART_AFTER} after "
                           f"{RUN_WAIT_S // 60} min")  # fmt: skip
                return 1, None
            time.sleep(5)
        done = time.monotonic() - started
        if not lose:
            typer.echo(
                f"hvt smoke: global_step_{RESTART_AFTER} written after {done:.0f} s; "
                "restarting the trainer (it must resume)"
            )
            trainer.restart(timeout=120)
        else:
            host = [_service(client, project, name) for name in lose]
            typer.echo(
                f"hvt smoke: global_step_{RESTART_AFTER} written after {done:.0f} s; stopping "
                f"the second node ({', '.join(lose)}) as a host that died (SIGKILL); the run "
                "must fail naming it"
            )
            for service in host:
                service.kill()
            lost_at = time.monotonic()
            try:
                code = int(trainer.wait(timeout=LOSS_WAIT_S)["StatusCode"])
            except Exception as exc:  # requests' ReadTimeout: the run never noticed
                _failed(f"hvt smoke: the run did not stop in {LOSS_WAIT_S // 60} min after "
                           f"losing {lose[0]} ({exc})")  # fmt: skip
                return 1, None
            noticed = time.monotonic() - lost_at
            typer.echo(
                f"hvt smoke: the trainer exited {code} {noticed:.0f} s after the node stopped; "
                f"starting {', '.join(lose)} again, then the trainer (it must wait for the node "
                "and resume)"
            )
            for service in host:
                service.start()
            trainer.start()
    finally:
        follower.terminate()
    return _run_to_end(root, env, client, project), noticed


MODE_CONFIGS = {"sync": SMOKE_CONFIG, "colocate_async": ASYNC_CONFIG}


def _train(
    root: Path,
    env: dict[str, str],
    client: Any,
    project: str,
    data: Path,
    project_name: str,
    modes: list[str],
    nodes: int = 1,
) -> tuple[int, float | None]:
    """One experiment per mode, in order, on the same tasks: each runs to its end, except the
    last, which is restarted after global_step_{RESTART_AFTER} and resumed (two nodes: its
    worker node is lost instead). The exit code, and how long the lost node took to notice."""
    for n, mode in enumerate(modes, 1):
        last = n == len(modes)
        config = config_for(mode, nodes)
        typer.echo(
            f"hvt smoke: experiment {n} of {len(modes)}: training.mode {mode} ({config})"
            + (f", restarted after global_step_{RESTART_AFTER}" if last else "")
        )
        env["HVT_SMOKE_CONFIG"] = f"/workspace/{config}"
        if n == 1:
            up = subprocess.run(_compose(root, env, "up", "-d", "--quiet-pull"), env=env)
        else:  # the same stack; the trainer service again, on this experiment's config
            up = subprocess.run(_compose(root, env, "up", "-d", "--no-deps", "trainer"), env=env)
        if up.returncode != 0:
            return up.returncode, None
        if last:
            lose = (WORKER, NODE_PROXY) if nodes > 1 else ()
            return _run_and_resume(root, env, client, project, data, project_name, lose)
        code = _run_to_end(root, env, client, project)
        if code != 0:
            _failed(f"hvt smoke: the {mode} experiment failed (exit {code})")
            return code, None
    return 0, None


def config_for(mode: str, nodes: int) -> str:
    """The config of one experiment: its mode's, or the two-node one (colocate_async only)."""
    return TWO_NODE_CONFIG if nodes > 1 else MODE_CONFIGS[mode]


def _verify(
    data: Path,
    project_name: str,
    modes: list[str],
    fleet: list[str],
    tags: dict[str, int] | None,
    nodes: int = 1,
) -> tuple[list[verify.Check], list[report.Run]]:
    """The checks of each experiment, the comparison of their step times, the dashboard's."""
    from hvt.config.bundle import bundle_root
    from hvt.config.load import load

    exps = verify.experiments(data, project_name)
    if len(exps) != len(modes):
        return [
            verify.Check("experiments", False, f"want {len(modes)} in the run ledger, got {exps}")
        ], []
    checks: list[verify.Check] = []
    runs: list[report.Run] = []
    for n, (mode, exp) in enumerate(zip(modes, exps, strict=True), 1):
        last = n == len(modes)
        label = "async" if mode == "colocate_async" else mode
        # 3 tasks, batch 2: one step per epoch
        steps = load(bundle_root() / config_for(mode, nodes)).inputs.training.total_epochs
        found, rows, lines = verify.verify(
            data,
            project_name,
            exp,
            label=label,
            total_steps=steps,
            resumed_from=RESTART_AFTER if last else None,
            fleet=fleet,
        )
        checks += found
        if mode == "colocate_async":
            checks += verify.verify_async(
                data, project_name, exp, rows, RESTART_AFTER if last else None
            )
        runs.append(report.Run(mode, exp, rows, lines))
    if len(runs) == 2:
        checks.append(
            step_time_check(verify.step_seconds(runs[0].steps), verify.step_seconds(runs[1].steps))
        )
    if tags is not None:
        checks.append(verify.tensorboard_check(tags))
    return checks, runs


def step_time_check(sync_s: list[float], async_s: list[float]) -> verify.Check:
    """verl's step wall time (timing_s/step) of the two experiments side by side."""
    if not sync_s or not async_s:
        return verify.Check("step times", False, f"sync {sync_s}, colocate_async {async_s}")
    mean_sync, mean_async = sum(sync_s) / len(sync_s), sum(async_s) / len(async_s)
    return verify.Check(
        "step times",
        True,
        f"sync {' '.join(f'{x:.0f}' for x in sync_s)} s (mean {mean_sync:.0f}), colocate_async "
        f"{' '.join(f'{x:.0f}' for x in async_s)} s (mean {mean_async:.0f}): async/sync "
        f"{mean_async / mean_sync:.2f}",
    )


@app.command("stack")
def stack(
    data_dir: Annotated[
        Path, typer.Option(help="where each smoke's run directory (run-<UTC time>) goes")
    ] = Path("data/smoke"),
    keep: Annotated[bool, typer.Option(help="leave the stack up after the run")] = False,
    project: Annotated[str, typer.Option(help="compose project name")] = "hvt-smoke",
    mode: Annotated[
        list[str] | None,
        typer.Option(
            help="training.mode of each experiment, in order (repeat it: --mode sync --mode "
            "colocate_async compares the two on the same tasks); the last one is restarted and "
            "resumed"
        ),
    ] = None,
    nodes: Annotated[
        int,
        typer.Option(
            min=1,
            max=2,
            help="trainer nodes: 2 runs colocate_async on two (config/smoke-2node.yaml), the "
            "second node a container of its own that joins the head; it is stopped after "
            "global_step_2 as a lost host, and the run must fail naming it, then resume",
        ),
    ] = 1,
) -> None:
    """`make smoke`: the CPU stack runs verl's real trainer (GRPO): by default three steps in
    training.mode colocate_async, restarted after global_step_2 and resumed (`--mode sync
    --mode colocate_async`: two sync steps first, on the same tasks, step times side by side);
    then the checks, and down."""
    import docker

    FAILURES.clear()
    modes = mode or ["colocate_async"]
    unknown = [m for m in modes if m not in MODE_CONFIGS]
    if unknown:
        _failed(
            f"hvt smoke: --mode {unknown[0]!r} is not a smoke mode "
            f"(use {' or '.join(MODE_CONFIGS)})"
        )
        raise typer.Exit(2)
    if nodes > 1 and modes != ["colocate_async"]:
        _failed(
            f"hvt smoke: --nodes {nodes} runs one colocate_async experiment ({TWO_NODE_CONFIG}); "
            "drop --mode, or run the modes on one node"
        )
        raise typer.Exit(2)

    from hvt.config.bundle import bundle_root
    from hvt.config.load import load

    root = bundle_root()
    client = docker.from_env()
    try:
        images = base_images.resolve(os.environ, client)
    except base_images.NoImagesError as exc:
        _failed(f"hvt smoke: {exc}")
        raise typer.Exit(2) from None
    typer.echo(f"hvt smoke: {images.line}")
    prefix = os.environ.get("IMAGE_PREFIX", "verl-swe-rl")
    tag = os.environ.get("IMAGE_TAG", "latest")
    missing = [f"{prefix}/{name}:{tag}" for name in IMAGES]
    missing = [m for m in missing if not client.images.list(name=m)]
    if missing:
        _failed(f"hvt smoke: missing images {', '.join(missing)} (fix: make image)")
        raise typer.Exit(2)
    if images.source == "public":
        pull_missing(client, [images.python, images.dockerd])
    for secret in ("litellm_master_key", "proxy_signing_key"):
        key = root / "secrets" / secret
        if not key.is_file():
            _failed(f"hvt smoke: {key} is missing (fix: make secrets)")
            raise typer.Exit(2)
    # a fresh run directory per smoke: no ledger, current_exp or checkpoint of an earlier one
    data = data_dir.resolve() / time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
    for sub in (data, data / "harbor_trials"):  # the proxy checks the trials root is mounted
        sub.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(sub, 1000, 1000)  # the containers' user writes the run directory
    tls = data / "docker-tls"
    tls_certs.write_fleet(tls, list(SANDBOX_DAEMONS))
    if os.geteuid() == 0:  # the trainer's user reads its client keys
        for path in [tls / "clients", *(tls / "clients").rglob("*")]:
            os.chown(path, 1000, 1000)
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
        "HVT_TASK_BASE_IMAGE": images.python,  # the smoke tasks' BASE_IMAGE (rollout_settings)
        "HVT_SMOKE_TLS_DIR": str(tls),
        "HVT_SANDBOX_DOCKERD_IMAGE": images.dockerd,  # the TLS sandbox daemons (compose.cpu.yaml)
    }
    if nodes > 1:
        env["COMPOSE_PROFILES"] = WORKER  # the second trainer node (compose.cpu.yaml)
    cfg = load(root / SMOKE_CONFIG)
    project_name = cfg.inputs.experiment.project_name
    dashboard_port = int(env.get("DASHBOARD_PORT", "6006"))
    started = time.monotonic()
    typer.echo(f"hvt smoke: starting the CPU stack (project {project}, run dir {data})")
    code = (
        0
        if _sandbox_daemons(
            root, env, client, project, [images.python, cfg.inputs.harbor_agent.runtime_image]
        )
        else 1
    )
    noticed: float | None = None
    broken: list[verify.Check] = []
    if code == 0:
        code, noticed = _train(root, env, client, project, data, project_name, modes, nodes)
        if code != 0:
            typer.echo("hvt smoke: the trainer failed; the proxy's last lines:", err=True)
            subprocess.run(
                _compose(root, env, "logs", "--tail", "40", "litellm"), env=env, check=False
            )
    typer.echo(f"hvt smoke: the trainer ended with exit code {code} after "
               f"{time.monotonic() - started:.0f} s")  # fmt: skip
    if code == 0:
        tags = _dashboard_tags(root, env, dashboard_port)
        shot = _screenshot(client, project, data)
        oracle = _oracle(root, env)
        fleet = [h.docker_host for h in cfg.inputs.harbor_agent.docker_hosts or []]
        checks, runs = _verify(data, project_name, modes, fleet, tags, nodes)
        if nodes > 1 and runs:
            head_log = _service(client, project).logs().decode(errors="replace")
            names = load(root / TWO_NODE_CONFIG).inputs.infrastructure.node_names
            checks += verify_nodes.verify_nodes(
                data, project_name, runs[-1].exp, head_log, names, names[-1], noticed
            )
        checks += [shot, oracle]
        report.print_report(checks, runs, time.monotonic() - started)
        (data / "smoke-summary.json").write_text(
            json.dumps(
                {
                    "checks": [c.__dict__ for c in checks],
                    "runs": {
                        r.mode: {"exp": r.exp, "rollouts": r.rows, "steps": r.steps} for r in runs
                    },
                },
                indent=2,
                default=str,
            )
        )
        typer.echo(f"hvt smoke: summary {data / 'smoke-summary.json'}")
        broken = [c for c in checks if not c.ok]
        code = 0 if not broken else 1
    if not keep:
        # --profile replaces COMPOSE_PROFILES: name the worker's too (two nodes)
        profiles = ["--profile", "dashboard"] + (["--profile", WORKER] if nodes > 1 else [])
        subprocess.run(
            _compose(root, env, *profiles, "down", "-v", "--remove-orphans"),
            env=env,
            check=False,
        )
        # a backstop: hvt launch reaps the sandboxes of the trials the restart cut short (its
        # TLS daemons went with `down -v`; this is the local engine)
        _remove_sandboxes(cfg.inputs.harbor_agent.pod_name_prefix)
        leftovers = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"}
        )
        if leftovers:
            _failed(f"hvt smoke: {len(leftovers)} container(s) left behind")
            code = code or 1
    # the verdict again after the teardown's lines: a log's tail (CI's) names what broke
    for line in report.verdict_lines(broken, code, data, FAILURES):
        typer.echo(line, err=code != 0)
    raise typer.Exit(code)
