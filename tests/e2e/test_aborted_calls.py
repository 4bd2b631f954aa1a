"""End to end: a call the replica aborts at a weight update, through the real chain.

The CPU rollout server's real HTTP API, gate and actor methods (`abort_all_requests`,
`update_weights`, `resume_generation`, as verl's colocate_async calls them at a step boundary)
with a scripted model (tests/helpers/scripted_policy.py), behind real LiteLLM under `hvt
proxy` with this checkout's trajectory logger. A client that behaves like claude-code (it
retries an `overloaded_error`, then continues the conversation) calls each of the four ways
the chain is used: OpenAI chat and Anthropic messages, streamed and not. For each, the test
aborts the call mid-answer, checks what the client got, that the retry waited for the new
weights, and what the trial's trajectory holds: the aborted call marked, and one exact token
chain made of the retry and the next call only, served by the new weight version.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hvt.proxy.discovery import Replica
from hvt.proxy.litellm_config import ProxySettings, write
from hvt.trajectory.paths import HEADER, RECORD_DIR
from tests.e2e.test_proxy_e2e import (
    MASTER_KEY,
    free_port,
    http,
    kill_group,
    proxy_venv,  # noqa: F401  (fixture)
    wait_until,
)
from tests.helpers.scripted_policy import END, ScriptedPolicy
from tests.helpers.timing import scaled
from verl_patch.cpu.server import CpuRolloutServer, serve_in_thread
from verl_patch.trajectory_tokens import TrajectoryStats, from_trial_dir, read_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(scaled(600))]
ROOT = Path(__file__).resolve().parents[2]
MODEL = "vllm_model"
ASK = "fix the parser bug"


@dataclass
class Chain:
    policy: ScriptedPolicy
    server: CpuRolloutServer
    base: str
    trials: Path


@pytest.fixture(scope="module")
def chain(proxy_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("aborts")
    policy = ScriptedPolicy(words=30, delay_s=0.1)
    port = serve_in_thread(policy, MODEL, host="127.0.0.1")
    server = CpuRolloutServer("unused", MODEL, 0, 4096)
    server.policy = policy
    config = tmp / "litellm.yaml"
    write(config, [Replica(0, "127.0.0.1", port)], ProxySettings(MODEL))
    trials = tmp / "trials"
    trials.mkdir()
    proxy_port = free_port()
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # this checkout's logger, whatever checkout the proxy venv was installed from
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    log = (tmp / "proxy.log").open("w")
    proc = subprocess.Popen(
        [str(proxy_venv / "bin" / "hvt"), "proxy", "--litellm-config", str(config),
         "--trials-root", str(trials), "--port", str(proxy_port), "--host", "127.0.0.1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        wait_until(lambda: http("GET", f"{base}/health/liveliness")[0] == 200, 240, "proxy", proc)
        yield Chain(policy, server, base, trials)
    finally:
        kill_group(proc)
        log.close()


# -- a client that behaves like claude-code ------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    anthropic: bool
    stream: bool


ROUTES = [
    Route("chat", anthropic=False, stream=False),
    Route("chat-stream", anthropic=False, stream=True),
    Route("messages", anthropic=True, stream=False),
    Route("messages-stream", anthropic=True, stream=True),
]


@dataclass
class Attempt:
    status: int
    body: bytes
    started: float
    ended: float

    @property
    def refused(self) -> bool:
        return self.status == 529 or b"overloaded_error" in self.body


@dataclass
class Client:
    route: Route
    base: str
    trial: str
    attempts: list[Attempt] = field(default_factory=list)

    def request(self, history: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
        if self.route.anthropic:
            messages: list[dict[str, Any]] = [
                {"role": role, "content": [{"type": "text", "text": text}]}
                for role, text in history
            ]
            body: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 64}
            return "/v1/messages", {**body, "messages": messages, "stream": self.route.stream}
        messages = [{"role": role, "content": text} for role, text in history]
        body = {"model": MODEL, "max_tokens": 64, "messages": messages}
        return "/v1/chat/completions", {**body, "stream": self.route.stream}

    def headers(self) -> dict[str, str]:
        if self.route.anthropic:
            return {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01", HEADER: self.trial}
        return {"Authorization": f"Bearer {MASTER_KEY}", HEADER: self.trial}

    def call(self, history: list[tuple[str, str]]) -> str:
        """One model turn: retried while the proxy answers `overloaded_error` (what claude-code
        does with a 529 or an overloaded error frame); the answer's text."""
        path, body = self.request(history)
        for _ in range(5):
            started = time.monotonic()
            status, raw = http("POST", self.base + path, body, self.headers())
            self.attempts.append(Attempt(status, raw, started, time.monotonic()))
            if not self.attempts[-1].refused:
                assert status == 200, raw
                return answer_text(self.route, raw)
        raise AssertionError(f"still refused after 5 attempts: {raw!r}")

    def conversation(self) -> None:
        first = self.call([("user", ASK)])
        self.call([("user", ASK), ("assistant", first), ("user", "tests pass now")])


def sse(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")
    ]


def answer_text(route: Route, raw: bytes) -> str:
    if not route.stream:
        reply = json.loads(raw)
        if route.anthropic:
            return "".join(b.get("text", "") for b in reply["content"])
        return str(reply["choices"][0]["message"]["content"])
    if route.anthropic:
        return "".join(
            e["delta"].get("text", "") for e in sse(raw) if e.get("type") == "content_block_delta"
        )
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in sse(raw) if c.get("choices")
    )


# -- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_an_aborted_call_is_retried_and_the_trial_trains_one_exact_chain(
    chain: Chain, route: Route
) -> None:
    trial = chain.trials / "step_0003" / f"trial-{route.name}"
    trial.mkdir(parents=True)
    client = Client(route, chain.base, f"step_0003/trial-{route.name}")
    old = chain.policy.weight_version
    new = old + 1
    sampled = chain.policy.sampled
    worker = threading.Thread(target=client.conversation)
    worker.start()

    # the step boundary, as colocate_async runs it: abort mid-answer, update, resume
    wait_until(lambda: chain.policy.sampled >= sampled + 4, 60, "the first answer is under way")
    aborted = asyncio.run(chain.server.abort_all_requests())
    assert aborted["aborted_count"] == 1
    wait_until(lambda: len(client.attempts) >= 1, 60, "the client got the aborted call's answer")
    time.sleep(1.0)  # the client retries at once; the paused replica holds the retry
    assert len(client.attempts) == 1, "a call was answered while the replica was paused"
    chain.server.update_weights({}, new)
    resumed = time.monotonic()
    asyncio.run(chain.server.resume_generation())
    worker.join(scaled(120))
    assert not worker.is_alive()

    # 1. the client: the aborted call was refused as retryable, never answered
    cut, retry, follow_up = client.attempts
    assert cut.refused and not retry.refused and not follow_up.refused
    if route.stream:
        assert cut.status == 200  # the stream had started: an error frame ends it
        events = sse(cut.body)
        if route.anthropic:
            assert b"event: error" in cut.body
            assert events[-1]["error"]["type"] == "overloaded_error"
            assert not {"message_stop", "message_delta"} & {e.get("type") for e in events}
        else:
            assert events[-1]["error"]["type"] == "overloaded_error"
            assert not any(c["choices"][0].get("finish_reason") for c in events if c.get("choices"))
    else:
        assert cut.status == 529
        error = json.loads(cut.body)["error"]
        assert error["type"] == "overloaded_error"
    assert retry.ended > resumed  # the retry was served only after resume_generation

    # 2. the trajectory: the aborted call is marked; every call says which weights served it
    path = trial / RECORD_DIR / "litellm-trajectory.jsonl"
    wait_until(lambda: len(read_records(path)) >= 3, 30, "three records")  # written off-path
    records = sorted(read_records(path), key=lambda r: r["request_time"])
    assert len(records) == 3, [r.get("litellm_call_id") for r in records]
    first, second, third = records
    assert first["aborted"] is True and first["finish_reason"] == "abort"
    assert first["success"] is False and first["failure"]["status_code"] == 529
    partial = first["tokens"]["choices"][0]["token_ids"]
    assert len(partial) >= 3 and first["weight_version"] == old
    for rec in (second, third):
        assert rec["success"] is True and not rec.get("aborted")
        assert rec["weight_version"] == new and rec["weight_version_source"] == "header"
    assert second["request"]["messages"] == first["request"]["messages"]

    # 3. the assembler: one exact chain of the retry and the next call; no aborted token
    stats = TrajectoryStats()
    seq = from_trial_dir(trial / RECORD_DIR, None, stats)
    assert seq is not None and seq.exact and seq.chains == 1 and seq.calls_used == 2
    assert (stats.aborted, stats.aborted_unretried, stats.failed) == (1, 0, 0)
    assert seq.weight_versions == [new]
    trained = [t for t, m in zip(seq.response_ids, seq.response_mask, strict=True) if m]
    words = chain.policy.token_strings(trained)
    assert words and all(w.endswith(f"v{new}") or w == "<1>" for w in words), words
    assert not set(partial) & set(seq.response_ids)


STREAMED = [r for r in ROUTES if r.stream]


@pytest.mark.parametrize("route", STREAMED, ids=[r.name for r in STREAMED])
def test_a_streamed_answer_keeps_its_end_of_turn_token_and_trains_it(
    chain: Chain, route: Route
) -> None:
    """The replica sends the end-of-turn token with empty text, as vLLM sends special tokens;
    LiteLLM's stream drops such a chunk. The record still holds every sampled id, the end of
    the turn included, and the assembled chain trains it (mask 1) instead of taking it from
    the next call's prompt."""
    trial = chain.trials / "step_0004" / f"trial-{route.name}"
    trial.mkdir(parents=True)
    Client(route, chain.base, f"step_0004/trial-{route.name}").conversation()
    path = trial / RECORD_DIR / "litellm-trajectory.jsonl"
    wait_until(lambda: len(read_records(path)) >= 2, 30, "two records")
    records = sorted(read_records(path), key=lambda r: r["request_time"])
    assert len(records) == 2
    for rec in records:
        ids = rec["tokens"]["choices"][0]["token_ids"]
        assert len(ids) == chain.policy.words + 1 and ids[-1] == END, ids
    stats = TrajectoryStats()
    seq = from_trial_dir(trial / RECORD_DIR, None, stats)
    assert seq is not None and seq.exact and seq.chains == 1 and seq.calls_used == 2
    trained = [t for t, m in zip(seq.response_ids, seq.response_mask, strict=True) if m]
    assert trained.count(END) == 2, chain.policy.token_strings(trained)


CLAUDE = "/opt/custom-agent-runtime/claude-code/bin/claude"


def test_claude_code_itself_retries_an_aborted_call_and_finishes(
    chain: Chain, images: dict[str, str]
) -> None:
    """The real claude-code (the agent-runtime image's, with the environment our adapter gives
    it) against the real proxy while the replica aborts its call mid-answer at a weight update:
    claude-code must retry the refused call by itself and finish with the new policy's answer,
    and its trajectory must hold the aborted call marked and never train on it."""
    import docker

    from harbor_patch.agents import proxy_env

    runtime_image = images["agent-runtime"]  # built by `make image` (the session fixture)
    route = "step_0005/trial-claude-code"
    trial = chain.trials / route
    trial.mkdir(parents=True)
    env = proxy_env.agent_env(
        base_url=chain.base, api_key=MASTER_KEY, model=MODEL, route=route, temperature=None
    )
    client = docker.from_env()
    old, new = chain.policy.weight_version, chain.policy.weight_version + 1
    sampled = chain.policy.sampled
    container = client.containers.run(
        runtime_image,
        ["-p", ASK, "--max-turns", "1", "--output-format", "json"],
        entrypoint=[CLAUDE],
        environment={**env, "HOME": "/tmp"},
        network_mode="host",  # the proxy listens on this host's loopback
        detach=True,
    )
    try:
        wait_until(lambda: chain.policy.sampled >= sampled + 4, 120, "claude-code's first call")
        aborted = asyncio.run(chain.server.abort_all_requests())
        assert aborted["aborted_count"] >= 1
        time.sleep(1.0)  # claude-code retries; the paused replica holds the retry
        chain.server.update_weights({}, new)
        asyncio.run(chain.server.resume_generation())
        exit_code = container.wait(timeout=scaled(240))["StatusCode"]
        output = container.logs(stdout=True, stderr=False).decode(errors="replace")
        errors = container.logs(stdout=False, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    assert exit_code == 0, output[-2000:] + errors[-2000:]
    result = json.loads(output.strip().splitlines()[-1])
    assert result.get("is_error") is False, result
    words = str(result.get("result", "")).split()
    assert words and all(w.endswith(f"v{new}") for w in words), words  # the retry's answer

    path = trial / RECORD_DIR / "litellm-trajectory.jsonl"
    wait_until(lambda: any(not r.get("aborted") for r in read_records(path)), 30, "records")
    records = read_records(path)
    cut = [r for r in records if r.get("aborted")]
    assert cut and all(r["weight_version"] == old for r in cut), [
        (r.get("aborted"), r.get("weight_version")) for r in records
    ]
    stats = TrajectoryStats()
    seq = from_trial_dir(trial / RECORD_DIR, None, stats)
    assert seq is not None and seq.exact, stats
    assert stats.aborted == len(cut) and stats.aborted_unretried == 0
    assert seq.weight_versions == [new]
    cut_ids = {t for r in cut for t in r["tokens"]["choices"][0]["token_ids"]}
    assert not cut_ids & set(seq.response_ids)  # nothing of the aborted answer is trained
