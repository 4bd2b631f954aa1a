"""The bundle's Ray cluster as nodes: who joined, and waiting until every expected node has.

Each node names itself with the Ray node label `hvt-node=<name>` (the head in `hvt launch`, a
worker in `hvt worker`): its HVT_NODE_NAME, else its host name. `infrastructure.node_names`
(head first; Ansible writes it from the inventory's trainer group) lets the head name a node
that did not join; without it the head waits for `nnodes` nodes, whatever their names.

Everything here takes the rows of `ray.nodes()` (or a function returning them), so the waiting
and the messages are unit-tested without a cluster; `snapshot` is the one call into Ray.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NODE_LABEL = "hvt-node"
# `hvt nodes --lost` starts each lost node's line with it (Ray prints lines of its own there)
LOST_PREFIX = "lost node: "
EXIT_LOST = 3  # `hvt nodes --lost` when a node is lost
PROGRESS_EVERY_S = 15.0


class ClusterError(RuntimeError):
    """The cluster is not what the config asks for; the message names the nodes and a fix."""


@dataclass(frozen=True, order=True)
class Node:
    name: str
    ip: str
    alive: bool
    gpus: float
    head: bool
    death: str = ""  # Ray's reason for a dead node (DeathReasonMessage)
    node_id: str = ""  # Ray's NodeID

    def describe(self) -> str:
        role = "head" if self.head else "worker"
        gpus = f"{self.gpus:g} GPU" + ("" if self.gpus == 1 else "s")
        return f"{self.name} ({role}, {self.ip}, {gpus})"


def node_name() -> str:
    """This node's name in the cluster: HVT_NODE_NAME, else the host name."""
    return os.environ.get("HVT_NODE_NAME") or socket.gethostname()


def from_rows(rows: Sequence[Mapping[str, Any]]) -> list[Node]:
    """Nodes from `ray.nodes()`; a node without our label goes by its Ray node name."""
    out = []
    for row in rows:
        labels = row.get("Labels") or {}
        resources = row.get("Resources") or {}
        out.append(
            Node(
                name=str(labels.get(NODE_LABEL) or row.get("NodeName") or row.get("NodeID")),
                ip=str(row.get("NodeManagerAddress") or ""),
                alive=bool(row.get("Alive")),
                gpus=float(resources.get("GPU", 0.0)),
                head="node:__internal_head__" in resources,
                death=str(row.get("DeathReasonMessage") or ""),
                node_id=str(row.get("NodeID") or ""),
            )
        )
    return sorted(out, key=lambda n: (not n.head, n.name))


def snapshot() -> list[Node]:
    """The nodes of the cluster this process's ray.init joined."""
    import ray

    return from_rows(ray.nodes())  # type: ignore[no-untyped-call]


def name_of_ip(nodes: Sequence[Node]) -> dict[str, str]:
    """Alive nodes' names by address (a replica's host is its node's address)."""
    return {n.ip: n.name for n in nodes if n.alive}


def missing(alive: Sequence[Node], expected: int, names: Sequence[str]) -> list[str]:
    """What keeps the cluster from being complete, each as a phrase; [] when complete."""
    have = {n.name for n in alive}
    if names:
        return [name for name in names if name not in have]
    short = expected - len(alive)
    return [f"{short} more node(s)"] if short > 0 else []


def wait_for_nodes(
    expected: int,
    names: Sequence[str] = (),
    timeout_s: float = 900.0,
    *,
    nodes: Callable[[], list[Node]] = snapshot,
    say: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 2.0,
) -> list[Node]:
    """Until `expected` alive nodes (and every one of `names`) have joined: the alive nodes.

    Progress each PROGRESS_EVERY_S; past `timeout_s` a ClusterError naming the missing nodes,
    the ones that joined, and what to check on the missing hosts.
    """
    start = clock()
    last_said = -PROGRESS_EVERY_S
    last_line = ""
    while True:
        alive = [n for n in nodes() if n.alive]
        lacking = missing(alive, expected, names)
        elapsed = clock() - start
        if not lacking:
            say(
                f"{len(alive)}/{expected} nodes joined after {elapsed:.0f} s: "
                + ", ".join(n.describe() for n in alive)
            )
            return alive
        line = f"{len(alive)}/{expected} nodes joined; waiting for {', '.join(lacking)}"
        if elapsed >= timeout_s:
            joined = ", ".join(n.describe() for n in alive) or "none"
            raise ClusterError(
                f"{len(alive)} of {expected} trainer nodes joined the Ray head in "
                f"{elapsed:.0f} s; missing: {', '.join(lacking)} (joined: {joined}). On each "
                "missing host, check that its worker service runs (docker compose --profile "
                "worker ps; its log says why it cannot join: address, token or Ray version), "
                "that it reaches this head's Ray port, and that infrastructure.nnodes / "
                "node_names list the hosts you have (raise infrastructure.node_join_timeout "
                "for slow hosts)"
            )
        if line != last_line or elapsed - last_said >= PROGRESS_EVERY_S:
            say(f"{line} ({elapsed:.0f}/{timeout_s:.0f} s)")
            last_said, last_line = elapsed, line
        sleep(poll_s)


def lost(nodes: Sequence[Node]) -> list[Node]:
    """Nodes that died and have not come back under the same name (a rejoin is a new node)."""
    back = {n.name for n in nodes if n.alive}
    gone: dict[str, Node] = {}
    for n in nodes:
        if not n.alive and n.name not in back:
            gone[n.name] = n
    return sorted(gone.values())


def lost_since(alive_ids: set[str], nodes: Sequence[Node]) -> list[Node]:
    """The lost nodes (see `lost`) among those alive at a start (their NodeIDs): a watch over a
    run ignores what died before it (a pod KubeRay replaced before the job began)."""
    return [n for n in lost(nodes) if n.node_id in alive_ids]


def lost_lines(output: str) -> list[str]:
    """The lost nodes `hvt nodes --lost` printed (`name (ip): reason`), without Ray's own lines."""
    return [
        line.removeprefix(LOST_PREFIX).strip()
        for line in output.splitlines()
        if line.startswith(LOST_PREFIX)
    ]
