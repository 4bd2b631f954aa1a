"""The figures of an asynchronous run (training.mode: colocate_async), from what it left behind:
verl's per-step console lines in the run log and the agent loop's rollouts.jsonl files.

Per step: wall time (`timing_s/step`), trajectory staleness and spans (verl's
`training/off_policy/*`, in weight versions), groups dropped as too stale
(`*/off_policy/evicted_samples`), infrastructure failures left out (`rollout/infra_failed_*`).
Over the rollouts: model calls the replicas aborted at weight updates, how many of them were
not retried (those rollouts are kept out of the loss), the weight versions per trial, and the
groups carried over into a later step (`trained_groups.jsonl`).

  python tests/gpu/async_report.py <run log> <trials dir of the experiment>
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hvt.smoke import verify
from verl_patch import trained_groups

STEP_KEYS = {
    "step_s": "timing_s/step",
    "staleness_mean": "training/off_policy/trajectory_staleness/mean",
    "staleness_max": "training/off_policy/trajectory_staleness/max",
    "spans_max": "training/off_policy/trajectory_spans/max",
    "infra_failed": "rollout/infra_failed_samples",
}
DROPPED_SUFFIX = "/off_policy/evicted_samples"


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.removeprefix("np.float64(").removesuffix(")"))
    except ValueError:
        return None


@dataclass
class StepFigures:
    step: int
    step_s: float | None
    staleness_mean: float | None
    staleness_max: float | None
    spans_max: float | None
    infra_failed: float | None
    dropped_samples: float


@dataclass
class AsyncReport:
    steps: list[StepFigures] = field(default_factory=list)
    rollouts: int = 0
    calls: int = 0
    calls_aborted: int = 0
    calls_aborted_unretried: int = 0
    rollouts_with_an_abort: int = 0
    rollouts_left_out: dict[str, int] = field(default_factory=dict)  # infra_failure kind -> n
    weight_versions_per_trial: dict[str, int] = field(default_factory=dict)  # n versions -> n
    # groups still running when their own step took its batch, trained by a later step
    # (trained_groups.jsonl + rollouts.jsonl, hvt.smoke.verify.carried_over): "task s->t"
    carried_over: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def step_figures(lines: dict[int, dict[str, str]]) -> list[StepFigures]:
    out: list[StepFigures] = []
    for step in sorted(lines):
        values = lines[step]
        dropped = sum(_number(v) or 0.0 for k, v in values.items() if k.endswith(DROPPED_SUFFIX))
        figures = {name: _number(values.get(key)) for name, key in STEP_KEYS.items()}
        out.append(StepFigures(step=step, dropped_samples=dropped, **figures))
    return out


def rollout_figures(rows: list[dict[str, Any]], report: AsyncReport) -> None:
    for row in rows:
        metrics = row.get("metrics") or {}
        aborted = int(metrics.get("model_calls_aborted", 0))
        report.rollouts += 1
        report.calls += int(metrics.get("model_calls", 0)) + aborted
        report.calls_aborted += aborted
        report.calls_aborted_unretried += int(metrics.get("model_calls_aborted_unretried", 0))
        report.rollouts_with_an_abort += int(aborted > 0)
        reason = row.get("infra_failure")
        if reason:
            kind = str(reason).split(":", 1)[0]
            report.rollouts_left_out[kind] = report.rollouts_left_out.get(kind, 0) + 1
        versions = str(len(row.get("weight_versions") or []))
        report.weight_versions_per_trial[versions] = (
            report.weight_versions_per_trial.get(versions, 0) + 1
        )


def build(log: Path, trials: Path) -> AsyncReport:
    report = AsyncReport(steps=step_figures(verify.step_lines(log)))
    rows = verify.rollouts(trials)
    rollout_figures(rows, report)
    report.carried_over = [
        f"{g.task} {g.submitted}->{g.trained}"
        for g in verify.carried_over(rows, trained_groups.read(trials))
    ]
    return report


if __name__ == "__main__":
    print(build(Path(sys.argv[1]), Path(sys.argv[2])).as_json())
