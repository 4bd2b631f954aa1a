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


def verify(
    workdir: Path,
    project: str,
    *,
    first_run_steps: int,
    total_steps: int,
    tensorboard: dict[str, int] | None,
    fleet: list[str] | None = None,
) -> tuple[list[Check], list[dict[str, Any]], dict[int, dict[str, str]]]:
    """The checks, the rollouts and verl's step lines of the smoke's experiment."""
    paths = RunPaths(workdir, project, "")
    checks: list[Check] = []
    ledger = run_records.ledger(paths)
    if not ledger:
        return (
            [Check("run ledger", False, f"no run recorded in {paths.artifacts}/index.yaml")],
            [],
            {},
        )
    exp = str(ledger[-1]["exp_name"])
    entries = [e for e in ledger if e["exp_name"] == exp]
    statuses = [f"{e['id']} {e['status']} (exit {e['exit_code']})" for e in entries]
    checks.append(
        Check(
            "run ledger",
            len(entries) == 2
            and entries[-1]["exit_code"] == 0
            and entries[0]["status"] in ("interrupted", "failed"),
            f"{exp}: " + ", ".join(statuses) + " (the interrupted run, then the resumed one)",
        )
    )
    log = paths.logs / f"{exp}.log"
    steps = step_lines(log)
    want = list(range(1, total_steps + 1))
    checks.append(
        Check(
            "verl steps",
            all(s in steps for s in want),
            f"step lines {sorted(steps)} in {log} (want {want})",
        )
    )
    text = log.read_text(errors="replace") if log.is_file() else ""
    resumed = re.search(rf"[Rr]esum\w* from \S*global_step_{first_run_steps}\b", text)
    checks.append(
        Check(
            "resume",
            bool(resumed) and total_steps in steps,
            (
                resumed.group(0)
                if resumed
                else f"no 'Resuming from ...global_step_{first_run_steps}'"
            )
            + f", then step:{total_steps}",
        )
    )
    ckpt = paths.checkpoints / project / exp
    found = sorted(p.name for p in ckpt.glob("global_step_*"))
    want_ckpt = [f"global_step_{n}" for n in want]
    checks.append(
        Check(
            "checkpoints",
            all(name in found for name in want_ckpt),
            f"{ckpt}: {', '.join(found) or 'none'}",
        )
    )
    rows = rollouts(paths.project_trials / exp)
    exact = [r for r in rows if (r.get("metrics") or {}).get("tokens_exact") == 1.0]
    checks.append(
        Check(
            "rollouts",
            bool(rows) and bool(exact),
            f"{len(rows)} rollouts over steps {sorted({int(r.get('step') or 0) for r in rows})}, "
            f"{len(exact)} with exact tokens from the proxy's trajectories",
        )
    )
    if fleet:
        served = Counter(h for r in rows for h in (r.get("sandbox_hosts") or [])[-1:])
        checks.append(
            Check(
                "sandbox fleet",
                all(served[h] for h in fleet),
                ", ".join(f"{h}: {served[h]} trials" for h in fleet),
            )
        )
    infra = [r for r in rows if r.get("infra_failure")]
    checks.append(
        Check(
            "no infrastructure failure",
            not infra,
            f"{len(infra)} rollouts left out of the loss"
            + "".join(f"; {r.get('trial_dir')}: {r['infra_failure']}" for r in infra[:3]),
        )
    )
    if tensorboard is not None:
        missing = [t for t in TB_TAGS if not tensorboard.get(t)]
        checks.append(
            Check(
                "tensorboard",
                not missing,
                f"{len(tensorboard)} scalar series; "
                + (f"missing {', '.join(missing)}" if missing else "has " + ", ".join(TB_TAGS)),
            )
        )
    return checks, rows, steps


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
