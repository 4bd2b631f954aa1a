"""Replica discovery: actor names, server addresses, waiting for the full set, timeouts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hvt.proxy import discovery
from hvt.proxy.discovery import DiscoveryError, NamedActor, Replica


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (("10.0.0.5", 8000), ("10.0.0.5", 8000)),
        (["10.0.0.5", "8000"], ("10.0.0.5", 8000)),
        ("10.0.0.5:8000", ("10.0.0.5", 8000)),
        ("[fd00::5]:8000", ("fd00::5", 8000)),
        (("[fd00::5]", 8000), ("fd00::5", 8000)),
    ],
)
def test_parse_server_address_accepts_verl_shapes(value: object, expected: tuple[str, int]) -> None:
    assert discovery.parse_server_address(value) == expected


@pytest.mark.parametrize("value", ["10.0.0.5", "fd00::5:8000", "host:http", ("h", 0), None, ":80"])
def test_parse_server_address_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError):
        discovery.parse_server_address(value)


def test_replica_api_base_brackets_ipv6() -> None:
    assert Replica(0, "10.0.0.5", 8000).api_base == "http://10.0.0.5:8000/v1"
    assert Replica(0, "fd00::5", 8000).api_base == "http://[fd00::5]:8000/v1"


def test_only_node0_http_servers_of_rollout_replicas_count() -> None:
    names = [
        "vllm_server_0_0",
        "vllm_server_1_0",
        "vllm_server_1_1",  # second node of replica 1: no own HTTP endpoint
        "vllm_server_reward_0_0",
        "vllm_server_teacher_0_0",
        "vllm_server_decode_0_0",
        "vllm_server_2_0_suffix",
        "sglang_server_0_0",
        "harbor_progress_tracker_x",
    ]
    found = discovery.replica_actors(NamedActor(n, "anon") for n in names)
    assert sorted(found) == [0, 1]
    assert found[1].name == "vllm_server_1_0"


def test_expected_replicas_from_gpus_and_tp() -> None:
    assert discovery.expected_replicas(1, 8, 4) == 2
    assert discovery.expected_replicas(2, 8, 8) == 2
    with pytest.raises(DiscoveryError, match="gen_tp=3"):
        discovery.expected_replicas(1, 8, 3)


class ScriptedSource:
    """Snapshots in order (the last one repeats); a stand-in for Ray's actor listing."""

    def __init__(self, snapshots: Sequence[tuple[list[Replica], dict[int, str]]]) -> None:
        self.snapshots = list(snapshots)
        self.calls = 0

    def snapshot(self) -> tuple[list[Replica], dict[int, str]]:
        snap = self.snapshots[min(self.calls, len(self.snapshots) - 1)]
        self.calls += 1
        return snap


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


R0 = Replica(0, "127.0.0.1", 9000, "vllm_server_0_0")
R1 = Replica(1, "127.0.0.1", 9001, "vllm_server_1_0")


def test_waits_until_every_expected_replica_answers() -> None:
    source = ScriptedSource(
        [
            ([], {}),
            ([R0], {1: "AssertionError: http server is not launched"}),
            ([R0], {}),
            ([R0, R1], {}),
        ]
    )
    clock = FakeClock()
    seen: list[int] = []
    got = discovery.wait_for_replicas(
        source,
        2,
        timeout_s=60,
        poll_s=5,
        progress=lambda ready, waiting, elapsed: seen.append(len(ready)),
        clock=clock,
        sleep=clock.sleep,
    )
    assert got == [R0, R1]
    assert seen == [0, 1, 1, 2]  # never returned the partial set
    assert clock.sleeps == [5, 5, 5]


def test_timeout_names_missing_replicas_and_never_returns_partial() -> None:
    source = ScriptedSource([([R0], {1: "AssertionError: http server is not launched"})])
    clock = FakeClock()
    with pytest.raises(DiscoveryError) as err:
        discovery.wait_for_replicas(
            source, 2, timeout_s=20, poll_s=5, clock=clock, sleep=clock.sleep
        )
    text = str(err.value)
    assert "1/2 vLLM replicas ready" in text
    assert "vllm_server_1_0: AssertionError: http server is not launched" in text
    assert "--allow-partial" in text
    assert clock.now == pytest.approx(20)


def test_timeout_with_allow_partial_returns_what_answers() -> None:
    source = ScriptedSource([([R1], {})])
    clock = FakeClock()
    got = discovery.wait_for_replicas(
        source, 2, timeout_s=10, poll_s=5, allow_partial=True, clock=clock, sleep=clock.sleep
    )
    assert got == [R1]


def test_allow_partial_still_fails_with_no_replica_at_all() -> None:
    source = ScriptedSource([([], {})])
    clock = FakeClock()
    with pytest.raises(DiscoveryError, match="not registered in Ray"):
        discovery.wait_for_replicas(
            source, 1, timeout_s=10, poll_s=5, allow_partial=True, clock=clock, sleep=clock.sleep
        )


def test_expected_must_be_positive() -> None:
    with pytest.raises(DiscoveryError):
        discovery.wait_for_replicas(ScriptedSource([([], {})]), 0)


class FlakySource(ScriptedSource):
    """Ray is not up for the first polls (the trainer starts after discovery)."""

    def __init__(self, down_polls: int, snapshots: Sequence[tuple[list[Replica], dict[int, str]]]):
        super().__init__(snapshots)
        self.down_polls = down_polls

    def snapshot(self) -> tuple[list[Replica], dict[int, str]]:
        if self.down_polls > 0:
            self.down_polls -= 1
            raise discovery.RayUnavailable("Ray GCS at 127.0.0.1:6379 is not reachable")
        return super().snapshot()


def test_waits_for_ray_itself_to_come_up() -> None:
    clock = FakeClock()
    got = discovery.wait_for_replicas(
        FlakySource(3, [([R0], {})]), 1, timeout_s=60, poll_s=5, clock=clock, sleep=clock.sleep
    )
    assert got == [R0]
    assert clock.now == pytest.approx(15)


def test_ray_never_up_times_out_with_the_reason() -> None:
    clock = FakeClock()
    with pytest.raises(DiscoveryError, match="not reachable"):
        discovery.wait_for_replicas(
            FlakySource(99, [([R0], {})]), 1, timeout_s=10, poll_s=5, clock=clock, sleep=clock.sleep
        )
