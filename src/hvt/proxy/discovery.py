"""Find verl's vLLM replicas in Ray and wait until all expected replicas serve HTTP.

verl 0.9.1 names each replica's HTTP server actor `vllm_server_{replica}_{node}` (node 0 serves
the replica's OpenAI endpoint). The actors are named but not detached and live in the trainer's
anonymous namespace, so they are listed across all namespaces. `get_server_address()` returns
`(ip, port)` (asserting until the server is launched), or "ip:port" in other builds.

Upstream wrote the LiteLLM config as soon as `vllm_server_0` showed up and left the other replicas
idle; `wait_for_replicas` returns only when every expected replica answers, and raises otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hvt import ray_nodes

ACTOR_NAME = re.compile(r"^vllm_server_(\d+)_0$")
DEFAULT_TIMEOUT_S = 30 * 60.0


class DiscoveryError(RuntimeError):
    """Replicas could not be found or reached; the message names what is missing and a fix."""


class RayUnavailable(DiscoveryError):
    """The Ray cluster is not (yet) reachable; discovery keeps waiting for it."""


@dataclass(frozen=True, order=True)
class Replica:
    index: int
    host: str
    port: int
    actor: str = ""
    namespace: str = ""
    node: str = ""  # the trainer node it runs on (hvt.ray_nodes: hvt-node label), if known

    @property
    def where(self) -> str:
        """`<index>=<api_base>`, and its node where known: what discovery's lines print."""
        return f"{self.index}={self.api_base}" + (f" on {self.node}" if self.node else "")

    @property
    def api_base(self) -> str:
        host = f"[{self.host}]" if _is_ipv6(self.host) else self.host
        return f"http://{host}:{self.port}/v1"


@dataclass(frozen=True)
class NamedActor:
    name: str
    namespace: str


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def parse_server_address(value: Any) -> tuple[str, int]:
    """Accept `(ip, port)`, `[ip, port]`, "ip:port" or "[v6]:port"; raise ValueError otherwise."""
    if isinstance(value, list | tuple) and len(value) == 2:
        host, port = str(value[0]).strip("[]"), value[1]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if not rest.startswith(":"):
                raise ValueError(f"server address {value!r} has no port")
            port = rest[1:]
        else:
            host, sep, port = text.rpartition(":")
            if not sep or ":" in host:
                raise ValueError(f"server address {value!r} is not host:port")
    else:
        raise ValueError(f"server address {value!r} is neither (ip, port) nor 'ip:port'")
    try:
        port_no = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"server address {value!r} has a non-numeric port") from None
    if not host or not 0 < port_no < 65536:
        raise ValueError(f"server address {value!r} has an empty host or a port out of range")
    return host, port_no


def replica_actors(actors: Iterable[NamedActor]) -> dict[int, NamedActor]:
    """The HTTP server actor of each replica, by replica index (reward/teacher/decode excluded)."""
    found: dict[int, NamedActor] = {}
    for actor in actors:
        match = ACTOR_NAME.match(actor.name)
        if match:
            found.setdefault(int(match.group(1)), actor)
    return found


def expected_replicas(nnodes: int, ngpus_per_node: int, gen_tp: int) -> int:
    """Rollout GPUs / tensor parallel size; an error when they do not divide."""
    gpus = nnodes * ngpus_per_node
    if gen_tp <= 0 or gpus % gen_tp:
        raise DiscoveryError(
            f"vllm.gen_tp={gen_tp} does not divide the {gpus} rollout GPUs "
            f"(infrastructure.nnodes={nnodes} x ngpus_per_node={ngpus_per_node}); "
            "pick a gen_tp that divides both the GPU count and num_key_value_heads"
        )
    return gpus // gen_tp


class ReplicaSource(Protocol):
    def snapshot(self) -> tuple[list[Replica], dict[int, str]]:
        """Ready replicas, and for named-but-not-ready ones the reason, by replica index."""
        ...


class RaySource:
    """Lists the replica actors of a running Ray cluster and asks each for its address."""

    def __init__(self, address: str | None = None, call_timeout_s: float = 10.0) -> None:
        self.address = address
        self.call_timeout_s = call_timeout_s
        self._connected = False

    def _connect(self) -> Any:
        import ray

        if not self._connected:
            self._probe_gcs()
            try:
                ray.init(
                    address=self.address or "auto",
                    ignore_reinit_error=True,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    include_dashboard=False,
                )
            except (ConnectionError, RuntimeError) as exc:
                raise RayUnavailable(
                    f"cannot connect to the Ray cluster at {self.address or 'auto'}: {exc} "
                    "(start the trainer first, or set RAY_ADDRESS / --ray-address)"
                ) from exc
            self._connected = True
        return ray

    def _probe_gcs(self) -> None:
        """ray.init blocks for minutes on a dead address: check the GCS port first."""
        address = (self.address or "").removeprefix("ray://")
        if not address or address == "auto" or ":" not in address:
            return
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
                pass
        except (OSError, ValueError) as exc:
            raise RayUnavailable(
                f"Ray GCS at {address} is not reachable ({exc}); is the trainer's Ray head up? "
                "(set RAY_ADDRESS or --ray-address to its host:port)"
            ) from None

    def snapshot(self) -> tuple[list[Replica], dict[int, str]]:
        ray = self._connect()
        listed = ray.util.list_named_actors(all_namespaces=True)
        actors = replica_actors(
            NamedActor(str(a["name"]), str(a.get("namespace") or "")) for a in listed
        )
        ready: list[Replica] = []
        waiting: dict[int, str] = {}
        refs: dict[int, Any] = {}
        for index, actor in actors.items():
            try:
                handle = ray.get_actor(actor.name, namespace=actor.namespace or None)
                refs[index] = handle.get_server_address.remote()
            except Exception as exc:  # the actor may be dying or not yet created
                waiting[index] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        for index, ref in refs.items():
            actor = actors[index]
            try:
                host, port = parse_server_address(ray.get(ref, timeout=self.call_timeout_s))
            except ValueError as exc:
                waiting[index] = str(exc)
                continue
            except Exception as exc:  # server not launched yet (verl asserts), timeouts
                waiting[index] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:200]
                continue
            ready.append(Replica(index, host, port, actor.name, actor.namespace))
        if ready:
            nodes = ray_nodes.name_of_ip(ray_nodes.snapshot())
            ready = [dataclasses.replace(r, node=nodes.get(r.host, "")) for r in ready]
        return sorted(ready), waiting

    def close(self) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False


def wait_for_replicas(
    source: ReplicaSource,
    expected: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 5.0,
    progress: Callable[[Sequence[Replica], dict[int, str], float], None] | None = None,
    allow_partial: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Replica]:
    """Poll until replicas 0..expected-1 all answer; then return every ready replica.

    On timeout raise DiscoveryError naming the missing replicas, unless `allow_partial` is set
    and at least one replica answers (then return what answers).
    """
    if expected < 1:
        raise DiscoveryError(f"expected replica count must be >= 1, got {expected}")
    start = clock()
    unavailable = ""
    while True:
        try:
            ready, waiting = source.snapshot()
            unavailable = ""
        except RayUnavailable as exc:
            ready, waiting, unavailable = [], {i: str(exc) for i in range(expected)}, str(exc)
        elapsed = clock() - start
        if progress is not None:
            progress(ready, waiting, elapsed)
        indices = {r.index for r in ready}
        if all(i in indices for i in range(expected)):
            return ready
        if elapsed >= timeout_s:
            missing = [i for i in range(expected) if i not in indices]
            if allow_partial and ready:
                return ready
            if unavailable:
                raise DiscoveryError(f"no vLLM replicas after {elapsed:.0f} s: {unavailable}")
            detail = "; ".join(
                f"vllm_server_{i}_0: {waiting.get(i, 'not registered in Ray')}" for i in missing
            )
            raise DiscoveryError(
                f"{len(indices & set(range(expected)))}/{expected} vLLM replicas ready after "
                f"{elapsed:.0f} s; missing {detail}. Check the trainer log for vLLM start-up "
                "errors, raise --timeout for slow warm-ups, or pass --allow-partial to serve "
                "the replicas that answer"
            )
        sleep(max(0.05, min(poll_s, timeout_s - elapsed)))
