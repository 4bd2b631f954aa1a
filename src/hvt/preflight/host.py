"""Preflight checks of the host: ports, write permissions, wandb, GPUs, disk, leftovers."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil

from hvt import ownership
from hvt.preflight.check import Check, Context, fail, ok, skip, warn

MIN_FREE_DISK_GIB = 50
WANDB_SECRET_FILES = (Path("/run/secrets/wandb_api_key"),)


def check_ports(ctx: Context) -> Iterator[Check]:
    infra = ctx.cfg.inputs.infrastructure
    workdir = ctx.paths.workdir
    for key, service in (
        ("ray_port", "Ray GCS"),
        ("ray_dashboard_port", "Ray dashboard"),
        ("litellm_port", "LiteLLM"),
    ):
        port = getattr(infra, key)
        name = f"ports.{key.removesuffix('_port')}"
        if not ownership.port_in_use(port):
            yield ok(name, f"port {port} free ({service})")
            continue
        proc = ownership.listener(port)
        if proc is not None and ownership.is_ours(proc, workdir):
            yield warn(
                name,
                f"port {port} held by this bundle's {ownership.describe(proc)}",
                "a previous run is still up: `hvt clean` stops it",
            )
        else:
            who = ownership.describe(proc) if proc else "a process this user cannot see"
            extra = (
                " -- a stray LiteLLM here makes every trial time out"
                if key == "litellm_port"
                else ""
            )
            yield fail(
                name,
                f"port {port} ({service}) is in use by {who}{extra}",
                f"stop that process, or change runtime_info.input.infrastructure.{key}",
            )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(ctx: Context) -> Iterator[Check]:
    for label, path in (
        ("logs", ctx.paths.logs),
        ("checkpoints", ctx.paths.checkpoints),
        ("trials", ctx.paths.project_trials),
        ("artifacts", ctx.paths.artifacts),
    ):
        target = _nearest_existing(path)
        if os.access(target, os.W_OK | os.X_OK):
            yield ok(
                f"writable.{label}",
                f"{path}" + ("" if target == path else f" (creatable in {target})"),
            )
        else:
            yield fail(
                f"writable.{label}",
                f"{target} is not writable by uid {os.getuid()}",
                f"chown the directory to uid {os.getuid()} or mount a writable volume",
            )


def check_wandb(ctx: Context) -> Iterator[Check]:
    mode = ctx.cfg.inputs.credentials.wandb_mode
    if mode in ("offline", "disabled"):
        yield ok(
            "wandb",
            f"mode {mode}: no key needed"
            + (" (runs sync later with the wandb profile)" if mode == "offline" else ""),
        )
        return
    if os.environ.get("WANDB_API_KEY"):
        yield ok("wandb", "mode online, key from $WANDB_API_KEY")
        return
    key_file = os.environ.get("WANDB_API_KEY_FILE")
    for candidate in ([Path(key_file)] if key_file else []) + list(WANDB_SECRET_FILES):
        if candidate.is_file() and candidate.read_text().strip():
            yield ok("wandb", f"mode online, key from the secret file {candidate}")
            return
    yield fail(
        "wandb",
        "mode online but no key: the run would abort at the first log call",
        "export WANDB_API_KEY (or put it in secrets/wandb_api_key for compose); never in "
        "config.yaml; or set credentials.wandb_mode: offline",
    )


def _nvidia_smi(*args: str) -> list[list[str]] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or out.stdout.strip())
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO(out.stdout)) if row]


def check_gpus(ctx: Context) -> Iterator[Check]:
    need = ctx.cfg.inputs.infrastructure.ngpus_per_node
    try:
        gpus = _nvidia_smi("--query-gpu=index,name,memory.total,memory.used")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        yield fail(
            "gpu.count",
            f"nvidia-smi failed: {exc}",
            "check the NVIDIA driver (make provision, role nvidia_gpu)",
        )
        return
    if gpus is None:
        reason = "no NVIDIA GPU on this machine (nvidia-smi not found)"
        yield skip("gpu.count", reason)
        yield skip("gpu.foreign", reason)
        return
    if len(gpus) >= need:
        yield ok("gpu.count", f"{len(gpus)} GPU(s): {gpus[0][1]}; need {need}")
    else:
        yield fail(
            "gpu.count",
            f"{len(gpus)} GPU(s), infrastructure.ngpus_per_node is {need}",
            "lower infrastructure.ngpus_per_node or use a bigger host",
        )
    apps = _nvidia_smi("--query-compute-apps=pid,process_name,used_memory") or []
    foreign = []
    for pid, name, mem in apps:
        try:
            proc = psutil.Process(int(pid))
            if ownership.is_ours(proc, ctx.paths.workdir):
                continue
        except (ValueError, psutil.NoSuchProcess):
            pass
        foreign.append(f"pid {pid} ({name}, {mem} MiB)")
    if foreign:
        yield fail(
            "gpu.foreign",
            "GPUs in use by another job: " + ", ".join(foreign),
            "wait for that job or stop it; two runs on the same GPUs OOM or corrupt both",
        )
    else:
        yield ok("gpu.foreign", "no other process on the GPUs")


def check_disk(ctx: Context) -> Iterator[Check]:
    target = _nearest_existing(ctx.paths.checkpoints)
    free_gib = shutil.disk_usage(target).free / 2**30
    if free_gib < MIN_FREE_DISK_GIB:
        yield warn(
            "disk.checkpoints",
            f"{free_gib:.0f} GiB free at {target}",
            f"FSDP checkpoints are large: free space or mount a volume with "
            f">= {MIN_FREE_DISK_GIB} GiB",
        )
    else:
        yield ok("disk.checkpoints", f"{free_gib:.0f} GiB free at {target}")


# filesystems another host can mount: the run directory of several trainer nodes is one of these
SHARED_FS = set(
    [
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fuse.glusterfs",
        "fuse.cephfs",
        "fuse.juicefs",
        "fuse.sshfs",
        "9p",
        "virtiofs",
    ]
)


def filesystem_of(path: Path, mounts: str | None = None) -> tuple[str, str]:
    """(mount point, filesystem type) that holds `path`, from /proc/mounts."""
    text = mounts if mounts is not None else Path("/proc/mounts").read_text()
    best = ("/", "unknown")
    target = str(path.resolve())
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def check_nodes(ctx: Context) -> Iterator[Check]:
    """Several trainer nodes: the run directory must be one filesystem they all mount. Whether
    they really read it, their GPUs and clocks are checked on the nodes once they join (`hvt
    launch` before training, `hvt nodes --check` any time: hvt.run.node_checks)."""
    i = ctx.cfg.inputs.infrastructure
    if i.nnodes == 1:
        return
    point, fstype = filesystem_of(_nearest_existing(ctx.paths.workdir))
    where = f"{ctx.paths.workdir} is on {fstype} ({point})"
    if fstype in SHARED_FS:
        yield ok("nodes.shared_dir", f"{where}: a shared filesystem")
    else:
        yield warn(
            "nodes.shared_dir",
            f"{where}, a local filesystem, with nnodes={i.nnodes}",
            "the other trainer hosts must mount the same directory at the same path (NFS: make "
            "provision's shared_dir role); launch checks every node reads it",
        )


def check_residue(ctx: Context) -> Iterator[Check]:
    leftovers = []
    ray_tmp = ctx.paths.ray_temp
    if ray_tmp.is_dir() and any(ray_tmp.iterdir()):
        leftovers.append(str(ray_tmp))
    state = ctx.paths.state
    if state.is_dir() and any(state.iterdir()):
        leftovers.append(str(state))
    running = list(ownership.our_processes(ctx.paths.workdir))
    if running:
        leftovers.append(f"{len(running)} process(es) of this bundle still running")
    if leftovers:
        yield warn("residue", "leftovers: " + ", ".join(leftovers), "run `hvt clean`")
    else:
        yield ok("residue", "no leftover Ray, LiteLLM or state files")
    trials = ctx.paths.project_trials
    if trials.is_dir() and any(trials.iterdir()):
        yield warn(
            "residue.trials",
            f"{trials} holds earlier trials",
            "keep them, or `hvt clean --trials` to remove them",
        )
