"""What `hvt smoke stack --nodes 2` checks beyond the one-node smoke: the cluster, link by link.

Read from the head's container log (`hvt launch`'s node wait and discovery's lines), the run
ledger, the proxy's trajectories (which replica answered each call) and the checkpoints in the
shared run directory:

- every launch waited for both nodes, and how long the second took to join;
- discovery found a replica on each node, and each node's replica served the trials' calls;
- each node's own proxy logged calls (one proxy per node), and no trial's calls went through two;
- the worker node's FSDP rank wrote its checkpoint shards into the shared directory;
- stopping the worker node failed the run with a record naming that node; the next launch,
  once the node was back, resumed (the resume itself is verify.verify's check).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from hvt.config.run_paths import RunPaths
from hvt.run import records as run_records
from hvt.smoke.verify import Check
from hvt.trajectory.paths import FILE_NAME as TRAJECTORY

JOINED = re.compile(r"(\d+)/(\d+) nodes joined after (\d+) s: (.*)$", re.MULTILINE)
WROTE = re.compile(r"wrote \S+: (\d+) replica\(s\) \[(.*)\]$", re.MULTILINE)
REPLICA = re.compile(r"(\d+)=http://\[?([^\]/]+?)\]?:(\d+)/v1 on ([^\s,\]]+)")


def replica_nodes(head_log: str) -> dict[str, str]:
    """Each replica's address (host:port) -> its node, over every set discovery wrote (a
    relaunch serves from new ports; the calls before it went to the old ones)."""
    out: dict[str, str] = {}
    for _count, listing in WROTE.findall(head_log):
        out.update({f"{h}:{p}": node for _i, h, p, node in REPLICA.findall(listing)})
    return out


def last_replicas(head_log: str) -> dict[str, str]:
    """The replica set discovery wrote last: address -> node."""
    found = WROTE.findall(head_log)
    return {f"{h}:{p}": n for _i, h, p, n in REPLICA.findall(found[-1][1])} if found else {}


def calls_by_node(trials: Path, replicas: dict[str, str]) -> Counter[str]:
    """The proxy's logged calls, by the node whose replica answered them (each trajectory
    record's `deployment.api_base`)."""
    out: Counter[str] = Counter()
    for path in trials.glob(f"*/*/proxy/{TRAJECTORY}"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                base = str((record.get("deployment") or {}).get("api_base") or "")
            except json.JSONDecodeError:
                continue
            address = (
                base.removeprefix("http://").split("/", 1)[0].replace("[", "").replace("]", "")
            )
            out[replicas.get(address, f"unknown ({address or 'no api_base'})")] += 1
    return out


def calls_by_proxy(trials: Path) -> tuple[Counter[str], list[str]]:
    """The logged calls by the proxy that logged them (each record's `proxy`), and the trials
    whose calls went through more than one proxy (a sandbox knows only its node's)."""
    out: Counter[str] = Counter()
    mixed: list[str] = []
    for path in trials.glob(f"*/*/proxy/{TRAJECTORY}"):
        seen: set[str] = set()
        for line in path.read_text(errors="replace").splitlines():
            try:
                name = str(json.loads(line).get("proxy") or "unnamed")
            except (json.JSONDecodeError, AttributeError):
                continue
            out[name] += 1
            seen.add(name)
        if len(seen) > 1:
            mixed.append(f"{path.parents[1].name} ({', '.join(sorted(seen))})")
    return out, mixed


def verify_nodes(
    workdir: Path,
    project: str,
    exp: str,
    head_log: str,
    nodes: list[str],
    lost: str,
    loss_seconds: float | None,
) -> list[Check]:
    checks: list[Check] = []
    joins = [m for m in JOINED.finditer(head_log) if int(m.group(2)) == len(nodes)]
    complete = [m for m in joins if all(n in m.group(4) for n in nodes)]
    checks.append(
        Check(
            "nodes: joined",
            len(complete) >= 2,
            f"{len(complete)} launch(es) saw all of {nodes} join, after "
            + ", ".join(f"{m.group(3)} s" for m in complete)
            + " (want 2: the first launch and the resumed one)",
        )
    )
    last = last_replicas(head_log)
    on = Counter(last.values())
    checks.append(
        Check(
            "nodes: a replica on each",
            all(on[n] for n in nodes),
            ", ".join(f"{a} on {n}" for a, n in sorted(last.items())) or "no discovery line",
        )
    )
    replicas = replica_nodes(head_log)
    paths = RunPaths(workdir, project, exp)
    calls = calls_by_node(paths.project_trials / exp, replicas)
    checks.append(
        Check(
            "nodes: calls served on each",
            all(calls[n] for n in nodes),
            ", ".join(f"{n}: {c} calls" for n, c in sorted(calls.items())) or "no logged calls",
        )
    )
    proxies, mixed = calls_by_proxy(paths.project_trials / exp)
    checks.append(
        Check(
            "nodes: a proxy on each",
            all(proxies[n] for n in nodes) and not mixed,
            ", ".join(f"{n}'s proxy: {c} calls" for n, c in sorted(proxies.items()))
            + (f"; trials served by two proxies: {', '.join(mixed[:3])}" if mixed else "")
            if proxies
            else "no logged calls",
        )
    )
    ckpt = paths.checkpoints / project / exp
    shards = sorted({p.name for p in ckpt.glob("global_step_*/actor/*rank_*")})
    ranks = {m.group(1) for s in shards if (m := re.search(r"rank_(\d+)", s))}
    checks.append(
        Check(
            "nodes: shared checkpoint",
            ranks >= {str(r) for r in range(len(nodes))},
            f"{ckpt}: actor shards of ranks {sorted(ranks) or 'none'} ({len(shards)} files)",
        )
    )
    entries = [e for e in run_records.ledger(paths) if e["exp_name"] == exp]
    first = entries[0] if entries else {}
    reason = str(first.get("reason") or "")
    took = f", {loss_seconds:.0f} s after the node stopped" if loss_seconds is not None else ""
    checks.append(
        Check(
            "nodes: lost node",
            first.get("status") == "failed" and lost in reason,
            f"{first.get('id', '?')} {first.get('status', 'none')}{took}: "
            f"{reason or 'no reason recorded'}",
        )
    )
    return checks
