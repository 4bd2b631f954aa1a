"""Aborted calls in the proxy's trajectory logger (hvt.trajectory.aborts, hvt.trajectory.logger):
recognised in LiteLLM's objects, refused to the client as a retryable error, recorded as
aborted; and the weight version of every record."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from hvt.trajectory import aborts
from hvt.trajectory import record as trajectory_record

FILE = Path("proxy") / "litellm-trajectory.jsonl"
HEADERS = {"x-harbor-trial-dir": "step_0001/trial-a"}
BODY = {"model": "vllm_model", "messages": [{"role": "user", "content": "fix it"}]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "trials"
    (r / "step_0001" / "trial-a").mkdir(parents=True)
    return r


def kwargs(body: dict[str, Any], call_id: str = "call-1") -> dict[str, Any]:
    return {
        "call_type": "acompletion",
        "model": "vllm_model",
        "litellm_call_id": call_id,
        "stream": body.get("stream", False),
        "litellm_params": {
            "api_base": "http://10.0.0.5:8000/v1",
            "proxy_server_request": {"headers": HEADERS, "body": body},
        },
    }


def response(finish: str, native: str | None = None, version: int | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": finish,
        "message": {"role": "assistant", "content": "half an ans"},
        "logprobs": {"content": [{"token": "x", "logprob": -0.5}] * 2},
        "provider_specific_fields": {"token_ids": [11, 12]},
    }
    if native is not None:
        choice["provider_specific_fields"]["native_finish_reason"] = native
    out: dict[str, Any] = {"choices": [choice], "prompt_token_ids": [1, 2, 3]}
    if version is not None:
        out["weight_version"] = version
    return out


def read(root: Path) -> list[dict[str, Any]]:
    path = root / "step_0001" / "trial-a" / FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_abort_is_recognised_however_litellm_carries_it() -> None:
    assert aborts.response_aborted(response("stop", native="abort"))  # LiteLLM's default map
    assert aborts.response_aborted(response("finish_reason_unspecified"))  # after registration
    assert aborts.response_aborted(response("abort"))  # straight from vLLM
    assert not aborts.response_aborted(response("stop"))
    assert not aborts.response_aborted(response("length", native="length"))
    assert not aborts.response_aborted({"choices": None})
    assert aborts.stream_aborted([{"choices": []}, {"choices": [{"finish_reason": "abort"}]}])
    assert not aborts.stream_aborted(None)


def test_litellm_learns_abort_and_keeps_it_through_its_double_mapping() -> None:
    pytest.importorskip("litellm")
    from litellm.litellm_core_utils import core_helpers

    assert aborts.register_abort_finish_reason()
    once = core_helpers.map_finish_reason("abort")
    assert once == aborts.MARK and core_helpers.map_finish_reason(once) == aborts.MARK
    assert core_helpers.map_finish_reason("stop") == "stop"


def test_the_client_error_is_anthropic_overloaded_and_retryable() -> None:
    err = aborts.AbortedCall()
    assert err.status_code == 529 and err.type == "overloaded_error"
    assert "retry" in err.message and str(err) == err.message


def test_weight_version_from_the_provider_header_else_the_body_else_null() -> None:
    class Answer:
        def __init__(self) -> None:
            self._hidden_params = {"additional_headers": {"llm_provider-x-hvt-weight-version": "4"}}

    assert trajectory_record.weight_version({}, Answer()) == (4, "header")
    slo = {"standard_logging_object": {"hidden_params": {"additional_headers": {
        "llm_provider-X-HVT-Weight-Version": "2"}}}}  # fmt: skip
    assert trajectory_record.weight_version(slo, None) == (2, "header")
    assert trajectory_record.weight_version({}, response("stop", version=7)) == (7, "body")
    assert trajectory_record.weight_version({}, response("stop")) == (None, "unavailable")


def test_logger_refuses_an_aborted_answer_and_records_it_as_aborted(root: Path) -> None:
    pytest.importorskip("litellm.integrations.custom_logger")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from hvt.trajectory.logger import TrajectoryLogger

    logger = TrajectoryLogger(root)
    start = dt.datetime(2026, 12, 1, 12, 0, 0)

    async def scenario() -> None:
        # Anthropic route: the deployment hook sees the OpenAI answer, the success hook the
        # adapter's `end_turn` dict: the call id links them
        await logger.async_post_call_success_deployment_hook(
            {"litellm_call_id": "c1"}, response("stop", native="abort"), None
        )
        with pytest.raises(aborts.AbortedCall):
            await logger.async_post_call_success_hook(
                {"litellm_call_id": "c1"}, None, {"type": "message", "stop_reason": "end_turn"}
            )
        # OpenAI route: the answer itself says so
        with pytest.raises(aborts.AbortedCall):
            await logger.async_post_call_success_hook(
                {"litellm_call_id": "c2"}, None, response(aborts.MARK)
            )
        # a finished answer passes untouched (None: LiteLLM keeps its response)
        assert (
            await logger.async_post_call_success_hook(
                {"litellm_call_id": "c3"}, None, response("stop")
            )
            is None
        )
        await logger.async_log_success_event(
            kwargs(BODY, "c1"), response("stop", native="abort", version=3), start, start
        )
        await logger.async_log_success_event(
            kwargs(BODY, "c3"), response("stop", version=4), start, start
        )

    asyncio.run(scenario())
    logger.close()
    by_id = {r["litellm_call_id"]: r for r in read(root)}
    aborted, finished = by_id["c1"], by_id["c3"]
    assert aborted["aborted"] is True and aborted["finish_reason"] == "abort"
    assert aborted["success"] is False and aborted["failure"]["status_code"] == 529
    assert aborted["tokens"]["choices"][0]["token_ids"] == [11, 12]  # kept for inspection
    assert aborted["weight_version"] == 3
    assert finished["success"] is True and "aborted" not in finished
    assert finished["weight_version"] == 4 and finished["weight_version_source"] == "body"


class Chunk:
    def __init__(self, data: dict[str, Any], version: int = 5) -> None:
        self.data = data
        self.choices = data["choices"]
        self._hidden_params = {
            "api_base": "http://10.0.0.5:8000/v1/chat/completions",
            "additional_headers": {"llm_provider-x-hvt-weight-version": str(version)},
        }

    def model_dump(self) -> dict[str, Any]:
        return self.data


class AnthropicStream:
    """What the Anthropic route's iterator hook gets: bytes out, OpenAI chunks inside."""

    def __init__(self, finish: str) -> None:
        self.chunks: list[Chunk] = []
        self.plan: list[tuple[Chunk | None, bytes]] = [
            (Chunk({"prompt_token_ids": [1, 2], "choices": []}), b"message_start"),
            (Chunk({"choices": [{"index": 0, "token_ids": [7], "finish_reason": None}]}), b"d1"),
            (Chunk({"choices": [{"index": 0, "token_ids": [8], "finish_reason": None}]}), b"d2"),
            (Chunk({"choices": [{"index": 0, "finish_reason": finish}]}), b"block_stop"),
            (None, b"message_stop"),
        ]

    def __aiter__(self) -> AnthropicStream:
        return self

    async def __anext__(self) -> bytes:
        if not self.plan:
            raise StopAsyncIteration
        chunk, out = self.plan.pop(0)
        if chunk is not None:
            self.chunks.append(chunk)
        return out


def test_an_aborted_stream_ends_in_the_error_and_leaves_an_aborted_record(root: Path) -> None:
    pytest.importorskip("litellm.integrations.custom_logger")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from hvt.trajectory.logger import TrajectoryLogger

    logger = TrajectoryLogger(root)
    body = {**BODY, "stream": True}
    request_data = {
        "litellm_call_id": "s1",
        "model": "claude-sonnet-4-5",
        "proxy_server_request": {
            "url": "http://proxy/v1/messages",
            "headers": HEADERS,
            "body": body,
        },
    }

    async def scenario() -> tuple[list[bytes], BaseException | None]:
        got: list[bytes] = []
        try:
            async for item in logger.async_post_call_streaming_iterator_hook(
                None, AnthropicStream(aborts.MARK), request_data
            ):
                got.append(item)
        except aborts.AbortedCall as exc:
            return got, exc
        return got, None

    got, error = asyncio.run(scenario())
    logger.close()
    assert got == [b"message_start", b"d1", b"d2"]  # no block stop, no message stop
    assert isinstance(error, aborts.AbortedCall)
    (record,) = read(root)
    assert record["aborted"] is True and record["litellm_call_id"] == "s1"
    assert record["call_type"] == "anthropic_messages" and record["request"]["stream"] is True
    assert record["tokens"]["choices"][0]["token_ids"] == [7, 8]
    assert record["weight_version"] == 5 and record["weight_version_source"] == "header"
    assert record["deployment"]["api_base"] == "http://10.0.0.5:8000/v1"


def test_a_finished_stream_passes_whole(root: Path) -> None:
    pytest.importorskip("litellm.integrations.custom_logger")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from hvt.trajectory.logger import TrajectoryLogger

    logger = TrajectoryLogger(root)

    async def scenario() -> list[bytes]:
        return [
            item
            async for item in logger.async_post_call_streaming_iterator_hook(
                None, AnthropicStream("stop"), {"litellm_call_id": "s2"}
            )
        ]

    assert asyncio.run(scenario())[-2:] == [b"block_stop", b"message_stop"]
    logger.close()
    assert read(root) == []  # its record comes with LiteLLM's success event
