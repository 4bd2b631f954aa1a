"""`hvt proxy --workers N|auto`: the sizing rule, cgroup quota and affinity, the error, and the
`--num_workers` the supervisor gives LiteLLM. The cgroup files are fakes under tmp_path."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from hvt.proxy import cli as proxy_cli
from hvt.proxy import workers
from hvt.proxy.supervisor import WORKER_HEALTHCHECK_S, Supervisor
from tests.conftest import del_path, filled_config

runner = CliRunner()
KEY = "sk-test-" + "k" * 24


def fake_proc(
    tmp_path: Path,
    cgroup: str,
    mounts: list[tuple[str, str, str, str]],
) -> Path:
    """A /proc/self with `cgroup` and a mountinfo of (root, mount point, fstype, options)."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    lines = [
        f"{30 + i} 25 0:{30 + i} {root} {point} rw,nosuid - {fstype} {fstype} {options}"
        for i, (root, point, fstype, options) in enumerate(mounts)
    ]
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    return proc


def v2_tree(tmp_path: Path, limits: dict[str, str], own: str = "/kubepods/pod1/c1") -> Path:
    """cgroup v2 mounted at tmp/cg, the process in `own`; `limits` maps dirs to cpu.max."""
    mount = tmp_path / "cg"
    (mount / own.lstrip("/")).mkdir(parents=True)
    for rel, content in limits.items():
        (mount / rel.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (mount / rel.lstrip("/") / "cpu.max").write_text(content + "\n")
    return fake_proc(
        tmp_path,
        f"0::{own}\n",
        [("/", str(mount), "cgroup2", "rw,nsdelegate,memory_recursiveprot")],
    )


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("AUTO", None), ("3", 3), (2, 2)])
def test_parse_accepts_a_count_or_auto(value: str | int, expected: int | None) -> None:
    assert workers.parse(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "four", "2.5", "", "auto2", 0, True])
def test_parse_refuses_with_the_option_and_the_fix(value: str | int) -> None:
    with pytest.raises(workers.WorkersError) as exc:
        workers.parse(value)
    message = str(exc.value)
    assert message.startswith("--workers must be a whole number")
    assert "--workers auto" in message and "--workers 2" in message
    with pytest.raises(workers.WorkersError, match=r"^infrastructure\.litellm_workers must"):
        workers.parse(value, workers.CONFIG_KEY)


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "expected"), [(1, 1), (2, 1), (3, 2), (4, 3), (9, 8), (64, 8), (256, 8)]
)
def test_auto_is_one_per_core_less_one_between_1_and_the_cap(cores: int, expected: int) -> None:
    assert workers.auto_workers(cores) == expected


def test_a_quota_lowers_the_cores_rounded_down_never_below_one() -> None:
    assert workers.CpuBudget(affinity=16, online=32).cores == 16
    assert workers.CpuBudget(affinity=16, online=32, quota=4.0).cores == 4
    assert workers.CpuBudget(affinity=16, online=32, quota=2.5).cores == 2
    assert workers.CpuBudget(affinity=16, online=32, quota=0.5).cores == 1
    assert workers.CpuBudget(affinity=2, online=32, quota=8.0).cores == 2  # affinity is tighter


def test_resolve_says_how_it_sized() -> None:
    budget = workers.CpuBudget(affinity=8, online=64, quota=4.0, quota_source="/cg/cpu.max")
    count, line = workers.resolve(None, budget)
    assert count == 3
    assert line.startswith("3 LiteLLM workers (--workers auto")
    assert "4 cores available (cgroup quota 4 CPUs in /cg/cpu.max; affinity 8 of 64)" in line
    count, line = workers.resolve(6, budget)
    assert count == 6 and "(--workers 6)" in line and "more workers than cores" in line
    count, line = workers.resolve(2, workers.CpuBudget(affinity=4, online=4))
    assert count == 2 and "no cgroup CPU quota" in line and "more workers" not in line


# --- cgroup v2 and v1 files ----------------------------------------------------------------------


def test_v2_quota_is_the_tightest_on_the_path(tmp_path: Path) -> None:
    proc = v2_tree(
        tmp_path,
        {"/kubepods": "800000 100000", "/kubepods/pod1": "max 100000", "/kubepods/pod1/c1": "max"},
    )
    cpus, source = workers.cgroup_quota(proc) or (0.0, "")
    assert cpus == 8.0 and source.endswith("cg/kubepods/cpu.max")


def test_v2_quota_in_the_own_cgroup_with_a_fraction(tmp_path: Path) -> None:
    proc = v2_tree(tmp_path, {"/kubepods/pod1/c1": "250000 100000", "/kubepods": "max 100000"})
    assert workers.cgroup_quota(proc) == (2.5, str(tmp_path / "cg/kubepods/pod1/c1/cpu.max"))


def test_v2_max_everywhere_is_no_quota(tmp_path: Path) -> None:
    proc = v2_tree(tmp_path, {"/kubepods": "max 100000", "/kubepods/pod1/c1": "max 100000"})
    assert workers.cgroup_quota(proc) is None


def test_v2_in_a_cgroup_namespace_reads_the_mount_itself(tmp_path: Path) -> None:
    # docker's private cgroupns: the process is at "/" and the container's cgroup is the mount
    mount = tmp_path / "cg"
    mount.mkdir()
    (mount / "cpu.max").write_text("200000 100000\n")
    proc = fake_proc(tmp_path, "0::/\n", [("/", str(mount), "cgroup2", "rw")])
    assert workers.cgroup_quota(proc) == (2.0, str(mount / "cpu.max"))
    # a path this view does not have (host namespace names): only the mount counts
    (proc / "cgroup").write_text("0::/system.slice/docker-abc.scope\n")
    assert workers.cgroup_quota(proc) == (2.0, str(mount / "cpu.max"))


def test_v1_cfs_quota_and_no_quota(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    own = cpu / "docker" / "abc"
    own.mkdir(parents=True)
    (own / "cpu.cfs_quota_us").write_text("150000\n")
    (own / "cpu.cfs_period_us").write_text("100000\n")
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = fake_proc(
        tmp_path,
        "12:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        [
            ("/", str(tmp_path / "memory"), "cgroup", "rw,memory"),
            ("/", str(cpu), "cgroup", "rw,cpu,cpuacct"),
        ],
    )
    assert workers.cgroup_quota(proc) == (1.5, str(own / "cpu.cfs_quota_us"))
    (own / "cpu.cfs_quota_us").write_text("-1\n")
    assert workers.cgroup_quota(proc) is None


def test_unreadable_or_odd_files_are_no_limit(tmp_path: Path) -> None:
    assert workers.cgroup_quota(tmp_path / "no-proc") is None
    proc = v2_tree(tmp_path, {"/kubepods/pod1/c1": "garbage"})
    assert workers.cgroup_quota(proc) is None
    (tmp_path / "cg/kubepods/pod1/c1/cpu.max").write_text("0 100000\n")
    assert workers.cgroup_quota(proc) is None


def test_cpu_budget_uses_affinity_and_the_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    proc = v2_tree(tmp_path, {"/kubepods": "400000 100000"})
    budget = workers.cpu_budget(proc)
    assert (budget.affinity, budget.online, budget.quota, budget.cores) == (6, 32, 4.0, 4)
    assert workers.resolve(None, budget)[0] == 3
    budget = workers.cpu_budget(tmp_path / "no-proc")
    assert (budget.quota, budget.cores) == (None, 6)
    assert workers.resolve(None, budget)[0] == 5


# --- hvt proxy: the CLI, the profile and LiteLLM's command line ---------------------------------


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """`hvt proxy` up to the LiteLLM command it would start (not started), 6 usable cores."""
    commands: list[list[str]] = []

    class Recorder(Supervisor):
        def run(self) -> int:
            commands.append(self.command())
            return 0

    monkeypatch.setattr(proxy_cli, "Supervisor", Recorder)
    monkeypatch.setattr(
        workers,
        "cpu_budget",
        lambda: workers.CpuBudget(affinity=8, online=8, quota=6.0, quota_source="/cg/cpu.max"),
    )
    monkeypatch.setenv("LITELLM_MASTER_KEY", KEY)
    monkeypatch.delenv("LITELLM_MASTER_KEY_FILE", raising=False)
    monkeypatch.setenv("HVT_TRIALS_ROOT", str(tmp_path))
    # proxy_cmd installs the supervisor's signal handlers: not in pytest's process
    monkeypatch.setattr(signal, "signal", lambda _sig, _handler: None)
    return commands


def _invoke(*args: str) -> Any:
    app = typer.Typer()
    app.command()(proxy_cli.proxy_cmd)
    return runner.invoke(app, ["--litellm-config", "/nonexistent.yaml", *args])


def _num_workers(command: list[str]) -> str:
    return command[command.index("--num_workers") + 1]


def test_auto_gives_litellm_one_worker_per_core_less_one(captured: list[list[str]]) -> None:
    result = _invoke("--workers", "auto")
    assert result.exit_code == 0, result.output
    assert _num_workers(captured[-1]) == "5"
    assert "5 LiteLLM workers (--workers auto" in result.output
    assert "6 cores available (cgroup quota 6 CPUs in /cg/cpu.max; affinity 8 of 8)" in (
        result.output
    )


def test_a_number_is_passed_as_it_is_and_the_default_is_one(captured: list[list[str]]) -> None:
    assert _invoke("--workers", "3").exit_code == 0
    assert _num_workers(captured[-1]) == "3"
    assert _invoke().exit_code == 0
    assert _num_workers(captured[-1]) == "1"


def test_several_workers_get_time_to_start(captured: list[list[str]]) -> None:
    # uvicorn's 5 s worker health check killed workers still importing LiteLLM, forever
    assert _invoke("--workers", "2").exit_code == 0
    cmd = captured[-1]
    assert cmd[cmd.index("--timeout_worker_healthcheck") + 1] == str(WORKER_HEALTHCHECK_S)
    assert WORKER_HEALTHCHECK_S >= 60
    assert _invoke("--workers", "1").exit_code == 0
    assert "--timeout_worker_healthcheck" not in captured[-1]  # one worker: no uvicorn supervisor


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_a_bad_workers_value_is_refused_naming_the_option(
    captured: list[list[str]], value: str
) -> None:
    result = _invoke("--workers", value)
    assert result.exit_code == 2
    assert "--workers must be a whole number" in result.output
    assert "--workers auto" in result.output
    assert not captured


def _profile(tmp_path: Path, value: object | None) -> Path:
    """The filled-in shipped config with litellm_workers set (None: the key left out)."""
    key = "runtime_info.input.infrastructure.litellm_workers"
    data = filled_config() if value is None else filled_config(**{key: value})
    if value is None:
        del_path(data, key)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("value", "expected"), [(None, "5"), ("auto", "5"), (2, "2")])
def test_the_profile_sets_the_workers_when_the_option_is_absent(
    captured: list[list[str]], tmp_path: Path, value: object | None, expected: str
) -> None:
    result = _invoke("--config", str(_profile(tmp_path, value)))
    assert result.exit_code == 0, result.output
    assert _num_workers(captured[-1]) == expected


def test_the_option_wins_over_the_profile(captured: list[list[str]], tmp_path: Path) -> None:
    result = _invoke("--config", str(_profile(tmp_path, 4)), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert _num_workers(captured[-1]) == "1"


@pytest.mark.parametrize("value", [0, "four", 2.5, "2"])
def test_a_bad_profile_value_is_one_problem_with_the_fix(
    captured: list[list[str]], tmp_path: Path, value: object
) -> None:
    result = _invoke("--config", str(_profile(tmp_path, value)))
    assert result.exit_code == 2
    assert "1 problem(s)" in result.output
    assert "runtime_info.input.infrastructure.litellm_workers" in result.output
    assert "litellm_workers: auto" in result.output
    assert not captured
