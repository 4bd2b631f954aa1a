"""The GPU async check's report (tests/gpu/async_report.py) on a log and rollouts written here."""

from __future__ import annotations

import json
from pathlib import Path

from tests.gpu import async_report


def test_report_reads_steps_drops_staleness_and_aborts(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text(
        "(TaskRunner pid=1) step:1 - timing_s/step:np.float64(41.5) - "
        "training/off_policy/trajectory_staleness/mean:0.0 - "
        "training/off_policy/trajectory_staleness/max:0 - "
        "training/off_policy/trajectory_spans/max:1 - rollout/infra_failed_samples:0.0\n"
        "noise\n"
        "step:2 - timing_s/step:30.25 - training/off_policy/trajectory_staleness/mean:0.5 - "
        "training/off_policy/trajectory_staleness/max:1 - "
        "training/off_policy/trajectory_spans/max:2 - training/off_policy/evicted_samples:2 - "
        "rollout/infra_failed_samples:1.0\n"
    )
    trials = tmp_path / "trials"
    rows = {
        "step_0001": [
            {
                "metrics": {"model_calls": 5},
                "weight_versions": [0],
                "infra_failure": None,
                "uid": "slow",
                "instance_id": "unhang-check",
                "step": 1,
                "finished_at": 150.0,
            },
            {
                "metrics": {
                    "model_calls": 4,
                    "model_calls_aborted": 1,
                    "model_calls_aborted_unretried": 0,
                },
                "weight_versions": [0, 1],
            },
        ],
        "step_0002": [
            {
                "metrics": {
                    "model_calls": 2,
                    "model_calls_aborted": 1,
                    "model_calls_aborted_unretried": 1,
                },
                "weight_versions": [1],
                "infra_failure": "aborted: 1 model call(s) aborted by a weight update and not ...",
            }
        ],
    }
    for step, lines in rows.items():
        (trials / step).mkdir(parents=True)
        (trials / step / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    (trials / "trained_groups.jsonl").write_text(
        json.dumps({"global_step": 1, "sampled_at": 100.0, "groups": []})
        + "\n"
        + json.dumps(
            {
                "global_step": 2,
                "sampled_at": 160.0,
                "groups": [{"uid": "slow", "submitted_step": 1}],
            }
        )
        + "\n"
    )
    report = async_report.build(log, trials)
    one, two = report.steps
    assert (one.step, one.step_s, one.staleness_max, one.dropped_samples) == (1, 41.5, 0.0, 0.0)
    assert (two.step_s, two.staleness_mean, two.spans_max, two.dropped_samples) == (
        30.25,
        0.5,
        2.0,
        2.0,
    )
    assert two.infra_failed == 1.0
    assert (report.rollouts, report.calls, report.calls_aborted) == (3, 13, 2)
    assert report.calls_aborted_unretried == 1 and report.rollouts_with_an_abort == 2
    assert report.rollouts_left_out == {"aborted": 1}
    assert report.weight_versions_per_trial == {"1": 2, "2": 1}
    assert json.loads(report.as_json())["steps"][1]["dropped_samples"] == 2.0
    assert report.carried_over == ["unhang-check 1->2"]
