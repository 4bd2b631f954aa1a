"""Trajectory logger: route validation, redaction, record shape, whole-line concurrent appends."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hvt.trajectory import paths as trajectory_paths
from hvt.trajectory import record as trajectory_record
from hvt.trajectory.paths import RouteRefused
from hvt.trajectory.writer import TrajectoryWriter, append_line, encode_line

FILE = Path("proxy") / "litellm-trajectory.jsonl"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "trials"
    (r / "step_0001" / "trial-a").mkdir(parents=True)
    (r / "step_0001" / "trial-b" / "proxy").mkdir(parents=True)
    return r


def write_one(root: Path, header: str, record: dict[str, Any] | None = None) -> Path:
    parts = trajectory_paths.trial_parts(root, header)
    fd = trajectory_paths.open_for_append(root, parts)
    try:
        append_line(fd, encode_line(record or {"ok": True}))
    finally:
        os.close(fd)
    return root.joinpath(*parts) / FILE


# --- routes ---------------------------------------------------------------------------------


def test_relative_and_absolute_routes_land_in_the_trial_proxy_dir(root: Path) -> None:
    """proxy/, never agent/: Harbor shares agent/ with the sandbox, whose code must not be able
    to write or replace its own trajectory."""
    p1 = write_one(root, "step_0001/trial-a")
    p2 = write_one(root, str(root / "step_0001" / "trial-a"))
    p3 = write_one(root, "./step_0001/trial-b/")
    assert p1 == p2 == root / "step_0001" / "trial-a" / FILE
    assert p1.read_text().count("\n") == 2
    assert p3 == root / "step_0001" / "trial-b" / FILE


def test_absolute_route_through_a_symlinked_root_spelling(tmp_path: Path, root: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    # the operator may configure the root through a symlink; both spellings are inside
    assert write_one(alias, str(root / "step_0001" / "trial-a")).exists()
    assert write_one(alias, str(alias / "step_0001" / "trial-a")).exists()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../outside", "'..'"),
        ("step_0001/../../etc", "'..'"),
        ("step_0001/trial-a/..", "'..'"),
        ("/etc", "outside the trials root"),
        ("/tmp", "outside the trials root"),
        (".", "trials root itself"),
        ("step\x00x", "NUL"),
        ("a" * 5000, "too long"),
    ],
)
def test_lexically_bad_routes_are_refused(root: Path, header: str, reason: str) -> None:
    with pytest.raises(RouteRefused, match=reason):
        trajectory_paths.trial_parts(root, header)


def test_absolute_route_with_root_as_prefix_string_is_outside(root: Path) -> None:
    sibling = root.parent / (root.name + "-evil") / "step" / "t"
    sibling.mkdir(parents=True)
    with pytest.raises(RouteRefused, match="outside"):
        trajectory_paths.trial_parts(root, str(sibling))


def test_missing_trial_dir_is_refused_not_created(root: Path) -> None:
    with pytest.raises(RouteRefused, match="does not exist"):
        write_one(root, "step_0002/new-trial")
    assert not (root / "step_0002").exists()


def test_symlinked_trial_dir_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "step_0001" / "escape").symlink_to(outside)
    with pytest.raises(RouteRefused, match="symlink"):
        write_one(root, "step_0001/escape")
    assert list(outside.iterdir()) == []


def test_symlinked_step_dir_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "t").mkdir(parents=True)
    (root / "step_0009").symlink_to(outside)
    with pytest.raises(RouteRefused, match="symlink"):
        write_one(root, "step_0009/t")
    assert not (outside / "t" / "proxy").exists()


def test_symlinked_record_dir_and_file_are_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "step_0001" / "trial-a" / "proxy").symlink_to(outside)
    with pytest.raises(RouteRefused, match="symlink"):
        write_one(root, "step_0001/trial-a")
    target = tmp_path / "victim.txt"
    target.write_text("keep\n")
    (root / "step_0001" / "trial-b" / FILE).symlink_to(target)
    with pytest.raises(RouteRefused, match="symlink"):
        write_one(root, "step_0001/trial-b")
    assert target.read_text() == "keep\n"


def test_writer_refuses_and_counts_without_raising(root: Path) -> None:
    writer = TrajectoryWriter(root)
    try:
        assert writer.submit("../x", {"a": 1}) is False
        assert writer.submit("step_0001/missing", {"a": 1}) is True  # refused on the thread
        assert writer.submit("step_0001/trial-a", {"a": 1}) is True
        assert writer.flush(10)
        assert writer.stats == {"refused": 2, "written": 1}
    finally:
        writer.close()


# --- concurrency ----------------------------------------------------------------------------


def _hammer(root: str, worker: int, count: int) -> None:
    writer = TrajectoryWriter(Path(root))
    blob = "x" * 20000  # lines far larger than PIPE_BUF
    for i in range(count):
        writer.submit("step_0001/trial-a", {"worker": worker, "i": i, "blob": blob})
    writer.close(60)


def test_concurrent_appends_from_threads_and_processes_stay_whole_lines(root: Path) -> None:
    procs = [
        multiprocessing.get_context("spawn").Process(target=_hammer, args=(str(root), w, 150))
        for w in range(3)
    ]
    for p in procs:
        p.start()
    writer = TrajectoryWriter(root)
    threads = [
        threading.Thread(
            target=lambda w=w: [
                writer.submit("step_0001/trial-a", {"worker": w, "i": i, "blob": "y" * 9000})
                for i in range(150)
            ]
        )
        for w in range(10, 14)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close(60)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = (root / "step_0001" / "trial-a" / FILE).read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line is one whole object
    seen = {(r["worker"], r["i"]) for r in records}
    assert len(records) == len(seen) == 7 * 150


# --- redaction and record shape -------------------------------------------------------------


def test_redaction_masks_keys_headers_and_bearer_values_only() -> None:
    data = {
        "authorization": "Bearer sk-live-abcdef123456",
        "x-api-key": "sk-ant-abcdefghijkl",
        "api_key": "whatever",
        "nested": {"client_secret": "s3", "max_tokens": 100, "prompt_tokens": 5},
        "note": "called with Bearer abc.def.ghi here",
        "token_ids": [1, 2, 3],
        "password": {"type": "string"},  # a JSON schema property, not a secret value
    }
    out = trajectory_record.redact(data)
    assert out["authorization"] == out["x-api-key"] == out["api_key"] == "[REDACTED]"
    assert out["nested"] == {"client_secret": "[REDACTED]", "max_tokens": 100, "prompt_tokens": 5}
    assert out["note"] == "called with [REDACTED] here"
    assert out["token_ids"] == [1, 2, 3]
    assert out["password"] == {"type": "string"}
    assert data["authorization"].startswith("Bearer")  # input untouched


def _kwargs(call_type: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    start = dt.datetime(2026, 11, 22, 5, 0, 0)
    return {
        "call_type": call_type,
        "model": "vllm_model",
        "litellm_call_id": "call-1",
        "stream": body.get("stream", False),
        "completion_start_time": start + dt.timedelta(milliseconds=40),
        "litellm_params": {
            "api_base": "http://10.0.0.5:8000/v1",
            "proxy_server_request": {"headers": headers, "body": body},
        },
        "standard_logging_object": {"model_group": body["model"], "model_id": "vllm-0-claude"},
    }


RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "vllm_model",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "read", "arguments": '{"path": "a"}'},
                    }
                ],
            },
            "logprobs": {"content": [{"token": "x", "logprob": -0.5, "top_logprobs": []}]},
            "provider_specific_fields": {"stop_reason": None, "token_ids": [11, 12]},
        }
    ],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    "prompt_token_ids": [1, 2, 3, 4, 5, 6, 7],
}


def test_anthropic_call_becomes_an_openai_shaped_record_with_tokens() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "You are terse."}],
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "read",
                "description": "read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            }
        ],
        "messages": [
            {"role": "user", "content": "fix the bug; api key sk-notasecret-in-content"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "look first"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "file a"},
                    {"type": "text", "text": "go on"},
                ],
            },
        ],
    }
    headers = {
        "x-api-key": "sk-hvt-master-0123456789",
        "x-harbor-trial-dir": "step_0001/trial-a",
        "anthropic-version": "2023-06-01",
    }
    start = dt.datetime(2026, 11, 22, 5, 0, 0)
    record = trajectory_record.build(
        _kwargs("anthropic_messages", body, headers),
        json.loads(json.dumps(RESPONSE)),
        start,
        start + dt.timedelta(milliseconds=250),
        success=True,
    )
    req = record["request"]
    assert req["format"] == "anthropic"
    assert req["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "fix the bug; api key sk-notasecret-in-content"},
        {
            "role": "assistant",
            "content": "Reading.",
            "reasoning_content": "look first",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"path": "a"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "file a"},
        {"role": "user", "content": [{"type": "text", "text": "go on"}]},
    ]
    assert req["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "read",
                "description": "read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
            },
        }
    ]
    assert req["params"] == {"max_tokens": 64, "stop": ["END"]}
    assert req["headers"]["x-api-key"] == "[REDACTED]"
    assert record["trial_dir"] == "step_0001/trial-a"
    assert record["proxy"] == trajectory_record.proxy_name()  # which proxy logged it
    assert record["tokens"] == {
        "prompt_token_ids": [1, 2, 3, 4, 5, 6, 7],
        "choices": [
            {
                "index": 0,
                "token_ids": [11, 12],
                "logprobs": [{"token": "x", "logprob": -0.5, "top_logprobs": []}],
            }
        ],
    }
    choice = record["response"]["choices"][0]
    assert "logprobs" not in choice and "token_ids" not in choice["provider_specific_fields"]
    assert record["usage"]["total_tokens"] == 9
    assert record["duration_ms"] == pytest.approx(250)
    assert record["time_to_first_token_ms"] == pytest.approx(40)
    assert "sk-hvt-master" not in json.dumps(record)


def test_failure_record_carries_status_and_redacted_message() -> None:
    class BadRequest(Exception):
        status_code = 400

    body = {"model": "vllm_model", "messages": [{"role": "user", "content": "hi"}]}
    kwargs = _kwargs("acompletion", body, {"authorization": "Bearer sk-hvt-0123456789abcdef"})
    kwargs["exception"] = BadRequest("context too long; key was Bearer sk-hvt-0123456789abcdef")
    record = trajectory_record.build(kwargs, None, 1_700_000_000.0, 1_700_000_001.5, success=False)
    assert record["success"] is False
    assert record["failure"]["status_code"] == 400
    assert record["failure"]["error_type"] == "BadRequest"
    assert "sk-hvt" not in json.dumps(record)
    assert record["duration_ms"] == pytest.approx(1500)
    assert record["request"]["messages"] == [{"role": "user", "content": "hi"}]


def test_stream_chunks_concatenate_token_ids_and_logprobs() -> None:
    chunks = [
        {"prompt_token_ids": [5, 6], "choices": [{"index": 0, "delta": {"content": ""}}]},
        {"choices": [{"index": 0, "token_ids": [1], "logprobs": {"content": [{"logprob": -1}]}}]},
        {
            "choices": [
                {"index": 0, "token_ids": [2, 3], "logprobs": {"content": [{"logprob": -2}]}}
            ]
        },
        {"choices": [{"index": 0, "finish_reason": "stop"}]},
    ]
    tokens = trajectory_record.tokens_from_chunks(chunks)
    assert tokens == {
        "prompt_token_ids": [5, 6],
        "choices": [
            {"index": 0, "token_ids": [1, 2, 3], "logprobs": [{"logprob": -1}, {"logprob": -2}]}
        ],
    }


# --- the LiteLLM callback (needs litellm importable) ----------------------------------------


def test_callback_merges_stream_tokens_in_either_order(root: Path) -> None:
    pytest.importorskip("litellm.integrations.custom_logger")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from hvt.trajectory.logger import TrajectoryLogger

    logger = TrajectoryLogger(root)
    body = {"model": "vllm_model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    streamed = {k: v for k, v in RESPONSE.items() if k != "prompt_token_ids"}

    class Stream:
        def __init__(self) -> None:
            self.chunks = [{"choices": [{"index": 0, "token_ids": [7, 8]}]}]

        def __aiter__(self) -> Stream:
            self._it = iter([b"a", b"b"])
            return self

        async def __anext__(self) -> bytes:
            try:
                return next(self._it)
            except StopIteration:
                raise StopAsyncIteration from None

    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        # 1: success event first, stream end later
        kw1 = _kwargs("acompletion", body, {"x-harbor-trial-dir": "step_0001/trial-a"})
        kw1["litellm_call_id"] = "c1"
        await logger.async_log_success_event(kw1, json.loads(json.dumps(streamed)), 0.0, 1.0)
        async for item in logger.async_post_call_streaming_iterator_hook(
            None, Stream(), {"litellm_call_id": "c1"}
        ):
            got.append(item)
        # 2: stream end first
        async for item in logger.async_post_call_streaming_iterator_hook(
            None, Stream(), {"litellm_call_id": "c2"}
        ):
            got.append(item)
        kw2 = _kwargs("acompletion", body, {"x-harbor-trial-dir": "step_0001/trial-a"})
        kw2["litellm_call_id"] = "c2"
        await logger.async_log_success_event(kw2, json.loads(json.dumps(streamed)), 0.0, 1.0)
        # 3: no header: not written, never raises
        await logger.async_log_success_event(_kwargs("acompletion", body, {}), None, 0.0, 1.0)
        # 4: a broken response object must not raise either
        kw4 = _kwargs("acompletion", {"model": "m"}, {"x-harbor-trial-dir": "step_0001/trial-a"})
        await logger.async_log_failure_event(kw4, object(), "not a time", None)
        return got

    got = asyncio.run(scenario())
    logger.close()
    assert got == [b"a", b"b", b"a", b"b"]  # the stream passes through unchanged
    lines = (root / "step_0001" / "trial-a" / FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    by_id = {r["litellm_call_id"]: r for r in records}
    for call in ("c1", "c2"):
        assert by_id[call]["tokens_status"] == "ok"
        assert by_id[call]["tokens"]["choices"][0]["token_ids"] == [7, 8]
    assert len(records) == 3 and logger.unrouted == 1


def test_stream_token_ids_come_from_the_replicas_chunks_with_empty_text_ones_kept(
    root: Path,
) -> None:
    """LiteLLM's stream drops a chunk with empty text (an end-of-turn token, half a split
    character) and its ids; its class records the chunks before that, and the hook finds them
    under every wrapper that shares the stream's `chunks` (fallback wrapper, Anthropic adapter),
    the first chunk included, which the router reads before any hook sees the stream."""
    pytest.importorskip("litellm.integrations.custom_logger")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from hvt.trajectory import logger as trajectory_logger
    from hvt.trajectory.logger import TrajectoryLogger

    sent = [
        {"prompt_token_ids": [1, 2], "choices": [{"index": 0, "delta": {"content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": " a"}, "token_ids": [7]}]},
        {"choices": [{"index": 0, "delta": {"content": ""}, "token_ids": [8]}]},  # split char
        {"choices": [{"index": 0, "delta": {"content": " é"}, "token_ids": [9]}]},
        {"choices": [{"index": 0, "delta": {"content": ""}, "token_ids": [0]}]},  # end of turn
    ]

    class LiteLLMStream:  # what CustomStreamWrapper does with chunks: process, drop empty text
        def __init__(self) -> None:
            self.completion_stream = iter(sent)
            self.chunks: list[Any] = []

        def chunk_creator(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
            if not chunk["choices"][0]["delta"]["content"]:
                return None
            self.chunks.append(chunk)
            return chunk

        async def __anext__(self) -> dict[str, Any]:
            for chunk in self.completion_stream:
                out = self.chunk_creator(chunk=chunk)
                if out is not None:
                    return out
            raise StopAsyncIteration

    class Fallback:  # the router's wrapper: shares `chunks`, the first chunk already read
        def __init__(self, inner: LiteLLMStream) -> None:
            self.inner = inner
            self.chunks = inner.chunks
            self.first: Any = None

        async def start(self) -> Fallback:
            self.first = await self.inner.__anext__()
            return self

        def __aiter__(self) -> Fallback:
            return self

        async def __anext__(self) -> Any:
            if self.first is not None:
                first, self.first = self.first, None
                return first
            return await self.inner.__anext__()

    class Boundary:  # the proxy's upstream boundary: forwards attribute reads to its source
        __slots__ = ("_source",)

        def __init__(self, source: Any) -> None:
            self._source = source

        def __getattr__(self, name: str) -> Any:
            return getattr(self._source, name)

        def __aiter__(self) -> Any:
            return self._source.__aiter__()

    class AnthropicAdapter:  # the messages route: chunks is the inner stream's
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        @property
        def chunks(self) -> list[Any]:
            return self.inner.chunks  # type: ignore[no-any-return]

        def __aiter__(self) -> AnthropicAdapter:
            return self

        async def __anext__(self) -> bytes:
            return json.dumps(await self.inner.__anext__()).encode()

    assert trajectory_logger.record_raw_chunks(LiteLLMStream)
    assert trajectory_logger.record_raw_chunks(LiteLLMStream)  # once only
    body = {"model": "vllm_model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    streamed = {k: v for k, v in RESPONSE.items() if k != "prompt_token_ids"}

    async def scenario() -> int:
        passed = 0
        chat = Boundary(await Fallback(LiteLLMStream()).start())
        messages = Boundary(AnthropicAdapter(await Fallback(LiteLLMStream()).start()))
        for call, stream in (("chat", chat), ("messages", messages)):
            kw = _kwargs("acompletion", body, {"x-harbor-trial-dir": "step_0001/trial-a"})
            kw["litellm_call_id"] = call
            await logger.async_log_success_event(kw, json.loads(json.dumps(streamed)), 0.0, 1.0)
            async for _ in logger.async_post_call_streaming_iterator_hook(
                None, stream, {"litellm_call_id": call}
            ):
                passed += 1
        return passed

    logger = TrajectoryLogger(root)
    assert asyncio.run(scenario()) == 4  # the client still gets LiteLLM's chunks only
    logger.close()
    lines = (root / "step_0001" / "trial-a" / FILE).read_text().splitlines()
    assert len(lines) == 2
    for record in map(json.loads, lines):
        assert record["tokens"]["choices"][0]["token_ids"] == [7, 8, 9, 0], record["tokens"]
        assert record["tokens"]["prompt_token_ids"] == [1, 2]
        assert record["tokens"]["prompt_token_ids_source"] == "response"
    assert not trajectory_logger._RAW_CHUNKS  # each stream's recording went with its record


@pytest.mark.parametrize(
    ("url", "call_type"),
    [
        ("http://proxy:8002/v1/messages?beta=true", "anthropic_messages"),  # claude-code's
        ("http://proxy:8002/v1/messages", "anthropic_messages"),
        ("http://proxy:8002/v1/chat/completions", "acompletion"),
        ("http://proxy:8002/v1/chat/completions?messages=1", "acompletion"),
    ],
)
def test_an_aborted_streams_record_knows_its_route(url: str, call_type: str) -> None:
    """The record of a stream cut by an abort is built from the request alone: its route
    decides how its messages are read, and a retry is matched to it by them."""
    pytest.importorskip("litellm.integrations.custom_logger")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from hvt.trajectory.logger import stream_kwargs

    kwargs = stream_kwargs({"proxy_server_request": {"url": url}}, [])
    assert kwargs["call_type"] == call_type


def test_the_record_names_the_proxy_that_logged_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several hosts, one proxy per node: the node's name (compose sets HVT_PROXY_NAME), else
    the container's host name."""
    import socket

    trajectory_record.proxy_name.cache_clear()
    monkeypatch.setenv(trajectory_record.PROXY_NAME_ENV, "gpu2")
    assert trajectory_record.proxy_name() == "gpu2"
    trajectory_record.proxy_name.cache_clear()
    monkeypatch.setenv(trajectory_record.PROXY_NAME_ENV, " ")
    assert trajectory_record.proxy_name() == socket.gethostname()
    trajectory_record.proxy_name.cache_clear()
