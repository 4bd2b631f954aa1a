"""The smoke's async checks (hvt.smoke.verify), on run directories written as the trainer writes
them: which groups carried over into a later step, the queue across the restart, aborted calls,
the step times side by side; and the trained-groups record the replay buffer keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hvt.smoke import cli, verify, verify_nodes
from verl_patch import trained_groups

PROJECT, EXP = "hvt-smoke", "harbor-cc-colocate_async-1n-x"


def _row(uid: str, task: str, step: int, finished: float, **extra: object) -> dict:
    return {"uid": uid, "instance_id": task, "step": step, "finished_at": finished, **extra}


def _trained(step: int, at: float, *groups: tuple[str, int]) -> dict:
    return {
        "global_step": step,
        "sampled_at": at,
        "groups": [{"uid": u, "submitted_step": s} for u, s in groups],
    }


def test_a_group_still_running_when_its_step_sampled_is_carried_over() -> None:
    rows = [
        _row("fast", "fix-greeting", 1, 100.0),
        _row("fast", "fix-greeting", 1, 110.0),
        _row("slow", "unhang-check", 1, 150.0),
        _row("slow", "unhang-check", 1, 260.0),  # the group ends with its last trial
        _row("left", "sum-numbers", 1, 115.0),  # done before step 1 sampled, merely left over
    ]
    trained = [
        _trained(1, 120.0, ("fast", 1), ("x", 1)),
        _trained(2, 300.0, ("slow", 1), ("left", 1)),
    ]
    carried = verify.carried_over(rows, trained)
    assert [(g.task, g.submitted, g.trained, round(g.after_s)) for g in carried] == [
        ("unhang-check", 1, 2, 140)
    ]


def test_a_group_restarted_after_a_resume_is_not_carried_over() -> None:
    """verl re-issues an in-flight group under the resumed step with the same uid: the trials
    of its first submission (step 2, cut short or finished late) are not a carry-over."""
    rows = [
        _row("again", "sum-numbers", 2, 250.0),  # the first submission's trial
        _row("again", "sum-numbers", 3, 400.0),  # re-issued at step 3, trained at step 3
    ]
    trained = [_trained(2, 200.0, ("x", 2)), _trained(3, 410.0, ("again", 3))]
    assert verify.carried_over(rows, trained) == []


def test_a_slow_group_cut_by_the_restart_outlived_its_steps(tmp_path: Path) -> None:
    """Under load the restart can come before the slow group ends: it is restarted (same uid,
    the resumed step) and trained then. It did not gate the steps it outlived: the check says
    so instead of failing; a run where nothing outlived its step still fails."""
    rows = [
        _row("fast", "fix-greeting", 1, 100.0),
        _row("slow", "unhang-check", 1, 150.0),  # one trial done before the restart
        _row("new", "sum-numbers", 2, 190.0),
        _row("slow", "unhang-check", 3, 500.0),  # re-issued after the restart
    ]
    trained = [
        _trained(1, 120.0, ("fast", 1)),
        _trained(2, 200.0, ("new", 2)),
        _trained(3, 510.0, ("slow", 3)),
    ]
    assert verify.carried_over(rows, trained) == []
    assert [(g.task, g.submitted, g.trained) for g in verify.outlived(rows)] == [
        ("unhang-check", 1, 3)
    ]
    run = _run_dir(tmp_path, "", rows, trained)
    check = next(c for c in verify.verify_async(run, PROJECT, EXP, rows, 2) if "carry" in c.name)
    assert check.ok and "outlived the steps after it" in check.detail
    lone = [_row("a", "fix-greeting", 1, 100.0), _row("b", "sum-numbers", 2, 200.0)]
    lines = [_trained(1, 101.0, ("a", 1)), _trained(2, 201.0, ("b", 2))]
    assert verify.outlived(lone) == []
    assert verify.carried_over(lone, lines) == []


def test_sync_steps_carry_nothing_over() -> None:
    rows = [_row("a", "fix-greeting", 1, 100.0), _row("b", "sum-numbers", 2, 200.0)]
    trained = [_trained(1, 101.0, ("a", 1)), _trained(2, 201.0, ("b", 2))]
    assert verify.carried_over(rows, trained) == []


def _run_dir(tmp_path: Path, log: str, rows: list[dict], trained: list[dict]) -> Path:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / f"{EXP}.log").write_text(log)
    trials = tmp_path / "harbor_trials" / PROJECT / EXP
    (trials / "step_0001").mkdir(parents=True)
    (trials / "step_0001" / "rollouts.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    (trials / "trained_groups.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trained))
    return tmp_path


def test_async_checks_read_the_queue_restore_and_the_aborted_calls(tmp_path: Path) -> None:
    log = (
        "INFO Restored 3 training prompt groups from TransferQueue\n"
        "INFO Re-issued 2 in-flight prompts for step 3; cleared 1 old trajectories\n"
    )
    rows = [
        _row("slow", "unhang-check", 1, 50.0, metrics={"model_calls_aborted": 1}),
        _row(
            "cut",
            "sum-numbers",
            1,
            60.0,
            infra_failure="aborted: 1 call aborted by a weight update and never asked again",
            metrics={"model_calls_aborted": 1, "model_calls_aborted_unretried": 1},
        ),
    ]
    run = _run_dir(tmp_path, log, rows, [_trained(1, 10.0), _trained(2, 70.0, ("slow", 1))])
    checks = {c.name: c for c in verify.verify_async(run, PROJECT, EXP, rows, 2)}
    assert checks["async: carry-over"].ok
    assert "unhang-check submitted at step 1" in checks["async: carry-over"].detail
    queue = checks["async: queue across the restart"]
    assert (
        queue.ok
        and "restored 3" in queue.detail
        and "1 finished (kept), 2 in flight (restarted at step 3)" in queue.detail
    )
    aborted = checks["async: aborted calls"]
    assert aborted.ok and aborted.detail.startswith("2 model calls aborted")


def test_an_unretried_abort_that_was_trained_fails_the_check(tmp_path: Path) -> None:
    rows = [_row("torn", "sum-numbers", 1, 60.0, metrics={"model_calls_aborted_unretried": 1})]
    run = _run_dir(tmp_path, "", rows, [])
    checks = {c.name: c for c in verify.verify_async(run, PROJECT, EXP, rows, 2)}
    assert not checks["async: aborted calls"].ok
    assert "TRAINED ANYWAY" in checks["async: aborted calls"].detail
    assert not checks["async: carry-over"].ok
    assert not checks["async: queue across the restart"].ok


def test_one_launch_to_the_end_passes_the_ledger_check(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, "step:1 - timing_s/step:90.5\nstep:2 - timing_s/step:120.0\n", [], [])
    (run / "artifacts").mkdir()
    entry = {"id": "r1", "exp_name": EXP, "status": "succeeded", "exit_code": 0}
    (run / "artifacts" / "index.yaml").write_text(yaml.safe_dump([entry]))
    checks, _, steps = verify.verify(run, PROJECT, EXP, label="sync", total_steps=2)
    by = {c.name: c for c in checks}
    assert by["sync: run ledger"].ok and by["sync: verl steps"].ok
    assert "sync: resume" not in by  # nothing was restarted
    assert verify.step_seconds(steps) == [90.5, 120.0]
    assert verify.experiments(run, PROJECT) == [EXP]


def test_step_times_side_by_side() -> None:
    check = cli.step_time_check([200.0, 100.0], [90.0, 60.0, 75.0])
    assert check.ok
    assert check.detail.endswith("async/sync 0.50")
    assert not cli.step_time_check([100.0], []).ok


def test_the_buffer_records_what_each_step_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HVT_TRIALS_DIR", str(tmp_path))
    trained_groups.record_trained(4, ["u1", "u2"], {"u1": 3, "u2": 4})
    trained_groups.record_trained(5, ["u3"], {"u3": 5})
    lines = trained_groups.read(tmp_path)
    assert [line["global_step"] for line in lines] == [4, 5]
    assert lines[0]["groups"] == [
        {"uid": "u1", "submitted_step": 3},
        {"uid": "u2", "submitted_step": 4},
    ]
    monkeypatch.setenv("HVT_TRIALS_DIR", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")  # not a directory: said in the log, never raised
    trained_groups.record_trained(6, ["u4"], {})


def test_an_unknown_smoke_mode_is_refused_before_anything_starts() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, ["stack", "--mode", "separate_async"])
    assert result.exit_code == 2
    assert "'separate_async' is not a smoke mode (use sync or colocate_async)" in result.output


HEAD_LOG = "\n".join(
    [
        "nodes 1/2 nodes joined; waiting for trainer-1 (0/600 s)",
        "nodes 2/2 nodes joined after 2 s: trainer-0 (head, 172.29.0.4, 1 GPU), "
        "trainer-1 (worker, 172.29.0.6, 1 GPU)",
        "wrote /shared/litellm/config.yaml: 2 replica(s) [0=http://172.29.0.4:43249/v1 on "
        "trainer-0, 1=http://172.29.0.6:33859/v1 on trainer-1]",
        "hvt launch: the run failed because it lost trainer node(s): trainer-1 (172.29.0.6): ...",
        "nodes 2/2 nodes joined after 31 s: trainer-0 (head, 172.29.0.4, 1 GPU), "
        "trainer-1 (worker, 172.29.0.9, 1 GPU)",
        "wrote /shared/litellm/config.yaml: 2 replica(s) [0=http://172.29.0.4:40001/v1 on "
        "trainer-0, 1=http://172.29.0.9:40002/v1 on trainer-1]",
    ]
)


def _two_node_run(
    tmp_path: Path,
    reason: str,
    both_ranks: bool = True,
    proxies: tuple[list[str], list[str]] = (["trainer-0"], ["trainer-1"]),
) -> Path:
    run = _run_dir(tmp_path, "", [], [])
    trials = run / "harbor_trials" / PROJECT / EXP
    for trial, base, names in zip(
        ("t1", "t2"), ("172.29.0.4:43249", "172.29.0.9:40002"), proxies, strict=True
    ):
        path = trials / "step_0001" / trial / "proxy" / "litellm-trajectory.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        deployment = {"model": "vllm_model", "api_base": f"http://{base}/v1"}
        path.write_text(
            "".join(json.dumps({"proxy": n, "deployment": deployment}) + "\n" for n in names)
        )
    actor = run / "checkpoints" / PROJECT / EXP / "global_step_2" / "actor"
    actor.mkdir(parents=True)
    for rank in (0, 1) if both_ranks else (0,):
        (actor / f"model_world_size_2_rank_{rank}.pt").write_bytes(b"x")
    (run / "artifacts").mkdir()
    entries = [
        {"id": "run_001", "exp_name": EXP, "status": "failed", "exit_code": 1, "reason": reason},
        {"id": "run_002", "exp_name": EXP, "status": "completed", "exit_code": 0},
    ]
    (run / "artifacts" / "index.yaml").write_text(yaml.safe_dump(entries))
    return run


def test_two_nodes_joined_served_checkpointed_and_the_lost_one_is_on_record(
    tmp_path: Path,
) -> None:
    run = _two_node_run(tmp_path, "lost trainer node(s): trainer-1 (172.29.0.6): health check")
    checks = {
        c.name: c
        for c in verify_nodes.verify_nodes(
            run, PROJECT, EXP, HEAD_LOG, ["trainer-0", "trainer-1"], "trainer-1", 42.0
        )
    }
    assert [c for c in checks.values() if not c.ok] == []
    assert checks["nodes: joined"].detail.startswith("2 launch(es) saw all of")
    assert "after 2 s, 31 s" in checks["nodes: joined"].detail
    # the last discovery line: the worker came back at a new address
    assert "172.29.0.9:40002 on trainer-1" in checks["nodes: a replica on each"].detail
    assert checks["nodes: calls served on each"].detail == "trainer-0: 1 calls, trainer-1: 1 calls"
    assert checks["nodes: a proxy on each"].detail == (
        "trainer-0's proxy: 1 calls, trainer-1's proxy: 1 calls"
    )
    assert "ranks ['0', '1']" in checks["nodes: shared checkpoint"].detail
    assert "run_001 failed, 42 s after the node stopped: lost trainer node(s): trainer-1" in (
        checks["nodes: lost node"].detail
    )


def test_a_failure_that_names_no_node_or_a_missing_rank_fails_the_checks(tmp_path: Path) -> None:
    run = _two_node_run(tmp_path, "", both_ranks=False)
    checks = {
        c.name: c
        for c in verify_nodes.verify_nodes(
            run, PROJECT, EXP, HEAD_LOG, ["trainer-0", "trainer-1"], "trainer-1", None
        )
    }
    assert (
        not checks["nodes: lost node"].ok
        and "no reason recorded" in checks["nodes: lost node"].detail
    )
    assert not checks["nodes: shared checkpoint"].ok


@pytest.mark.parametrize(
    ("proxies", "said"),
    [
        ((["trainer-0"], ["trainer-0"]), "trainer-0's proxy: 2 calls"),  # the node's proxy idle
        ((["trainer-0"], ["trainer-1", "trainer-0"]), "trainer-0's proxy: 2 calls, trainer-1's"),
    ],
)
def test_a_node_whose_proxy_served_nothing_or_a_trial_on_two_proxies_fails(
    tmp_path: Path, proxies: tuple[list[str], list[str]], said: str
) -> None:
    run = _two_node_run(tmp_path, "lost trainer node(s): trainer-1", proxies=proxies)
    check = {
        c.name: c
        for c in verify_nodes.verify_nodes(
            run, PROJECT, EXP, HEAD_LOG, ["trainer-0", "trainer-1"], "trainer-1", None
        )
    }["nodes: a proxy on each"]
    assert not check.ok and check.detail.startswith(said), check.detail
    if len(proxies[1]) > 1:
        assert "trials served by two proxies: t2 (trainer-0, trainer-1)" in check.detail


def test_two_nodes_run_one_async_experiment() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, ["stack", "--nodes", "2", "--mode", "sync"])
    assert result.exit_code == 2
    assert "--nodes 2 runs one colocate_async experiment (config/smoke-2node.yaml)" in result.output


def test_the_last_lines_name_each_broken_check(tmp_path: Path) -> None:
    from hvt.smoke import report

    broken = [verify.Check("async: carry-over", False, "no group outlived the step")]
    lines = report.verdict_lines(broken, 1, tmp_path)
    assert lines[0].startswith("hvt smoke: FAILED, exit 1")
    assert lines[-1] == "hvt smoke: BROKEN async: carry-over: no group outlived the step"
    assert "no check failed" in report.verdict_lines([], 2, tmp_path)[-1]
    said = report.verdict_lines([], 1, tmp_path, ["hvt smoke: the run did not stop in 15 min"])
    assert said[-1] == "hvt smoke: FAILURE the run did not stop in 15 min"
    assert report.verdict_lines([], 0, tmp_path)[0].startswith("hvt smoke: PASSED")
