"""Which step trained which prompt group: `<trials_dir>/trained_groups.jsonl`.

The replay buffer (`verl_patch.infra_sampler`) appends one line per sample of the training
partition: the global step, the time of the sample and each selected group's uid with the step
it was submitted in. Under colocate_async a group submitted at step 3 may be trained at step 4
(it carried over); its trials are in `step_0003/` and their `rollouts.jsonl` lines carry the
same `uid`. No verl import (the smoke's checks and unit tests read the same format).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE = "trained_groups.jsonl"


def trained_line(step: int, selected: list[str], submitted: dict[str, int]) -> dict[str, Any]:
    """One line of trained_groups.jsonl: what the step trains and when each group was asked."""
    return {
        "global_step": step,
        "sampled_at": time.time(),
        "groups": [{"uid": uid, "submitted_step": submitted.get(uid)} for uid in selected],
    }


def record_trained(step: int, selected: list[str], submitted: dict[str, int]) -> None:
    """Append the step's line to <HVT_TRIALS_DIR>/trained_groups.jsonl; never fails a step."""
    where = os.environ.get("HVT_TRIALS_DIR")
    if not where:
        return
    try:
        path = Path(where) / FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(trained_line(step, selected, submitted)) + "\n")
    except OSError as exc:
        log.warning("step %d: cannot record the trained groups in %s: %s", step, where, exc)


def read(trials_dir: Path) -> list[dict[str, Any]]:
    """The experiment's trained_groups.jsonl, one dict per step's sample ([] when absent)."""
    path = trials_dir / FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
