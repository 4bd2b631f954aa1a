"""`hvt launch` with real launches: a refused launch touches nothing; the resume rule.

Every test runs the real `hvt launch` of this venv as subprocesses on a work dir of its own
(HVT_WORKDIR in tmp_path). Two stand-ins keep a launch cheap and hermetic, both found exactly
the way launch finds the real thing, so launch.py itself has no test hook:

- `ray` on PATH: a script that exits 0 (a real Ray head costs seconds of CPU and a port that
  everyone on the machine shares; what Ray does is not under test here);
- `verl.trainer.main_ppo` on PYTHONPATH: the trainer, a short module whose behaviour each
  launch picks with HVT_TEST_TRAINER (succeed, crash, or block until SIGINT/SIGTERM).

Discovery (`hvt litellm-config --watch`), the run lock, the ledger and the process marker are
the real ones. For the GPU preflight, a fake `nvidia-smi` on PATH reports another job's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml

from hvt import ownership
from hvt.preflight.check import fail, ok
from hvt.run import launch
from tests.conftest import filled_config
from tests.helpers.processes import free_port
from tests.helpers.timing import scaled

HVT = Path(sys.executable).with_name("hvt")

FAKE_RAY = """#!/bin/sh
# stand-in for `ray start --head ...`: the head is not what these tests are about
[ -z "$HVT_TEST_RAY_LOG" ] || echo "ray $*" >> "$HVT_TEST_RAY_LOG"
exit 0
"""

FAKE_MAIN_PPO = '''"""Stand-in for verl's main_ppo: HVT_TEST_TRAINER=succeed|crash|block|env."""
import json
import os
import signal
import sys
import time
from pathlib import Path

mode = os.environ["HVT_TEST_TRAINER"]
print(f"fake main_ppo: {mode}", flush=True)
if mode == "succeed":
    sys.exit(0)
if mode == "env":  # what the trainer was given: its environment and its arguments
    seen = {"env": dict(os.environ), "argv": sys.argv}
    Path(os.environ["HVT_TEST_READY"]).write_text(json.dumps(seen))
    sys.exit(0)
if mode == "crash":
    sys.exit(3)
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
ready = Path(os.environ["HVT_TEST_READY"])
ready.with_suffix(".tmp").write_text(str(os.getpid()))
ready.with_suffix(".tmp").rename(ready)
while True:
    time.sleep(3600)
'''

# Eight GPUs (ngpus_per_node) and one compute process not this bundle's: gpu.foreign fails.
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *--query-gpu=*)
    for i in 0 1 2 3 4 5 6 7; do echo "$i, NVIDIA H100 80GB HBM3, 81559, 1"; done ;;
  *--query-compute-apps=*)
    echo "{pid}, other-users-job, 40000" ;;
  *) exit 0 ;;
esac
"""


def _wait_for(what: str, condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(seconds):.0f} s waiting for {what}")
        time.sleep(0.1)


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@dataclass
class Bed:
    """A work dir, its stand-ins, and the launches started on it (stopped at teardown)."""

    tmp: Path
    workdir: Path
    bin: Path
    pythonpath: Path
    launches: list[subprocess.Popen[str]] = field(default_factory=list)

    def config(self, **overrides: object) -> Path:
        data_dir = self.tmp / "data"
        model = self.tmp / "model"
        values: dict[str, object] = {
            "runtime_info.input.model.model_path": str(model),
            "runtime_info.input.data.data_dir": str(data_dir),
            "runtime_info.input.data.train_index": str(data_dir / "train.parquet"),
            "runtime_info.input.data.val_index": str(data_dir / "val.parquet"),
            "runtime_info.input.infrastructure.ray_port": free_port(),
            "runtime_info.input.infrastructure.ray_dashboard_port": free_port(),
            "runtime_info.input.infrastructure.litellm_port": free_port(),
            **overrides,
        }
        path = self.tmp / f"config-{len(list(self.tmp.glob('config-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(filled_config(**values), sort_keys=False))
        return path

    def env(self, trainer: str, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in (ownership.MARKER, "WANDB_API_KEY", "HVT_CONFIG", "RAY_ADDRESS")
        }
        env.update(
            {
                "HVT_WORKDIR": str(self.workdir),
                "HVT_RAY_TEMP_DIR": str(self.tmp / "ray-temp"),
                "HVT_LITELLM_CONFIG": str(self.tmp / "litellm" / "config.yaml"),
                "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(self.pythonpath),
                "HVT_TEST_TRAINER": trainer,
                "HVT_TEST_READY": str(self.tmp / "trainer.ready"),
                **extra,
            }
        )
        return env

    def start(self, config: Path, trainer: str, *args: str, **extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(HVT), "launch", "--config", str(config), *args],
            env=self.env(trainer, **extra),
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a SIGINT for the test runner is not one for the run
        )
        self.launches.append(proc)
        return proc

    def launch(self, config: Path, trainer: str, *args: str, **extra: str) -> tuple[int, str]:
        """A launch to its end: (exit code, output)."""
        proc = self.start(config, trainer, *args, **extra)
        out, _ = proc.communicate(timeout=scaled(60))
        return proc.returncode, out

    def ledger(self) -> list[dict[str, object]]:
        index = self.workdir / "artifacts" / "index.yaml"
        return list(yaml.safe_load(index.read_text()) or []) if index.is_file() else []

    def ledger_bytes(self) -> bytes:
        index = self.workdir / "artifacts" / "index.yaml"
        return index.read_bytes() if index.is_file() else b""

    def current_exp(self) -> str | None:
        path = self.workdir / "run" / "current_exp"
        return path.read_text() if path.is_file() else None

    def seed_previous_run(self, config: Path) -> None:
        """A ledger with one earlier run, so 'unchanged' means something."""
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from datetime import datetime, UTC; from pathlib import Path; "
                "from hvt.run import records as run_records; "
                "from hvt.config.run_paths import RunPaths; "
                "run_records.record(RunPaths(Path(sys.argv[1]), 'proj', 'earlier'), "
                "Path(sys.argv[2]), 'earlier-run', 0, datetime(2026, 1, 1, tzinfo=UTC))",
                str(self.workdir),
                str(config),
            ],
            check=True,
            timeout=scaled(60),
        )
        assert len(self.ledger()) == 1


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    workdir = tmp_path / "bundle"
    workdir.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    _executable(fake_bin / "ray", FAKE_RAY)
    pythonpath = tmp_path / "fake-verl"
    trainer = pythonpath / "verl" / "trainer"
    trainer.mkdir(parents=True)
    for package in (pythonpath / "verl", trainer):
        (package / "__init__.py").write_text("")
    (trainer / "main_ppo.py").write_text(FAKE_MAIN_PPO)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_key_value_heads": 8}))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.parquet", "val.parquet"):
        (data / name).write_bytes(b"PAR1 stand-in")
    state = Bed(tmp_path, workdir, fake_bin, pythonpath)
    try:
        yield state
    finally:
        for proc in state.launches:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        leftovers = list(ownership.our_processes(workdir))  # marked for this tmp work dir only
        for p in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(leftovers, timeout=scaled(10))


def _marked_process(bed: Bed) -> subprocess.Popen[bytes]:
    """A process of this bundle's run that a refused launch must leave alone."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"],
        env={**bed.env("block"), ownership.MARKER: ownership.marker_value(bed.workdir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # reap it as soon as it ends: an unreaped zombie would keep the run's stop_ours waiting
    threading.Thread(target=proc.wait, daemon=True).start()
    _wait_for(
        "the marked process to carry its marker",
        lambda: ownership.is_ours(psutil.Process(proc.pid), bed.workdir),
        10,
    )
    return proc


def _start_first_run(bed: Bed, config: Path) -> tuple[subprocess.Popen[str], int]:
    """A real launch, holding the lock, its trainer alive: (launch, trainer pid)."""
    first = bed.start(config, "block")
    ready = bed.tmp / "trainer.ready"

    def up() -> bool:
        if first.poll() is not None:
            out, _ = first.communicate()
            raise AssertionError(f"the first launch ended ({first.returncode}):\n{out}")
        return ready.is_file()

    _wait_for("the first launch's trainer", up, 60)
    return first, int(ready.read_text())


@pytest.mark.parametrize("first_named", [False, True], ids=["auto-named", "named"])
def test_second_launch_is_refused_and_touches_nothing(bed: Bed, first_named: bool) -> None:
    """The first run (auto-named: current_exp holds its name; named: no current_exp) keeps its
    processes, the ledger and current_exp; it still records itself when it is interrupted."""
    first_config = bed.config(
        **({"runtime_info.input.experiment.exp_name": "first-run"} if first_named else {})
    )
    bed.seed_previous_run(first_config)
    first, trainer_pid = _start_first_run(bed, first_config)
    marked = _marked_process(bed)
    launcher = psutil.Process(first.pid)
    children = {p.pid: p for p in launcher.children()}  # the Ray stub has come and gone
    trainer = children[trainer_pid]
    (discovery,) = [p for p in children.values() if "litellm-config" in p.cmdline()]
    watched = {
        f"the first launch (pid {first.pid})": launcher,
        f"its trainer (pid {trainer.pid})": trainer,
        f"its discovery (pid {discovery.pid})": discovery,
        f"the marked process (pid {marked.pid})": psutil.Process(marked.pid),
    }
    for what, proc in list(watched.items())[1:]:
        assert ownership.is_ours(proc, bed.workdir), f"{what} carries the bundle marker"
    lock_file = bed.workdir / "run" / "launch.lock"
    holder = lock_file.read_text()
    assert f"pid {first.pid}" in holder
    ledger, current = bed.ledger_bytes(), bed.current_exp()
    assert (current is None) == first_named

    # the second launch auto-names its run: the old code wrote a fresh current_exp for it
    code, out = bed.launch(bed.config(), "succeed", "--skip-preflight")

    for what, proc in watched.items():
        assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, (
            f"the refused launch stopped {what}:\n{out}"
        )
    assert bed.ledger_bytes() == ledger, f"a refused launch must not write the ledger:\n{out}"
    assert bed.current_exp() == current, f"a refused launch must not touch current_exp:\n{out}"
    assert lock_file.read_text() == holder
    assert code == 1, out
    assert "already running" in out and f"pid {first.pid}" in out, out
    assert "run record" not in out, out

    # the first run still ends as a run: interrupted, recorded, resumable
    first.send_signal(signal.SIGINT)
    first_out, _ = first.communicate(timeout=scaled(60))
    assert first.returncode == 130, first_out
    entries = bed.ledger()
    assert len(entries) == 2, entries
    exp = "first-run" if first_named else (current or "").strip()
    assert entries[-1]["status"] == "interrupted" and entries[-1]["exp_name"] == exp
    assert bed.current_exp() == current, "an interrupted run keeps its name for the restart"
    assert not trainer.is_running(), "the run's trainer has ended"
    # the marked process counts as the run's own: the run that holds the lock stops it
    assert marked.wait(timeout=scaled(10)) is not None


def test_gpu_foreign_refusal_touches_nothing(bed: Bed) -> None:
    """Another job on the GPUs: the preflight refuses, nothing of the work dir changes."""
    config = bed.config()
    bed.seed_previous_run(config)
    (bed.workdir / "run").mkdir()
    (bed.workdir / "run" / "current_exp").write_text("harbor-cc-sync-1n-20260101-000000\n")
    marked = _marked_process(bed)
    other_job = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"],
        env={k: v for k, v in os.environ.items() if k != ownership.MARKER},
    )
    try:
        _executable(bed.bin / "nvidia-smi", FAKE_NVIDIA_SMI.format(pid=other_job.pid))
        before = {p: p.read_bytes() for p in bed.workdir.rglob("*") if p.is_file()}

        code, out = bed.launch(config, "succeed")

        assert code != 0, out
        rows = [line for line in out.splitlines() if "gpu.foreign" in line]
        assert rows and "fail" in rows[0], out
        assert "other-users-job" in out and "preflight failed" in out, out
        assert "run record" not in out, out
        assert marked.poll() is None, "the refused launch stopped a process of this bundle"
        assert other_job.poll() is None, "the refused launch stopped another job's process"
        after = {p: p.read_bytes() for p in bed.workdir.rglob("*") if p.is_file()}
        assert after == before, "a refused launch must not touch the work dir"
    finally:
        for proc in (marked, other_job):
            proc.kill()
            proc.wait()


def test_crash_keeps_the_name_and_success_drops_it(bed: Bed) -> None:
    """Resume rule: after a crash the restart reuses the experiment; a success ends it."""
    config = bed.config()
    code, out = bed.launch(config, "crash", "--skip-preflight")
    assert code == 3, out
    (crashed,) = bed.ledger()
    assert crashed["status"] == "failed" and crashed["exit_code"] == 3
    exp = str(crashed["exp_name"])
    assert bed.current_exp() == exp + "\n", "a crashed run keeps its name for the restart"

    code, out = bed.launch(config, "succeed", "--skip-preflight")
    assert code == 0, out
    resumed = bed.ledger()[-1]
    assert resumed["status"] == "completed" and resumed["exp_name"] == exp, "restart resumes"
    assert bed.current_exp() is None, "after a success the next launch is a new run"
    _wait_for(  # a finished run stops what it started (a SIGKILLed one may take a moment)
        "no process of this bundle left", lambda: not list(ownership.our_processes(bed.workdir)), 5
    )


def test_attached_launch_starts_no_head_and_keeps_the_clusters_auth(bed: Bed) -> None:
    """KubeRay: Ray runs already (HVT_RAY_ADDRESS) with the operator's token in RAY_AUTH_TOKEN.
    launch starts no head, makes no token file, and hands main_ppo that address and that auth;
    the token never reaches a command line."""
    config = bed.config()
    ray_log = bed.tmp / "ray.log"
    token = "kuberay-made-token-" + "z" * 24
    with socket.socket() as gcs:  # the running Ray's GCS port, as far as launch looks
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        address = f"127.0.0.1:{gcs.getsockname()[1]}"
        code, out = bed.launch(
            config,
            "env",
            "--skip-preflight",
            HVT_RAY_ADDRESS=address,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=token,
            HVT_TEST_RAY_LOG=str(ray_log),
        )
    assert code == 0, out
    assert not ray_log.exists(), f"an attached launch ran ray: {ray_log.read_text()}"
    assert f"attaching to the running Ray at {address}" in out, out
    seen = json.loads((bed.tmp / "trainer.ready").read_text())
    env = seen["env"]
    assert env["RAY_ADDRESS"] == address
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("token", token)
    assert "RAY_AUTH_TOKEN_PATH" not in env
    assert not (bed.workdir / "run" / "ray_auth_token").exists()
    assert not any(token in arg for arg in seen["argv"])
    assert bed.ledger()[-1]["status"] == "completed"


def test_attached_launch_refuses_a_bad_address_touching_nothing(bed: Bed) -> None:
    config = bed.config()
    code, out = bed.launch(config, "succeed", "--skip-preflight", HVT_RAY_ADDRESS="ray-head")
    assert code == 2, out
    assert "HVT_RAY_ADDRESS (--ray-address) is 'ray-head', not host:port" in out, out
    assert bed.ledger() == [] and not (bed.workdir / "run").exists()


def test_attach_waits_then_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch.time, "sleep", lambda _s: None)
    port = free_port()  # nothing listens there
    with pytest.raises(launch.LaunchError, match=f"nothing answers at 127.0.0.1:{port} "):
        launch.attach_ray(f"127.0.0.1:{port}", timeout_s=0.2)
    assert launch.attach_address("[fd00::1]:6379") == ("fd00::1", 6379)
    for bad in ("", "head", "head:0", "head:99999", ":6379"):
        with pytest.raises(launch.LaunchError, match="not host:port"):
            launch.attach_address(bad)


def test_attached_preflight_leaves_out_the_port_rows_only() -> None:
    rows = [
        fail("ports.ray", "port 6379 (Ray GCS) is in use", "stop it"),
        fail("ports.litellm", "port 8002 (LiteLLM) is in use", "stop it"),
        fail("gpu.foreign", "GPUs in use by another job", "wait"),
        ok("backend.kubernetes", "API reachable"),
    ]
    names = [r.name for r in launch.relevant_preflight(rows, cpu=False, attached=True)]
    assert names == ["gpu.foreign", "backend.kubernetes"]
    assert launch.relevant_preflight(rows, cpu=False, attached=False) == rows
    names = [r.name for r in launch.relevant_preflight(rows, cpu=True, attached=False)]
    assert names == ["ports.ray", "ports.litellm", "backend.kubernetes"]


def _sh(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def test_a_lost_node_stops_a_trainer_that_would_hang_and_names_it() -> None:
    """Several nodes: the watcher (`hvt nodes --lost --watch`) names a lost node; the launch
    stops the trainer (SIGINT; SIGKILL when it ignores it) and records why, instead of waiting
    on a run that hangs on the dead node's actors."""
    from hvt import ray_nodes

    trainer = _sh("trap 'exit 1' INT; echo ready; sleep 60 & wait")
    assert trainer.stdout is not None and trainer.stdout.readline() == "ready\n"  # trap set
    watcher = _sh(
        f"sleep 0.5; echo 'some Ray line'; echo '{ray_nodes.LOST_PREFIX}gpu2 (10.0.0.11): "
        f"missed heartbeats'; exit {ray_nodes.EXIT_LOST}"
    )
    started = time.monotonic()
    reason = launch.watch_for_lost_node(trainer, watcher, grace_s=20)
    assert reason == "lost trainer node(s): gpu2 (10.0.0.11): missed heartbeats"
    assert trainer.wait(5) == 1 and time.monotonic() - started < 15
    stubborn = _sh("trap '' INT; echo ready; sleep 60")  # ignores SIGINT: killed after grace
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    watcher = _sh(f"echo '{ray_nodes.LOST_PREFIX}gpu2 (10.0.0.11): x'; exit {ray_nodes.EXIT_LOST}")
    assert launch.watch_for_lost_node(stubborn, watcher, grace_s=1).startswith("lost trainer")
    assert stubborn.wait(5) == -9


def test_a_trainer_that_ends_by_itself_stops_the_watcher_and_a_failed_watcher_is_ignored() -> None:
    watcher = _sh("sleep 60")
    assert launch.watch_for_lost_node(_sh("exit 0"), watcher) == ""
    assert watcher.wait(15) is not None  # terminated, not left behind
    trainer = _sh("sleep 2; exit 0")
    assert launch.watch_for_lost_node(trainer, _sh("exit 2")) == ""  # e.g. no Ray head answered
    assert trainer.returncode == 0
