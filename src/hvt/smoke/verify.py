"""What `make smoke` checks once the CPU stack has run: verl's own evidence, link by link.

Everything is read from the run directory the trainer wrote (HVT_DATA_DIR): the run log (verl's
console logger prints `step:N - key:value ...` once per step), the checkpoints
(`checkpoints/<project>/<exp>/global_step_N`), the run ledger (`artifacts/index.yaml`, one
entry per launch), the rollouts (`harbor_trials/<project>/<exp>/step_000N/rollouts.jsonl`) and
TensorBoard's scalars (through the `dashboard` service's HTTP API, see `tensorboard_tags`).
"""

from __future__ import annotations

import json
import re
import struct
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvt.config.run_paths import RunPaths
from hvt.run import records as run_records
from verl_patch import trained_groups

STEP_LINE = re.compile(r"(?:^|\s)step:(\d+) - (.*)$")
# what the smoke requires TensorBoard to hold (verl 0.9.1's names)
TB_TAGS = (
    "critic/score/mean",
    "actor/entropy",
    "actor/ppo_kl",
    "actor/pg_clipfrac",
    "response_length/mean",
    "training/rollout_probs_diff_mean",  # rollout-vs-training mismatch (utils/debug/metrics.py)
)
SHOWN_METRICS = (
    "critic/score/mean",
    "actor/pg_loss",
    "actor/entropy",
    "actor/ppo_kl",
    "training/rollout_actor_probs_pearson_corr",
    "timing_s/step",
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def step_lines(log: Path) -> dict[int, dict[str, str]]:
    """verl's per-step console lines: {step: {metric: value}} (the last line for a step)."""
    out: dict[int, dict[str, str]] = {}
    if not log.is_file():
        return out
    for line in log.read_text(errors="replace").splitlines():
        m = STEP_LINE.search(line)
        if not m:
            continue
        pairs = (item.split(":", 1) for item in m.group(2).split(" - ") if ":" in item)
        out[int(m.group(1))] = {k.strip(): v.strip() for k, v in pairs}
    return out


def rollouts(trials: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(trials.glob("step_*/rollouts.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def tensorboard_tags(base: str, run: str = "") -> dict[str, int]:
    """{tag: points} for every scalar series TensorBoard serves (its HTTP API)."""
    with urllib.request.urlopen(f"{base}/data/plugin/scalars/tags", timeout=30) as resp:
        runs: dict[str, dict[str, Any]] = json.load(resp)
    out: dict[str, int] = {}
    for run_name, tags in runs.items():
        if run and run not in run_name:
            continue
        for tag in tags:
            query = urllib.parse.urlencode({"run": run_name, "tag": tag})
            with urllib.request.urlopen(
                f"{base}/data/plugin/scalars/scalars?{query}", timeout=30
            ) as resp:
                out[tag] = out.get(tag, 0) + len(json.load(resp))
    return out


def experiments(workdir: Path, project: str) -> list[str]:
    """The experiments of the run ledger, in the order they were first launched."""
    names: list[str] = []
    for entry in run_records.ledger(RunPaths(workdir, project, "")):
        if str(entry["exp_name"]) not in names:
            names.append(str(entry["exp_name"]))
    return names


def verify(
    workdir: Path,
    project: str,
    exp: str,
    *,
    label: str,
    total_steps: int,
    resumed_from: int | None = None,
    fleet: list[str] | None = None,
) -> tuple[list[Check], list[dict[str, Any]], dict[int, dict[str, str]]]:
    """The checks of one experiment (`label` names them), its rollouts and verl's step lines.
    `resumed_from`: the step the experiment was restarted after (two launches: the interrupted
    one, then the resumed one), else one launch that ran to the end."""
    paths = RunPaths(workdir, project, "")
    checks: list[Check] = []
    entries = [e for e in run_records.ledger(paths) if e["exp_name"] == exp]
    statuses = ", ".join(f"{e['id']} {e['status']} (exit {e['exit_code']})" for e in entries)
    if resumed_from:
        ledger_ok = (
            len(entries) == 2
            and entries[-1]["exit_code"] == 0
            and entries[0]["status"] in ("interrupted", "failed")
        )
        said = " (the interrupted run, then the resumed one)"
    else:
        ledger_ok = len(entries) == 1 and entries[0]["exit_code"] == 0
        said = " (one run, to the end)"
    checks.append(Check(f"{label}: run ledger", ledger_ok, f"{exp}: {statuses or 'none'}{said}"))
    log = paths.logs / f"{exp}.log"
    steps = step_lines(log)
    want = list(range(1, total_steps + 1))
    checks.append(
        Check(
            f"{label}: verl steps",
            all(s in steps for s in want),
            f"step lines {sorted(steps)} in {log} (want {want})",
        )
    )
    if resumed_from:
        text = log.read_text(errors="replace") if log.is_file() else ""
        resumed = re.search(rf"[Rr]esum\w* from \S*global_step_{resumed_from}\b", text)
        checks.append(
            Check(
                f"{label}: resume",
                bool(resumed) and total_steps in steps,
                (
                    resumed.group(0)
                    if resumed
                    else f"no 'Resuming from ...global_step_{resumed_from}'"
                )
                + f", then step:{total_steps}",
            )
        )
    ckpt = paths.checkpoints / project / exp
    found = sorted(p.name for p in ckpt.glob("global_step_*"))
    checks.append(
        Check(
            f"{label}: checkpoints",
            all(f"global_step_{n}" in found for n in want),
            f"{ckpt}: {', '.join(found) or 'none'}",
        )
    )
    rows = rollouts(paths.project_trials / exp)
    exact = [r for r in rows if (r.get("metrics") or {}).get("tokens_exact") == 1.0]
    checks.append(
        Check(
            f"{label}: rollouts",
            bool(rows) and bool(exact),
            f"{len(rows)} rollouts over steps {sorted({int(r.get('step') or 0) for r in rows})}, "
            f"{len(exact)} with exact tokens from the proxy's trajectories",
        )
    )
    if fleet:
        served = Counter(h for r in rows for h in (r.get("sandbox_hosts") or [])[-1:])
        checks.append(
            Check(
                f"{label}: sandbox fleet",
                all(served[h] for h in fleet),
                ", ".join(f"{h}: {served[h]} trials" for h in fleet),
            )
        )
    # an aborted call never asked again is async's own outcome (left out of the loss, checked
    # by aborted_calls), not an infrastructure failure
    infra = [r for r in rows if r.get("infra_failure") and not _aborted(r)]
    checks.append(
        Check(
            f"{label}: no infrastructure failure",
            not infra,
            f"{len(infra)} rollouts left out of the loss"
            + "".join(f"; {r.get('trial_dir')}: {r['infra_failure']}" for r in infra[:3]),
        )
    )
    return checks, rows, steps


def tensorboard_check(tags: dict[str, int]) -> Check:
    missing = [t for t in TB_TAGS if not tags.get(t)]
    return Check(
        "tensorboard",
        not missing,
        f"{len(tags)} scalar series; "
        + (f"missing {', '.join(missing)}" if missing else "has " + ", ".join(TB_TAGS)),
    )


def _aborted(row: dict[str, Any]) -> bool:
    return str(row.get("infra_failure") or "").startswith("aborted")


@dataclass
class CarriedGroup:
    task: str
    submitted: int
    trained: int
    after_s: float  # how long after its own step sampled the group's last trial finished


def carried_over(rows: list[dict[str, Any]], trained: list[dict[str, Any]]) -> list[CarriedGroup]:
    """Groups still running when the step they were submitted in sampled its batch, trained by
    a later step: what colocate_async does with a slow trial instead of waiting for it."""
    sampled_at: dict[int, float] = {}
    trained_at: dict[str, tuple[int, int]] = {}  # uid -> (trained step, submitted step)
    for line in trained:  # a resumed run may sample a step again: the last sample counts
        step = int(line["global_step"])
        sampled_at[step] = float(line["sampled_at"])
        for group in line["groups"]:
            submitted = group.get("submitted_step")
            trained_at[str(group["uid"])] = (step, step if submitted is None else int(submitted))
    out: list[CarriedGroup] = []
    for uid, (step, submitted) in trained_at.items():
        # the trials of this submission: a group restarted after a resume keeps its uid, and
        # the trials of its first submission (cut short) are not what was trained
        trials = [
            r
            for r in rows
            if r.get("uid") == uid and r.get("finished_at") and int(r.get("step") or 0) == submitted
        ]
        if not trials or step <= submitted or submitted not in sampled_at:
            continue
        finished = max(float(r["finished_at"]) for r in trials)
        if finished > sampled_at[submitted]:
            out.append(
                CarriedGroup(
                    str(trials[0].get("instance_id")),
                    submitted,
                    step,
                    finished - sampled_at[submitted],
                )
            )
    return sorted(out, key=lambda g: (g.trained, g.task))


def outlived(rows: list[dict[str, Any]]) -> list[CarriedGroup]:
    """Groups still running when the restart came: their trials of the first submission are
    in step s's directory, the restarted ones (verl re-issues the group with its uid under the
    resumed step t) in step t's. The steps in between trained without waiting for them; under
    a loaded CPU the restart can come before they end."""
    steps: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        steps.setdefault(str(r.get("uid")), {}).setdefault(int(r.get("step") or 0), r)
    out: list[CarriedGroup] = []
    for by_step in steps.values():
        if len(by_step) > 1:
            first, later = min(by_step), max(by_step)
            out.append(CarriedGroup(str(by_step[first].get("instance_id")), first, later, 0.0))
    return sorted(out, key=lambda g: (g.submitted, g.task))


def verify_async(
    workdir: Path, project: str, exp: str, rows: list[dict[str, Any]], resumed_from: int | None
) -> list[Check]:
    """What colocate_async adds: slow groups carried over, the queue kept across the restart,
    aborted calls retried or left out of the loss."""
    paths = RunPaths(workdir, project, "")
    trained = trained_groups.read(paths.project_trials / exp)
    carried = carried_over(rows, trained)
    cut_short = outlived(rows)
    said = "; ".join(
        f"{g.task} submitted at step {g.submitted}, its trials finished {g.after_s:.0f} s "
        f"after step {g.submitted} took its batch, trained at step {g.trained}"
        for g in carried
    )
    if not carried and cut_short:
        said = "none trained before the restart; " + "; ".join(
            f"{g.task} submitted at step {g.submitted} outlived the steps after it (still "
            f"running at the restart), restarted at step {g.trained}"
            for g in cut_short
        )
    checks = [
        Check(
            "async: carry-over",
            bool(carried or cut_short),
            said
            or f"no group outlived the step it was submitted in ({len(trained)} steps in "
            "trained_groups.jsonl)",
        )
    ]
    log = paths.logs / f"{exp}.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    restored = re.search(r"Restored (\d+) training prompt groups", text)
    reissued = re.search(r"Re-issued (\d+) in-flight prompts for step (\d+)", text)
    restarted = int(reissued.group(1)) if reissued else 0
    if resumed_from is not None:  # the experiment was restarted
        checks.append(
            Check(
                "async: queue across the restart",
                bool(restored),
                (
                    f"the checkpoint of global_step_{resumed_from} restored {restored.group(1)} "
                    f"prompt groups: {int(restored.group(1)) - restarted} finished (kept), "
                    + (
                        f"{reissued.group(1)} in flight (restarted at step {reissued.group(2)})"
                        if reissued
                        else "none in flight"
                    )
                )
                if restored
                else f"no 'Restored N training prompt groups' in {log}",
            )
        )
    metric = [(r.get("metrics") or {}) for r in rows]
    aborted = sum(int(m.get("model_calls_aborted", 0)) for m in metric)
    unretried = [r for r in rows if (r.get("metrics") or {}).get("model_calls_aborted_unretried")]
    torn = [r for r in unretried if not _aborted(r)]
    checks.append(
        Check(
            "async: aborted calls",
            not torn,
            f"{aborted} model calls aborted by weight updates in "
            f"{sum(1 for m in metric if m.get('model_calls_aborted'))} trials; "
            f"{len(unretried)} trials with one never asked again, left out of the loss"
            + (
                f"; TRAINED ANYWAY: {', '.join(str(r.get('trial_dir')) for r in torn)}"
                if torn
                else ""
            ),
        )
    )
    return checks


def step_seconds(steps: dict[int, dict[str, str]]) -> list[float]:
    """verl's `timing_s/step` of each step, in step order."""
    return [float(steps[s]["timing_s/step"]) for s in sorted(steps) if "timing_s/step" in steps[s]]


def screenshot(path: Path, min_colours: int = 32) -> Check:
    """The dashboard's screenshot: a PNG of the expected size that shows something (charts
    render in many shades; an empty or error page in a handful)."""
    if not path.is_file():
        return Check("dashboard screenshot", False, f"{path} was not written")
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return Check("dashboard screenshot", False, f"{path} is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    pixels, pos = bytearray(), 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            pixels += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    try:
        shades = len(set(zlib.decompress(bytes(pixels))))
    except zlib.error:
        shades = 0
    return Check(
        "dashboard screenshot",
        shades >= min_colours,
        f"{path}: {width}x{height} PNG, {len(data) // 1024} KiB, {shades} distinct byte values"
        + ("" if shades >= min_colours else f" (fewer than {min_colours}: a blank page?)"),
    )
