"""The preflight of a cluster once its nodes have joined: one Ray task pinned to each node.

`hvt nodes --wait` (which `hvt launch` runs before main_ppo when nnodes > 1) and `hvt nodes
--check` run these on every alive node; a failed one names the node, what it saw and the fix:

- GPUs: the node advertises at least infrastructure.ngpus_per_node GPUs to Ray;
- shared run directory: the head writes a marker with a fresh nonce into <run dir>/run/, every
  node reads it at the same path (checkpoints, trials, logs and the Ray token live there);
- clock skew: each node's clock against the head's, the round trip taken off (trial
  timestamps, log order and certificate checks all assume the same time).

The checks take the nodes and a function that runs a probe on one node, so they are
unit-tested without Ray; `on_node` is the one call into it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvt.ray_nodes import Node

SKEW_WARN_S = 1.0
SKEW_FAIL_S = 5.0


@dataclass(frozen=True)
class Seen:
    """What the probe saw on one node: the marker's text ("" if unreadable, and why), its
    clock, and the head's clock before and after the call."""

    marker: str
    error: str
    clock: float
    sent: float
    back: float

    @property
    def skew(self) -> float:
        return self.clock - (self.sent + self.back) / 2


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    warn: bool
    detail: str


def probe(marker_path: str) -> tuple[str, str, float]:
    """Runs on the node: the marker's text (or why not) and this node's clock."""
    try:
        return Path(marker_path).read_text(), "", time.time()
    except OSError as exc:
        return "", f"{type(exc).__name__}: {exc}", time.time()


def on_node(node_id: str, marker_path: str, tries: int = 3) -> Seen:
    """`probe` as a Ray task pinned to one node (no CPU reserved: it must run even when busy),
    a few times: the quickest round trip gives the clock reading (the first pays for starting
    a Ray worker process, which would skew the estimate by up to half of that)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task: Any = ray.remote(num_cpus=0)(probe)
    pinned = task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    )
    best: Seen | None = None
    for _ in range(tries):
        sent = time.time()
        marker, error, clock = ray.get(pinned.remote(marker_path), timeout=120)
        seen = Seen(marker, error, clock, sent, time.time())
        if best is None or seen.back - seen.sent < best.back - best.sent:
            best = seen
    assert best is not None
    return best


def write_marker(state_dir: Path) -> tuple[Path, str]:
    state_dir.mkdir(parents=True, exist_ok=True)
    nonce = secrets.token_hex(8)
    path = state_dir / f"node-check-{nonce}"
    path.write_text(nonce)
    return path, nonce


def check(
    nodes: Sequence[Node],
    gpus_per_node: int,
    state_dir: Path,
    run: Callable[[str, str], Seen] = on_node,
) -> list[Result]:
    """GPUs, the shared run directory and the clock of every node."""
    out: list[Result] = []
    marker, nonce = write_marker(state_dir)
    try:
        for n in nodes:
            out.append(
                Result(
                    f"{n.name}: GPUs",
                    n.gpus >= gpus_per_node,
                    False,
                    f"{n.gpus:g} GPU(s) in Ray, infrastructure.ngpus_per_node is {gpus_per_node}"
                    + (
                        ""
                        if n.gpus >= gpus_per_node
                        else " (check the node's driver and "
                        "toolkit: make provision; or lower ngpus_per_node)"
                    ),
                )
            )
            seen = run(n.node_id, str(marker))
            shared = seen.marker == nonce
            out.append(
                Result(
                    f"{n.name}: shared run directory",
                    shared,
                    False,
                    f"read the head's marker at {marker}"
                    if shared
                    else f"cannot read the head's marker at {marker} ({seen.error or 'other text'}"
                    "): mount the same shared filesystem at the same path on every trainer "
                    "host (HVT_DATA_DIR; make provision's shared_dir role, or NFS by hand)",
                )
            )
            skew = seen.skew
            out.append(
                Result(
                    f"{n.name}: clock",
                    abs(skew) <= SKEW_FAIL_S,
                    abs(skew) > SKEW_WARN_S,
                    f"{skew:+.2f} s against the head (round trip {seen.back - seen.sent:.2f} s)"
                    + (
                        ""
                        if abs(skew) <= SKEW_WARN_S
                        else " -- run an NTP client (chrony, "
                        "systemd-timesyncd) on every trainer host"
                    ),
                )
            )
    finally:
        marker.unlink(missing_ok=True)
    return out
