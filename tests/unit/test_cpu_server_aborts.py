"""The CPU rollout server's abort, sleep and resume over its real HTTP API (verl_patch.cpu.server):
what vLLM does at a colocate_async step boundary, and the weight version on every answer.

The model is scripted (tests/helpers/scripted_policy.py); the gate, the sampling loop, the
HTTP layer and the server actor's methods are the server's own code.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.scripted_policy import END, ScriptedPolicy
from tests.helpers.timing import scaled
from verl_patch.cpu.server import WEIGHT_VERSION_HEADER, CpuRolloutServer, serve_in_thread

MODEL = "vllm_model"


class Served:
    def __init__(self, words: int = 40, delay_s: float = 0.05) -> None:
        self.policy = ScriptedPolicy(words=words, delay_s=delay_s)
        self.port = serve_in_thread(self.policy, MODEL, host="127.0.0.1")
        self.server = CpuRolloutServer("unused", MODEL, 0, 4096)
        self.server.policy = self.policy

    def post(self, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=scaled(60)) as resp:
            return {k.lower(): v for k, v in resp.headers.items()}, resp.read()


@pytest.fixture
def served() -> Iterator[Served]:
    yield Served()


def ask(stream: bool = False) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "fix the bug"}],
        "max_tokens": 64,
        "return_token_ids": True,
        "logprobs": True,
        "stream": stream,
    }


def in_background(served: Served, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["headers"], out["body"] = served.post(body)
        out["done_at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + scaled(20)
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_abort_ends_the_call_in_flight_with_its_partial_tokens(served: Served) -> None:
    thread, out = in_background(served, ask())
    wait_for(lambda: served.policy.sampled >= 3, "sampling started")
    result = asyncio.run(served.server.abort_all_requests())
    thread.join(scaled(20))
    assert result["aborted_count"] == 1
    body = json.loads(out["body"])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "abort"
    assert 3 <= len(choice["token_ids"]) < 40 and END not in choice["token_ids"]
    assert len(choice["logprobs"]["content"]) == len(choice["token_ids"])
    assert out["headers"][WEIGHT_VERSION_HEADER] == "0" and body["weight_version"] == 0


def test_a_call_made_while_asleep_waits_for_the_new_weights(served: Served) -> None:
    first, _ = in_background(served, ask())
    wait_for(lambda: served.policy.sampled >= 1, "sampling started")
    asyncio.run(served.server.abort_all_requests())  # also closes the gate, as vLLM's pause
    first.join(scaled(20))
    waiting, out = in_background(served, ask(stream=True))
    time.sleep(0.5)
    assert "body" not in out, "a request was served while the replica was paused"
    served.server.update_weights({}, 3)
    assert "body" not in out, "a request was served before resume_generation"
    resumed_at = time.monotonic()
    asyncio.run(served.server.resume_generation())
    waiting.join(scaled(30))
    assert out["done_at"] >= resumed_at
    assert out["headers"][WEIGHT_VERSION_HEADER] == "3"
    chunks = [
        json.loads(line[6:])
        for line in out["body"].decode().splitlines()
        if line.startswith("data: {")
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    ids = [t for c in chunks for t in c["choices"][0].get("token_ids") or []]
    assert ids[-1] == END and len(ids) == 41
    assert all(c["weight_version"] == 3 for c in chunks)


def test_a_streamed_call_aborted_mid_answer_ends_with_finish_reason_abort(
    served: Served,
) -> None:
    thread, out = in_background(served, ask(stream=True))
    wait_for(lambda: served.policy.sampled >= 2, "sampling started")
    asyncio.run(served.server.abort_all_requests())
    thread.join(scaled(20))
    chunks = [
        json.loads(line[6:])
        for line in out["body"].decode().splitlines()
        if line.startswith("data: {")
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "abort"
    assert out["body"].decode().rstrip().endswith("data: [DONE]")
