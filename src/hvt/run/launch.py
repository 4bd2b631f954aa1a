"""`hvt launch`: the trainer container's main process.

Order: validate and preflight -> take the run lock (one run per workdir; a second launch is
refused) -> name the experiment (persisted, so a restart resumes from the latest checkpoint)
-> start this bundle's Ray head -> start discovery (it waits for every vLLM replica and writes
the LiteLLM config the proxy service watches) -> run verl main_ppo with logs/<exp>.log and a
throughput-only logs/<exp>_vllm.log -> on exit, append the run record and stop what it started.

Attached (--ray-address / HVT_RAY_ADDRESS; KubeRay, `hvt kuberay render`): Ray is already
running (the operator started the head and the workers, and this launch is the RayJob's
entrypoint on the head), so launch starts no head: every client it starts gets RAY_ADDRESS =
that address and the token auth of the environment (the operator's RAY_AUTH_MODE and
RAY_AUTH_TOKEN); no token file is made. The preflight's port checks are left out there: the
pod's ports belong to the operator's Ray and the proxy container beside it.

CPU mode (--cpu; `make smoke`) runs the same main_ppo command plus
`verl_command.CPU_OVERRIDES`, with `verl_command.CPU_ENV` set (verl_patch.cpu: the CPU platform
and rollout replica) and a Ray head that advertises `ngpus_per_node` logical GPUs.

A launch refused before it holds the lock (a failed preflight such as gpu.foreign, or another
run holding the lock) touches nothing: no process is stopped, no run is recorded, current_exp
is neither written nor removed. Only a launch holding the lock does those (`_held_run`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.markup import escape

from hvt import ownership, ray_nodes
from hvt.config import summary as config_summary
from hvt.config.bundle import bundle_root
from hvt.config.load import load_or_say
from hvt.config.model import RunConfig
from hvt.config.run_paths import RunPaths
from hvt.preflight.check import Check, Status, render_table
from hvt.preflight.dryrun import preflight
from hvt.proxy import litellm_config
from hvt.run import clean, ray_auth, ray_start, verl_command, worker
from hvt.run import records as run_records

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
RAY_START_ATTEMPTS = 3
# vLLM's periodic stats and verl's rollout timing: what the throughput log keeps.
THROUGHPUT = re.compile(
    r"throughput|tokens/s|tok/s|Running: \d+ reqs|KV cache usage|timing_s/gen|perf/throughput",
    re.IGNORECASE,
)


# after a failed multi-node run, how long to look for the node it lost: Ray marks a silent node
# dead after its health checks fail (5 x (3 s + a 10 s timeout) by default)
LOST_WITHIN_S = 90
LOST_STOP_GRACE_S = 60.0  # how long a trainer that lost a node may take to stop on SIGINT
# an attached launch's Ray (KubeRay's head): the RayJob's entrypoint runs once the cluster is
# up, so this is slack for a port that answers at once
ATTACH_ENV = "HVT_RAY_ADDRESS"
ATTACH_WAIT_S = 60.0


class LaunchError(Exception):
    """Refusal to launch; the message names the culprit and the fix."""


def auto_exp_name(cfg: RunConfig, now: datetime | None = None) -> str:
    """harbor-cc-<training mode>-<nodes>n-<UTC time>, e.g. harbor-cc-sync-1n-20261201-210700."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    mode = cfg.inputs.training.mode.replace("_", "-")
    return f"harbor-cc-{mode}-{cfg.inputs.infrastructure.nnodes}n-{stamp}"


def resolve_exp_name(cfg: RunConfig, paths: RunPaths) -> str:
    """The configured name, else the name this workdir's interrupted run used, else a new one."""
    if cfg.inputs.experiment.exp_name:
        return cfg.inputs.experiment.exp_name
    current = paths.state / "current_exp"
    if current.is_file() and current.read_text().strip():
        return current.read_text().strip()
    name = auto_exp_name(cfg)
    paths.state.mkdir(parents=True, exist_ok=True)
    current.write_text(name + "\n")
    return name


class RunLock:
    """Exclusive per workdir: a second launch on the same GPUs is refused, not queued.

    `acquire` only opens <workdir>/run/launch.lock and tries the flock; a refused launch reads
    the holder line and leaves everything else as it found it. The holder notes its pid (and,
    once named, its experiment) in the file; `release` (or leaving the `with`) clears it.
    """

    def __init__(self, fh: IO[str]) -> None:
        self._fh = fh

    @classmethod
    def acquire(cls, paths: RunPaths) -> RunLock:
        paths.state.mkdir(parents=True, exist_ok=True)
        fh = (paths.state / "launch.lock").open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LaunchError(
                f"a run is already running from {paths.workdir} ({holder}); two runs on the "
                "same GPUs OOM or corrupt each other (stop it first: docker compose down, or "
                "hvt clean); nothing was started or stopped"
            ) from None
        lock = cls(fh)
        lock.note()
        return lock

    def note(self, exp: str | None = None) -> None:
        """Name the holder in the lock file (what a refused launch prints)."""
        self._fh.truncate(0)  # opened for append: the next write lands at 0
        self._fh.write(f"pid {os.getpid()}" + (f", exp {exp}" if exp else "") + "\n")
        self._fh.flush()

    def release(self) -> None:
        if self._fh.closed:
            return
        self._fh.truncate(0)
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def tee(stream: IO[str], main_log: Path, vllm_log: Path) -> None:
    with main_log.open("a", buffering=1) as main, vllm_log.open("a", buffering=1) as vllm:
        for line in stream:
            sys.stdout.write(line)
            sys.stdout.flush()
            main.write(line)
            if THROUGHPUT.search(line):
                vllm.write(line)


def start_ray(cfg: RunConfig, paths: RunPaths, env: dict[str, str], cpu: bool) -> None:
    """The head; in CPU mode it advertises logical GPUs, one per trainer rank."""
    i = cfg.inputs.infrastructure
    cmd = [
        "ray",
        "start",
        "--head",
        f"--port={i.ray_port}",
        f"--dashboard-host={os.environ.get('HVT_RAY_DASHBOARD_HOST', '127.0.0.1')}",
        f"--dashboard-port={i.ray_dashboard_port}",
        *ray_start.node_args(cfg, paths.ray_temp, cpu),
    ]
    env = ray_start.node_env(env, cpu)
    console.print(
        f"[cyan]ray[/] starting head on :{i.ray_port} (dashboard 127.0.0.1:"
        f"{i.ray_dashboard_port}, temp {paths.ray_temp})"
    )
    started = time.monotonic()
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        # Ray gives the raylet a fixed 30 s to register (ray/_private/node.py): on a loaded
        # host that can pass; that one transient error is retried after stopping what started
        if out.returncode == 0 or "timed out during startup" not in out.stderr:
            break
        console.print(f"[yellow]ray[/] start timed out under load (attempt {attempt}); retrying")
        ownership.stop_ours(paths.workdir)
    if out.returncode != 0:
        raise LaunchError(
            f"ray start failed: {out.stderr.strip()[-800:]} (check ports.ray in "
            "`hvt dryrun`; `hvt clean` stops a leftover head)"
        )
    console.print(f"[cyan]ray[/] up in {time.monotonic() - started:.1f} s")


def attach_address(text: str) -> tuple[str, int]:
    """(host, port) of the running Ray an attached launch joins; LaunchError if not host:port."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(
            f"{ATTACH_ENV} (--ray-address) is {text!r}, not host:port of a running Ray head's "
            "GCS (e.g. 10.0.0.10:6379); unset it to let launch start its own head"
        )
    return host.strip("[]"), int(port)


def attach_ray(address: str, timeout_s: float = ATTACH_WAIT_S) -> None:
    """Use the Ray cluster already at `address` (KubeRay's head): wait until it answers."""
    host, port = attach_address(address)
    auth = os.environ.get("RAY_AUTH_MODE", "") or "off"
    console.print(
        f"[cyan]ray[/] attaching to the running Ray at {address} ({ATTACH_ENV}; token auth "
        f"{auth}, from the environment); no head is started"
    )
    started = time.monotonic()
    while why := worker.port_answers(host, port):
        if time.monotonic() - started >= timeout_s:
            raise LaunchError(
                f"nothing answers at {address} ({ATTACH_ENV}) after {timeout_s:.0f} s ({why}). "
                f"Under KubeRay the head container sets {ATTACH_ENV} to its pod address and "
                f"rayStartParams.port (hvt kuberay render); elsewhere unset {ATTACH_ENV} so "
                "that launch starts its own head"
            )
        time.sleep(2.0)


def relevant_preflight(results: list[Check], *, cpu: bool, attached: bool) -> list[Check]:
    """The preflight rows that apply to this launch: CPU mode has no GPU and no vLLM by design;
    an attached launch's ports are held by the running Ray (and, in the KubeRay head pod, by
    the proxy container beside it), not by anything this launch would start."""
    if cpu:
        results = [r for r in results if not r.name.startswith(("gpu.", "model.kv"))]
    if attached:
        results = [r for r in results if not r.name.startswith("ports.")]
    return results


def trainer_command(
    cfg: RunConfig,
    paths: RunPaths,
    exp: str,
    config_file: Path,
    env: dict[str, str],
    cpu: bool,
) -> list[str]:
    spec = verl_command.LaunchSpec(
        exp_name=exp, paths=paths, bundle=bundle_root(), python=sys.executable, cpu=cpu
    )
    return verl_command.command(cfg, spec, verl_command.runtime_env(env), config_file)


def run(
    config_file: Path,
    *,
    cpu: bool,
    skip_preflight: bool,
    prepare: Callable[[RunConfig], str] | None = None,
    ray_address: str = "",
) -> int:
    """One run, start to record. `prepare` runs before the preflight (--cpu-smoke: the
    smoke's tiny model and task index, from hvt.commands.run) and says what it made.
    `ray_address`: attach to that running Ray instead of starting a head (KubeRay)."""
    cfg = load_or_say(config_file, lambda line: console.print(f"[red]{escape(line)}[/]"))
    if cfg is None:
        return 2
    if ray_address:
        try:
            attach_address(ray_address)
        except LaunchError as exc:  # refused before anything started
            console.print(f"[bold red]hvt launch: {exc}[/]")
            return 2
    paths = RunPaths.from_config(cfg)
    if prepare is not None:  # the smoke makes its own model and task index: checked next
        console.print(f"[cyan]smoke[/] {prepare(cfg)}")
    if not skip_preflight:
        results, _ = preflight(config_file)
        results = relevant_preflight(results, cpu=cpu, attached=bool(ray_address))
        if any(r.status is Status.FAIL for r in results):
            render_table(results, console)
            console.print(
                "[bold red]preflight failed: fix the rows marked fail, then start again[/]"
            )
            return 1
    try:
        lock = RunLock.acquire(paths)
    except LaunchError as exc:  # refused: nothing of this launch started, so nothing to undo
        console.print(f"[bold red]hvt launch: {exc}[/]")
        return 1
    with lock:
        return _held_run(cfg, paths, lock, config_file, cpu, ray_address)


def _held_run(
    cfg: RunConfig,
    paths: RunPaths,
    lock: RunLock,
    config_file: Path,
    cpu: bool,
    ray_address: str = "",
) -> int:
    """A run under the workdir's lock: the only path that names the experiment, stops this
    bundle's processes, appends to the ledger and drops current_exp. A launch refused before
    the lock (preflight, lock held) never gets here."""
    exp = resolve_exp_name(cfg, paths)
    lock.note(exp)
    started = datetime.now(UTC)
    code, reason = 1, ""
    try:
        for d in (paths.logs, paths.checkpoints, paths.project_trials / exp):
            d.mkdir(parents=True, exist_ok=True)
        env = ownership.marked_env(paths.workdir)
        env.update(
            {
                "HVT_CONFIG": str(config_file.resolve()),
                "HVT_WORKDIR": str(paths.workdir),
                "HVT_TRIALS_DIR": str(paths.project_trials / exp),
                # the node's cluster address where it has one (several hosts): a driver finds
                # its own node by the address it reaches the head at
                "RAY_ADDRESS": ray_address
                or f"{os.environ.get('HVT_NODE_IP') or '127.0.0.1'}:"
                f"{cfg.inputs.infrastructure.ray_port}",
                # attached: the running cluster's token auth, as the environment has it
                **({} if ray_address else ray_auth.settings(paths.state)),
                "TENSORBOARD_DIR": str(paths.workdir / "tensorboard" / paths.project / exp),
                "WANDB_MODE": cfg.inputs.credentials.wandb_mode,
                "WANDB_DIR": str(paths.wandb),
                "VLLM_LOGGING_LEVEL": cfg.inputs.infrastructure.vllm_logging_level,
                **(verl_command.CPU_ENV if cpu else {}),
            }
        )
        console.print(config_summary.render(cfg), markup=False)
        console.print(f"[bold]exp={exp}[/]  log {paths.logs / (exp + '.log')}")
        _reap_orphans(cfg)  # what a run killed here before (SIGKILL, a lost container) left
        code, reason = _train(cfg, paths, exp, config_file, env, cpu, ray_address)
    except LaunchError as exc:
        console.print(f"[bold red]hvt launch: {exc}[/]")
    except KeyboardInterrupt:  # SIGINT before the trainer's signal forwarding was in place
        code = 130
    finally:
        ownership.stop_ours(paths.workdir)
        _reap_orphans(cfg)  # the trials a stop cut short: their makers are gone now
        rec = run_records.record(paths, config_file, exp, code, started, reason=reason)
        console.print(f"run record {rec.run_id}: {rec.status} (exit {code}) -> {rec.archive}")
    if code == 0 and not cfg.inputs.experiment.exp_name:
        (paths.state / "current_exp").unlink(missing_ok=True)  # the next launch is a new run
    return code


def _reap_orphans(cfg: RunConfig) -> None:
    """Remove this run's sandboxes whose trial process on this host is gone: a trainer stopped
    mid-step (SIGTERM, Ctrl-C) kills its trials before Harbor can take their sandboxes down."""
    clean.reap_orphans(cfg, lambda line: console.print(f"[yellow]sandboxes[/] {escape(line)}"))


def _train(
    cfg: RunConfig,
    paths: RunPaths,
    exp: str,
    config_file: Path,
    env: dict[str, str],
    cpu: bool,
    ray_address: str = "",
) -> tuple[int, str]:
    """Ray head (or the running Ray it attaches to), the other nodes, discovery, then the
    trainer to its end: the trainer's exit code, and why it failed where that is known (the
    trainer node the cluster lost)."""
    if ray_address:
        attach_ray(ray_address)
    else:
        start_ray(cfg, paths, env, cpu)
    if cfg.inputs.infrastructure.nnodes > 1:
        wait_for_nodes(config_file, env)
    discovery = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hvt.cli",
            "litellm-config",
            "--config",
            str(config_file),
            "--out",
            str(litellm_config.default_path()),
            "--watch",
        ],
        env=env,
    )
    cmd = trainer_command(cfg, paths, exp, config_file, env, cpu)
    console.print(f"[cyan]trainer[/] {' '.join(cmd[:4])} ... ({len(cmd)} args)")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    watcher = (
        subprocess.Popen(
            _nodes_cmd(config_file, "--lost", "--watch"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if cfg.inputs.infrastructure.nnodes > 1
        else None
    )

    stopped: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopped.append(signum)
        proc.send_signal(signal.SIGINT if signum == signal.SIGTERM else signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    assert proc.stdout is not None
    reader = threading.Thread(
        target=tee,
        args=(proc.stdout, paths.logs / f"{exp}.log", paths.logs / f"{exp}_vllm.log"),
        daemon=True,
    )
    reader.start()
    lost_reason = watch_for_lost_node(proc, watcher)
    code = proc.wait()
    reader.join(timeout=10)
    discovery.terminate()
    if lost_reason:
        return code or 1, lost_reason
    if stopped and code != 0:  # main_ppo exits 1 on the forwarded SIGINT: the run was stopped
        return 128 + stopped[0], ""
    if code != 0 and cfg.inputs.infrastructure.nnodes > 1:
        return code, lost_nodes(config_file, env)
    return code, ""


def watch_for_lost_node(
    proc: subprocess.Popen[str],
    watcher: subprocess.Popen[str] | None,
    grace_s: float = LOST_STOP_GRACE_S,
) -> str:
    """Until the trainer ends: when the watcher (`hvt nodes --lost --watch`) names a lost
    trainer node, stop the trainer (SIGINT, then SIGKILL after `grace_s`) and return the
    reason; a run can otherwise hang for many minutes on the dead node's actors (verl's
    TransferQueue retries a dead storage unit). "" when the trainer ended by itself."""
    if watcher is None:
        return ""
    try:
        while proc.poll() is None:
            code = watcher.poll()
            if code is None:
                time.sleep(1.0)
                continue
            if code != ray_nodes.EXIT_LOST:  # the watcher itself failed: the trainer goes on
                watcher = None
                proc.wait()
                return ""
            reason = _say_lost(
                watcher.stdout.read() if watcher.stdout else "",
                "the cluster {}; stopping the trainer",
            )
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                console.print(f"[red]hvt launch: the trainer ignored SIGINT for {grace_s:.0f} s[/]")
                proc.kill()
            return reason
        return ""
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watcher.wait(10)


def _nodes_cmd(config_file: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "hvt.cli", "nodes", "--config", str(config_file), *flags]


def wait_for_nodes(config_file: Path, env: dict[str, str]) -> None:
    """Until every trainer node has joined this head (`hvt nodes --wait`: progress, a limit)."""
    started = time.monotonic()
    if subprocess.run(_nodes_cmd(config_file, "--wait"), env=env, check=False).returncode:
        raise LaunchError(
            "not every trainer node joined or passed its checks (above: which, and what to "
            "check); nothing was trained"
        )
    console.print(
        f"[cyan]nodes[/] every node joined and checked in {time.monotonic() - started:.1f} s"
    )


def lost_nodes(config_file: Path, env: dict[str, str]) -> str:
    """After a failed multi-node run: the trainer nodes the cluster lost, named, or ""."""
    out = subprocess.run(
        _nodes_cmd(config_file, "--lost", "--within", str(LOST_WITHIN_S)),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != ray_nodes.EXIT_LOST:
        return ""
    return _say_lost(out.stdout, "the run failed because it {}")


def _say_lost(nodes_output: str, what: str) -> str:
    """The run record's reason from `hvt nodes --lost` output, said with `what` around it
    and what to do next."""
    reason = f"lost trainer node(s): {'; '.join(ray_nodes.lost_lines(nodes_output))}"
    console.print(
        f"[bold red]hvt launch: {what.format(reason)}. Start the node's worker service again "
        "(docker compose --profile worker up -d on that host); the next launch resumes from "
        "the latest checkpoint once every node has joined[/]"
    )
    return reason
