"""Several trainer nodes: waiting for them, naming the missing and the lost nodes, and
explaining a failed join."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvt import ray_nodes
from hvt.config.load import check
from hvt.ray_nodes import Node
from hvt.run import node_checks, ray_start, worker
from hvt.run.node_checks import Seen
from tests.conftest import filled_config


def _row(
    name: str | None, ip: str, alive: bool = True, head: bool = False, **extra: Any
) -> dict[str, Any]:
    resources: dict[str, float] = {"GPU": 1.0, f"node:{ip}": 1.0}
    if head:
        resources["node:__internal_head__"] = 1.0
    labels = {"ray.io/node-id": "abc"} | ({ray_nodes.NODE_LABEL: name} if name else {})
    return {
        "NodeID": f"id-{ip}",
        "Alive": alive,
        "NodeManagerAddress": ip,
        "NodeName": ip,
        "Labels": labels,
        "Resources": resources,
        **extra,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_nodes_are_named_by_their_label_and_the_head_comes_first() -> None:
    nodes = ray_nodes.from_rows(
        [
            _row("trainer-1", "10.0.0.2"),
            _row("trainer-0", "10.0.0.1", head=True),
            _row(None, "10.0.0.9"),
        ]
    )
    assert [(n.name, n.head) for n in nodes] == [
        ("trainer-0", True),
        ("10.0.0.9", False),
        ("trainer-1", False),
    ]
    assert nodes[0].describe() == "trainer-0 (head, 10.0.0.1, 1 GPU)"


def test_wait_returns_once_every_named_node_joined_and_says_who_is_missing_meanwhile() -> None:
    clock, said = Clock(), []
    views = iter(
        [[_row("h", "10.0.0.1", head=True)]] * 3
        + [[_row("h", "10.0.0.1", head=True), _row("w1", "10.0.0.2")]]
    )
    alive = ray_nodes.wait_for_nodes(
        2,
        ["h", "w1"],
        60,
        nodes=lambda: ray_nodes.from_rows(next(views)),
        say=said.append,
        clock=clock,
        sleep=clock.sleep,
    )
    assert [n.name for n in alive] == ["h", "w1"]
    assert said[0].startswith("1/2 nodes joined; waiting for w1")
    assert said[-1].startswith("2/2 nodes joined after 6 s: h (head, 10.0.0.1, 1 GPU), w1 (worker")


def test_past_the_limit_the_error_names_the_missing_node_and_what_to_check() -> None:
    clock = Clock()
    with pytest.raises(ray_nodes.ClusterError) as err:
        ray_nodes.wait_for_nodes(
            3,
            ["h", "w1", "w2"],
            10,
            nodes=lambda: ray_nodes.from_rows(
                [_row("h", "10.0.0.1", head=True), _row("w2", "10.0.0.3")]
            ),
            say=lambda _l: None,
            clock=clock,
            sleep=clock.sleep,
        )
    text = str(err.value)
    assert "2 of 3 trainer nodes joined" in text and "missing: w1 (joined: h (head" in text
    assert "node_join_timeout" in text and "worker" in text


def test_without_names_a_count_is_enough_and_a_dead_node_does_not_count() -> None:
    clock = Clock()
    rows = [_row("h", "10.0.0.1", head=True), _row("w1", "10.0.0.2", alive=False)]
    with pytest.raises(ray_nodes.ClusterError, match=r"missing: 1 more node"):
        ray_nodes.wait_for_nodes(
            2,
            (),
            4,
            nodes=lambda: ray_nodes.from_rows(rows),
            say=lambda _l: None,
            clock=clock,
            sleep=clock.sleep,
        )


def test_a_lost_node_is_one_that_died_and_did_not_rejoin_under_its_name() -> None:
    died = "health check failed due to missing too many heartbeats"
    rows = [
        _row("h", "10.0.0.1", head=True),
        _row("w1", "10.0.0.2", alive=False, DeathReasonMessage=died),
        _row("w2", "10.0.0.3", alive=False),
        _row("w2", "10.0.0.4"),  # w2 came back: a new Ray node under the same name
    ]
    (gone,) = ray_nodes.lost(ray_nodes.from_rows(rows))
    assert (gone.name, gone.ip, gone.death) == ("w1", "10.0.0.2", died)


def test_replica_hosts_map_to_alive_node_names() -> None:
    nodes = [Node("h", "10.0.0.1", True, 1, True), Node("w1", "10.0.0.2", False, 1, False)]
    assert ray_nodes.name_of_ip(nodes) == {"10.0.0.1": "h"}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token "
            "is missing or incorrect.",
            "refused this node's token (/run/tok)",
        ),
        (
            "RuntimeError: Version mismatch: The cluster was started with:\n    Ray: 2.60.0\n"
            "This process on node 10.0.0.2 was started with:\n    Ray: 2.59.0",
            "Ray or Python differs from the head's at 10.0.0.1:6379: Version mismatch",
        ),
        (
            "gcs_client.cc:210: Failed to get cluster ID from GCS server: TimedOut: Timed out "
            "while waiting for GCS to become available.",
            "no Ray head answers at 10.0.0.1:6379",
        ),
        (
            "something else\nfailed badly",
            "ray start --address=10.0.0.1:6379 failed: something else failed badly",
        ),
    ],
)
def test_a_failed_join_is_explained_with_its_fix(output: str, expected: str) -> None:
    assert expected in ray_start.explain_join_failure(output, "10.0.0.1:6379", "/run/tok")


def test_head_address_comes_from_node0_ip_or_the_override() -> None:
    assert worker.head_address("10.0.0.1", 6379) == ("10.0.0.1", 6379)
    assert worker.head_address("10.0.0.1", 6379, "head.lan:7000") == ("head.lan", 7000)
    with pytest.raises(worker.JoinError, match=r"infrastructure\.node0_ip"):
        worker.head_address("", 6379)
    with pytest.raises(worker.JoinError, match="not host:port"):
        worker.head_address("", 6379, "head.lan")


def test_every_node_advertises_its_name_address_and_cpu_mode_gpus(
    filled_config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, problems = check(filled_config_file)
    assert cfg is not None, problems
    monkeypatch.setenv("HVT_NODE_NAME", "trainer-1")
    monkeypatch.setenv("HVT_NODE_IP", "10.9.0.3")
    args = ray_start.node_args(cfg, Path("/tmp/ray-x"), cpu=True)
    assert "--labels=hvt-node=trainer-1" in args and "--node-ip-address=10.9.0.3" in args
    assert f"--num-gpus={cfg.inputs.infrastructure.ngpus_per_node}" in args
    monkeypatch.delenv("HVT_NODE_IP")
    assert not any(
        a.startswith(("--node-ip-address", "--num-gpus"))
        for a in ray_start.node_args(cfg, Path("/t"), cpu=False)
    )


@pytest.mark.parametrize(
    ("names", "nnodes", "message"),
    [
        (["a", "b", "c"], 2, "3 name(s) ['a', 'b', 'c'] for nnodes=2"),
        (["a", "a"], 2, "['a'] named more than once"),
        (["bad name"], 1, "node_names"),
    ],
)
def test_node_names_must_match_nnodes_be_unique_and_be_label_values(
    tmp_path: Path, names: list[str], nnodes: int, message: str
) -> None:
    path = tmp_path / "config.yaml"
    data = filled_config(
        **{
            "runtime_info.input.infrastructure.node_names": names,
            "runtime_info.input.infrastructure.nnodes": nnodes,
            "runtime_info.input.infrastructure.ngpus_per_node": 4,
            "runtime_info.input.training.sp_size": 1,
            "runtime_info.input.vllm.gen_tp": 1,
        }
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _, problems = check(path)
    assert any(message in p.render() for p in problems), [p.render() for p in problems]


def _seen_by(state: Path, skew: float = 0.0, unreadable: str = "") -> Callable[[str, str], Seen]:
    def run(node_id: str, marker: str) -> Seen:
        assert Path(marker).parent == state and node_id.startswith("id-")
        if node_id == unreadable:
            return Seen("", "FileNotFoundError: no such file", 100.0, 100.0, 100.2)
        return Seen(Path(marker).read_text(), "", 100.1 + skew, 100.0, 100.2)

    return run


def test_node_checks_pass_on_a_shared_directory_with_clocks_in_step(tmp_path: Path) -> None:
    nodes = ray_nodes.from_rows([_row("h", "10.0.0.1", head=True), _row("w1", "10.0.0.2")])
    results = node_checks.check(nodes, 1, tmp_path, _seen_by(tmp_path))
    assert all(r.ok and not r.warn for r in results), results
    assert [r.name for r in results] == [
        "h: GPUs", "h: shared run directory", "h: clock",
        "w1: GPUs", "w1: shared run directory", "w1: clock",
    ]  # fmt: skip
    assert not list(tmp_path.glob("node-check-*")), "the marker is removed afterwards"


def test_node_checks_name_the_node_without_the_directory_gpus_or_time(tmp_path: Path) -> None:
    nodes = ray_nodes.from_rows([_row("h", "10.0.0.1", head=True), _row("w1", "10.0.0.2")])
    failed = {
        r.name: r.detail
        for r in node_checks.check(nodes, 2, tmp_path, _seen_by(tmp_path, 7.0, "id-10.0.0.2"))
        if not r.ok
    }
    assert "1 GPU(s) in Ray, infrastructure.ngpus_per_node is 2" in failed["w1: GPUs"]
    assert "cannot read the head's marker" in failed["w1: shared run directory"]
    assert "same shared filesystem at the same path" in failed["w1: shared run directory"]
    assert failed["h: clock"].startswith("+7.00 s against the head") and "NTP" in failed["h: clock"]


def test_a_small_skew_warns_and_passes(tmp_path: Path) -> None:
    nodes = ray_nodes.from_rows([_row("h", "10.0.0.1", head=True)])
    (_gpus, _shared, clock) = node_checks.check(nodes, 1, tmp_path, _seen_by(tmp_path, -2.0))
    assert clock.ok and clock.warn and clock.detail.startswith("-2.00 s")


def test_ray_servers_take_fixed_ports_a_firewall_can_name(filled_config_file: Path) -> None:
    cfg, _ = check(filled_config_file)
    assert cfg is not None
    args = ray_start.node_args(cfg, Path("/t"), cpu=False)
    port = cfg.inputs.infrastructure.ray_port
    assert f"--node-manager-port={port + 1}" in args and f"--metrics-export-port={port + 5}" in args
    assert "--dashboard-agent-listen-port=52365" in args and "--max-worker-port=19999" in args


def test_a_service_port_inside_rays_node_ports_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    data = filled_config(**{"runtime_info.input.infrastructure.ray_dashboard_port": 6382})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _, problems = check(path)
    assert any("port 6382 is one of Ray's node ports 6380-6384" in p.render() for p in problems), [
        p.render() for p in problems
    ]


def test_the_lost_nodes_are_read_without_rays_own_lines() -> None:
    output = (
        "\x1b[33m(raylet)\x1b[0m The node with node id: f268 and address: 172.21.0.6 has been "
        "marked dead because the detector has missed too many heartbeats from it.\n"
        f"{ray_nodes.LOST_PREFIX}trainer-1 (172.21.0.6): health check failed\n"
    )
    assert ray_nodes.lost_lines(output) == ["trainer-1 (172.21.0.6): health check failed"]


def test_hvt_nodes_prefers_the_token_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KubeRay gives every Ray container RAY_AUTH_TOKEN; a run token file left in the shared
    run directory (an earlier run on hosts) must not override it. Without one, the file."""
    import os
    from unittest import mock

    import ray

    from hvt.run import nodes_cli, ray_auth

    state = tmp_path / "run"
    ray_auth.settings(state)  # the run's token file exists
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(nodes_cli.worker, "port_answers", lambda _host, _port: "")
    monkeypatch.setattr(ray, "init", lambda **_kw: seen.append(dict(os.environ)))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    with mock.patch.dict(os.environ, {**clean, "RAY_AUTH_TOKEN": "from-kuberay"}, clear=True):
        nodes_cli._connect("127.0.0.1:6379", state)
    with mock.patch.dict(os.environ, clean, clear=True):
        nodes_cli._connect("127.0.0.1:6379", state)
    assert "RAY_AUTH_TOKEN_PATH" not in seen[0]
    assert seen[1]["RAY_AUTH_TOKEN_PATH"] == str(ray_auth.token_path(state))
    assert seen[1]["RAY_AUTH_MODE"] == "token"


def test_a_watch_names_only_the_nodes_that_die_after_it_started() -> None:
    """`hvt nodes --lost --watch` beside a run: a node dead before it began (a replaced pod) is
    not this run's loss; one of the nodes alive at its start that dies is."""
    old = ray_nodes.Node("pod-a", "10.0.0.5", False, 8.0, False, "replaced", "id-old")
    head = ray_nodes.Node("gpu1", "10.0.0.10", True, 8.0, True, "", "id-head")
    w = ray_nodes.Node("gpu2", "10.0.0.11", True, 8.0, False, "", "id-w")
    watched = {n.node_id for n in (old, head, w) if n.alive}
    assert ray_nodes.lost_since(watched, [old, head, w]) == []
    died = ray_nodes.Node("gpu2", "10.0.0.11", False, 8.0, False, "missed heartbeats", "id-w")
    assert ray_nodes.lost_since(watched, [old, head, died]) == [died]
