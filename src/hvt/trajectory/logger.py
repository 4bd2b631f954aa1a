"""LiteLLM callback that appends one JSONL record per proxied call to the trial's trajectory.

Registered in the generated LiteLLM config as
`litellm_settings.callbacks: [hvt.trajectory.logger.proxy_handler_instance]`. The trial comes
from the request header `x-harbor-trial-dir` (see `trajectory_paths`), the trials root from
`HVT_TRIALS_ROOT`. Success and failure both produce a record (`trajectory_record`); writing
happens on a background thread (`trajectory_writer`). Nothing here may block or fail a request:
every hook catches and logs its own errors.

Streamed calls: LiteLLM's assembled stream response drops vLLM's per-delta `token_ids` and
logprobs, and its processed chunks drop every chunk with empty text (special tokens such as the
end of a turn, half of a split character) with their ids; so LiteLLM's stream class records the
replica's chunks as it receives them (`record_raw_chunks`, before its processing) and the
streaming iterator hook takes the token data from those (LiteLLM's processed chunks where none
were recorded). The record is written once both the success event and the end of the stream
have been seen (or after `STREAM_MERGE_WAIT_S` without the token data, marked `tokens_status:
"missing"`). The `prompt_token_ids` vLLM puts in the first chunk do not survive LiteLLM's
parsing; for those calls the logger asks the same replica's `/tokenize` with the exact body
LiteLLM sent (messages, tools, chat template options), i.e. vLLM's own rendering of that prompt
(`prompt_token_ids_source: "vllm-tokenize"`).

Aborted calls (`hvt.trajectory.aborts`): an answer the replica aborted (a weight update under
`training.mode: colocate_async`) never reaches the client as an answer. Non-streamed, the
success hook raises `AbortedCall` (HTTP 529, `overloaded_error`); streamed, the iterator hook
ends the stream with that error instead of its closing events and writes the call's record
itself (LiteLLM logs no event for a stream a hook ended). The record says `aborted: true`.

Every record carries `weight_version` (and `weight_version_source`): the global step of the
weights that answered, where the replica reports it (`x-hvt-weight-version`), else null.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from litellm.integrations.custom_logger import CustomLogger

from hvt.trajectory import aborts
from hvt.trajectory import paths as trajectory_paths
from hvt.trajectory import record as trajectory_record
from hvt.trajectory.writer import TrajectoryWriter

log = logging.getLogger("hvt.trajectory")
STREAM_MERGE_WAIT_S = 10.0
STREAM_PART_TTL_S = 120.0
ABORTED_TTL_S = 600.0
TOKENIZE_TIMEOUT_S = 10.0
TOKENIZE_FIELDS = (
    "tools",
    "chat_template",
    "chat_template_kwargs",
    "continue_final_message",
    "add_generation_prompt",
    "add_special_tokens",
    "mm_processor_kwargs",
)


def tokenize_request(
    kwargs: Mapping[str, Any], api_base: str | None
) -> tuple[str, dict[str, Any]] | None:
    """vLLM `/tokenize` URL and body rendering the prompt LiteLLM sent (None if unknown)."""
    sent = (kwargs.get("additional_args") or {}).get("complete_input_dict")
    if not isinstance(sent, Mapping) or not api_base or not isinstance(sent.get("messages"), list):
        return None
    body: dict[str, Any] = {"model": sent.get("model"), "messages": sent["messages"]}
    body.update({k: sent[k] for k in TOKENIZE_FIELDS if k in sent})
    return re.sub(r"/v1/?$", "", api_base.rstrip("/")) + "/tokenize", body


def _chunks(response: Any) -> list[Any]:
    """The OpenAI-shape chunks a streamed response has received so far (LiteLLM's stream
    wrappers keep them as `chunks`, also under the Anthropic adapter's byte stream)."""
    chunks = getattr(response, "chunks", None)
    return list(chunks) if isinstance(chunks, list) else []


# Each stream's chunks as the replica sent them, recorded before LiteLLM processes them. LiteLLM
# drops a chunk whose text is empty, and its token ids with it: vLLM sends the end-of-turn and
# other special tokens, and the first token of a character split over two, with empty text.
# Taken from the processed chunks, a streamed answer would lose its end-of-turn token, which the
# next call's prompt would then supply untrained. Keyed by the stream's list of processed chunks
# (`chunks`), which every wrapper above it shares (the router's fallback wrapper, the Anthropic
# adapter), so the iterator hook finds them; the router reads a stream's first chunk before any
# hook sees the stream, which is why the recording sits in LiteLLM's class, not in the hook.
_RAW_CHUNKS: dict[int, tuple[list[Any], list[Any], float]] = {}
RAW_CHUNKS_TTL_S = 3600.0  # a stream whose hook never ran (not proxied) is forgotten after this


def record_raw_chunks(stream_class: type | None = None) -> bool:
    """Make LiteLLM's CustomStreamWrapper (or `stream_class`) keep every stream's raw chunks
    (idempotent); False where this LiteLLM has no such class (the processed chunks are used)."""
    if stream_class is None:
        try:
            from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
        except ImportError:
            return False
        stream_class = CustomStreamWrapper
    create = getattr(stream_class, "chunk_creator", None)
    if not callable(create):
        return False
    if getattr(create, "_hvt_records_raw", False):
        return True

    def chunk_creator(self: Any, chunk: Any) -> Any:
        processed = getattr(self, "chunks", None)
        if isinstance(processed, list):
            entry = _RAW_CHUNKS.get(id(processed))
            if entry is None or entry[0] is not processed:
                now = time.monotonic()
                for key in [k for k, e in _RAW_CHUNKS.items() if now - e[2] > RAW_CHUNKS_TTL_S]:
                    del _RAW_CHUNKS[key]
                entry = _RAW_CHUNKS[id(processed)] = (processed, [], now)
            entry[1].append(chunk)
        return create(self, chunk=chunk)

    chunk_creator._hvt_records_raw = True  # type: ignore[attr-defined]
    stream_class.chunk_creator = chunk_creator  # type: ignore[attr-defined]
    return True


def stream_tokens(response: Any) -> dict[str, Any]:
    """A finished stream's token data (and its recording forgotten): from the raw chunks where
    they were recorded and hold at least the processed ones' token ids (a fallback to another
    deployment starts a stream of its own), else from LiteLLM's processed ones."""
    processed = trajectory_record.tokens_from_chunks(_chunks(response))
    listed = getattr(response, "chunks", None)
    entry = _RAW_CHUNKS.pop(id(listed), None) if isinstance(listed, list) else None
    if entry is None or entry[0] is not listed:
        return processed
    raw = trajectory_record.tokens_from_chunks(entry[1])

    def id_count(tokens: dict[str, Any]) -> int:
        return sum(len(c.get("token_ids") or []) for c in tokens["choices"])

    return raw if id_count(raw) >= id_count(processed) else processed


def stream_kwargs(request_data: Mapping[str, Any], chunks: list[Any]) -> dict[str, Any]:
    """LiteLLM-callback-shaped kwargs for a stream that has no logging event: the proxy's
    request data and the deployment the chunks came from."""
    proxy_request = request_data.get("proxy_server_request") or {}
    url = str(proxy_request.get("url") or "") if isinstance(proxy_request, Mapping) else ""
    path = urlsplit(url).path  # claude-code calls /v1/messages?beta=true
    hidden: Any = getattr(chunks[0], "_hidden_params", None) if chunks else None
    api_base = hidden.get("api_base") if isinstance(hidden, Mapping) else None
    return {
        "litellm_call_id": request_data.get("litellm_call_id"),
        "call_type": "anthropic_messages"
        if path.rstrip("/").endswith("/messages")
        else "acompletion",
        "model": request_data.get("model"),
        "stream": True,
        "litellm_params": {
            "proxy_server_request": proxy_request,
            "metadata": request_data.get("metadata") or request_data.get("litellm_metadata"),
            "api_base": api_base,
        },
    }


class TrajectoryLogger(CustomLogger):
    def __init__(self, root: Path | None = None) -> None:
        super().__init__()
        env_root = os.environ.get(trajectory_paths.ROOT_ENV, "")
        self.root = root or (Path(env_root) if env_root else None)
        self.writer = TrajectoryWriter(self.root) if self.root is not None else None
        self.unrouted = 0
        self._pending: dict[str, tuple[str, dict[str, Any], asyncio.TimerHandle]] = {}
        self._tokenize: dict[str, tuple[str, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream_parts: dict[str, tuple[float, dict[str, Any]]] = {}
        self._aborted: dict[str, float] = {}  # call id -> when its deployment answered `abort`
        self.finish_reason_registered = aborts.register_abort_finish_reason()
        self.raw_chunks_recorded = record_raw_chunks()
        if not self.raw_chunks_recorded:
            log.error(
                "this LiteLLM has no CustomStreamWrapper.chunk_creator: streamed answers lose "
                "the token ids of chunks with empty text (end-of-turn tokens) in their records"
            )
        if self.root is None:
            log.error(
                "%s is not set: trajectory records will not be written",
                trajectory_paths.ROOT_ENV,
            )
        else:
            log.info("trajectory records go under %s", self.root)

    # --- LiteLLM hooks ------------------------------------------------------------------

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._event(kwargs, response_obj, start_time, end_time, success=True)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._event(kwargs, response_obj, start_time, end_time, success=False)

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        """Sees the OpenAI-shape answer before LiteLLM's Anthropic adapter rewrites it (the
        adapter's `end_turn` hides the abort); exceptions here are swallowed by LiteLLM, so the
        call is only remembered for the success hook."""
        try:
            call_id = str(request_data.get("litellm_call_id") or "")
            if call_id and aborts.response_aborted(response):
                now = time.monotonic()
                self._aborted[call_id] = now
                for key in [k for k, t in self._aborted.items() if now - t > ABORTED_TTL_S]:
                    del self._aborted[key]
        except Exception:
            log.exception("checking a deployment answer for an abort failed")
        return None

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any
    ) -> Any:
        call_id = str(data.get("litellm_call_id") or "")
        if self._aborted.pop(call_id, None) is not None or aborts.response_aborted(response):
            raise aborts.AbortedCall()
        return None

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        aborted = False
        checked = 0  # chunks already looked at: each is checked once, however long the stream
        try:
            async for item in response:
                received = getattr(response, "chunks", None)
                if isinstance(received, list):
                    checked = checked if checked <= len(received) else 0  # a fallback's new list
                    aborted = aborts.stream_aborted(received[checked:])
                    checked = len(received)
                if aborted or aborts.response_aborted(item):
                    aborted = True
                    break
                yield item
        finally:
            try:
                if aborted:
                    self._stream_aborted(response, request_data, stream_tokens(response))
                else:
                    self._stream_done(request_data, stream_tokens(response))
            except Exception:
                log.exception("collecting stream token data failed")
        if aborted:
            raise aborts.AbortedCall()

    # --- internals ----------------------------------------------------------------------

    def _event(
        self,
        kwargs: dict[str, Any],
        response_obj: Any,
        start_time: Any,
        end_time: Any,
        success: bool,
    ) -> None:
        try:
            trial_dir = trajectory_record.request_headers(kwargs).get(trajectory_paths.HEADER)
            if not trial_dir:
                self.unrouted += 1
                return
            if not success and isinstance(kwargs.get("exception"), aborts.AbortedCall):
                return  # the iterator hook wrote this stream's record
            record = trajectory_record.build(kwargs, response_obj, start_time, end_time, success)
            if success and aborts.response_aborted(record.get("response")):
                aborts.mark_record(record)
                record["tokens_status"] = (
                    "ok" if trajectory_record.has_token_ids(record["tokens"]) else "missing"
                )
                self._submit(trial_dir, record)
                return
            call_id = str(kwargs.get("litellm_call_id") or "")
            streamed = bool(record["request"].get("stream")) and success
            if streamed and call_id:
                tok = tokenize_request(kwargs, record["deployment"].get("api_base"))
                if tok is not None:
                    self._tokenize[call_id] = tok
                part = self._stream_parts.pop(call_id, None)
                if part is not None:
                    self._merge(record, part[1])
                    self._finish(call_id, trial_dir, record)
                    return
                else:
                    loop = asyncio.get_running_loop()
                    timer = loop.call_later(STREAM_MERGE_WAIT_S, self._flush_pending, call_id)
                    self._pending[call_id] = (trial_dir, record, timer)
                    return
            elif success:
                record["tokens_status"] = (
                    "ok" if trajectory_record.has_token_ids(record["tokens"]) else "missing"
                )
                if record["tokens"].get("prompt_token_ids") is not None:
                    record["tokens"]["prompt_token_ids_source"] = "response"
            self._submit(trial_dir, record)
        except Exception:
            log.exception("building a trajectory record failed")

    def _stream_aborted(
        self, response: Any, request_data: Mapping[str, Any], tokens: dict[str, Any]
    ) -> None:
        """The record of a stream the replica aborted: what was asked, the partial tokens, the
        error the client got instead of the stream's end."""
        kwargs = stream_kwargs(request_data, _chunks(response))
        trial_dir = trajectory_record.request_headers(kwargs).get(trajectory_paths.HEADER)
        if not trial_dir:
            self.unrouted += 1
            return
        logging_obj = request_data.get("litellm_logging_obj")
        start = getattr(logging_obj, "start_time", None)
        record = trajectory_record.build(kwargs, None, start, dt.datetime.now(), success=False)
        record["tokens"] = tokens
        record["tokens_status"] = (
            "ok" if trajectory_record.has_token_ids(record["tokens"]) else "missing"
        )
        version, source = trajectory_record.weight_version(kwargs, *_chunks(response))
        record["weight_version"], record["weight_version_source"] = version, source
        self._submit(trial_dir, aborts.mark_record(record))

    def _stream_done(self, request_data: Mapping[str, Any], tokens: dict[str, Any]) -> None:
        call_id = str(request_data.get("litellm_call_id") or "")
        if not call_id:
            return
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            trial_dir, record, timer = pending
            timer.cancel()
            self._merge(record, tokens)
            self._finish(call_id, trial_dir, record)
            return
        now = time.monotonic()
        self._stream_parts[call_id] = (now, tokens)
        for key in [k for k, (t, _) in self._stream_parts.items() if now - t > STREAM_PART_TTL_S]:
            del self._stream_parts[key]

    @staticmethod
    def _merge(record: dict[str, Any], tokens: dict[str, Any]) -> None:
        have = record.get("tokens") or {}
        if tokens.get("prompt_token_ids") is None and have.get("prompt_token_ids") is not None:
            tokens["prompt_token_ids"] = have["prompt_token_ids"]
        record["tokens"] = tokens
        record["tokens_status"] = "ok" if trajectory_record.has_token_ids(tokens) else "missing"

    def _flush_pending(self, call_id: str) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            trial_dir, record, _ = pending
            record["tokens_status"] = "missing"
            self._finish(call_id, trial_dir, record)

    def _finish(self, call_id: str, trial_dir: str, record: dict[str, Any]) -> None:
        """Submit a streamed call's record, after fetching its prompt ids if they are missing."""
        tok = self._tokenize.pop(call_id, None)
        tokens = record.setdefault("tokens", {})
        if tokens.get("prompt_token_ids") is not None:
            tokens["prompt_token_ids_source"] = "response"
        elif tok is not None:
            task = asyncio.get_running_loop().create_task(
                self._fill_prompt_ids(trial_dir, record, *tok)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._submit(trial_dir, record)

    async def _fill_prompt_ids(
        self, trial_dir: str, record: dict[str, Any], url: str, body: dict[str, Any]
    ) -> None:
        tokens = record["tokens"]
        try:
            import httpx

            async with httpx.AsyncClient(timeout=TOKENIZE_TIMEOUT_S) as client:
                resp = await client.post(url, json=body)
            ids = resp.json().get("tokens") if resp.status_code == 200 else None
            if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
                tokens["prompt_token_ids"] = ids
                tokens["prompt_token_ids_source"] = "vllm-tokenize"
            else:
                tokens["prompt_token_ids_source"] = f"unavailable (tokenize: {resp.status_code})"
        except Exception as exc:
            tokens["prompt_token_ids_source"] = f"unavailable ({type(exc).__name__})"
        finally:
            self._submit(trial_dir, record)

    def _submit(self, trial_dir: str, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        self.writer.submit(trial_dir, record)

    def close(self) -> None:
        for call_id in list(self._pending):
            trial_dir, record, timer = self._pending.pop(call_id)
            timer.cancel()
            record["tokens_status"] = "missing"
            self._submit(trial_dir, record)
        if self.writer is not None:
            self.writer.close()


proxy_handler_instance = TrajectoryLogger()
atexit.register(proxy_handler_instance.close)
