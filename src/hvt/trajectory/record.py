"""Turn one proxied LLM call (LiteLLM callback kwargs + response) into a trajectory record.

The record is plain JSON: the request in OpenAI chat shape (Anthropic `/v1/messages` bodies are
converted), the response in OpenAI chat.completion shape, usage, timings, and the token data
the policy returned (`tokens`: prompt token ids, per choice the sampled token ids and their
logprobs). Failures carry the status and message. Keys and authorization headers are redacted;
message content is never altered.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA = "hvt.trajectory/1"
# The replica's weight version (the global step of the weights that answered; the CPU rollout
# server sends it, vLLM does not): response header, as LiteLLM passes provider headers on
# (`llm_provider-<name>`), or the chat.completion body's field.
WEIGHT_VERSION_HEADER = "x-hvt-weight-version"
WEIGHT_VERSION_FIELD = "weight_version"
REDACTED = "[REDACTED]"
# which proxy logged the call (several hosts: one proxy per node, compose sets the node's name)
PROXY_NAME_ENV = "HVT_PROXY_NAME"
SECRET_KEYS = {
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "master_key",
    "litellm_master_key",
    "x-litellm-api-key",
    "password",
    "client_secret",
    "secret",
    "access_token",
    "refresh_token",
    "id_token",
    "aws_secret_access_key",
    "aws_session_token",
    "azure_ad_token",
    "user_api_key",
    "user_api_key_hash",
}
SECRET_KEY_PATTERN = re.compile(r"(secret|password|passwd|api[_-]?key|auth|credential)", re.I)
SECRET_VALUE_PATTERN = re.compile(r"(?i)\b(bearer\s+\S+|sk-[A-Za-z0-9_\-]{8,})")
MAX_ERROR_CHARS = 4000
REQUEST_PARAM_SKIP = {
    "model",
    "messages",
    "system",
    "tools",
    "stream",
    "metadata",
    "litellm_metadata",
    "proxy_server_request",
    "user_api_key_dict",
}


def redact(value: Any, _key: str = "") -> Any:
    """Copy of `value` with secret-named string fields and bearer/sk- strings masked."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            k = str(key)
            if isinstance(item, str) and item and _is_secret_key(k):
                out[k] = REDACTED
            else:
                out[k] = redact(item, k)
        return out
    if isinstance(value, list | tuple):
        return [redact(item, _key) for item in value]
    if isinstance(value, str):
        return SECRET_VALUE_PATTERN.sub(REDACTED, value)
    return value


def _is_secret_key(key: str) -> bool:
    low = key.lower()
    return low in SECRET_KEYS or bool(SECRET_KEY_PATTERN.search(low))


def to_plain(obj: Any) -> Any:
    """LiteLLM/pydantic objects to JSON-compatible Python values."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return to_plain(dump())
        except Exception:
            pass
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    return str(obj)


# --- Anthropic -> OpenAI chat ---------------------------------------------------------------


def _text_of(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    if isinstance(blocks, list):
        return "".join(
            str(b.get("text", ""))
            for b in blocks
            if isinstance(b, Mapping) and b.get("type") == "text"
        )
    return ""


def anthropic_tools_to_openai(tools: Sequence[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        function: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        if "input_schema" in tool:
            function["parameters"] = tool["input_schema"]
        entry: dict[str, Any] = {"type": "function", "function": function}
        if tool.get("type") not in (None, "custom"):
            entry["anthropic_type"] = tool["type"]  # server tools, e.g. web_search_20250305
        out.append(entry)
    return out


def anthropic_messages_to_openai(system: Any, messages: Sequence[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system_text = _text_of(system)
    if system_text:
        out.append({"role": "system", "content": system_text})
    for msg in messages:
        if not isinstance(msg, Mapping):
            continue
        role = msg.get("role")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = [b for b in (content or []) if isinstance(b, Mapping)]
        if role == "assistant":
            text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            thinking = [str(b.get("thinking", "")) for b in blocks if b.get("type") == "thinking"]
            if thinking:
                entry["reasoning_content"] = "".join(thinking)
            calls = [
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {
                        "name": b.get("name"),
                        "arguments": json.dumps(b.get("input", {}), ensure_ascii=False),
                    },
                }
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
            continue
        parts: list[dict[str, Any]] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "tool_result":
                if parts:
                    out.append({"role": role, "content": parts})
                    parts = []
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id"),
                        "content": _text_of(block.get("content")),
                        **({"is_error": True} if block.get("is_error") else {}),
                    }
                )
            elif kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image":
                parts.append({"type": "image_url", "image_url": {"url": "[image omitted]"}})
            else:
                parts.append({"type": str(kind), "anthropic_block": dict(block)})
        if parts:
            out.append({"role": role, "content": parts})
    return out


# --- token data -----------------------------------------------------------------------------


def _choice_tokens(choice: Mapping[str, Any]) -> tuple[list[int] | None, list[Any] | None]:
    ids = choice.get("token_ids")
    psf = choice.get("provider_specific_fields")
    if ids is None and isinstance(psf, Mapping):
        ids = psf.get("token_ids")
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    return (list(ids) if isinstance(ids, list) else None), (
        list(content) if isinstance(content, list) else None
    )


def tokens_from_response(response: Mapping[str, Any]) -> dict[str, Any]:
    """Lift vLLM token data out of a (dumped) chat.completion; removes it from `response`."""
    choices_out: list[dict[str, Any]] = []
    for choice in response.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        ids, logprobs = _choice_tokens(choice)
        choice.pop("token_ids", None)
        choice.pop("logprobs", None)
        psf = choice.get("provider_specific_fields")
        if isinstance(psf, dict):
            psf.pop("token_ids", None)
        choices_out.append(
            {"index": choice.get("index", 0), "token_ids": ids, "logprobs": logprobs}
        )
    prompt_ids = response.pop("prompt_token_ids", None) if isinstance(response, dict) else None
    return {"prompt_token_ids": prompt_ids, "choices": choices_out}


def tokens_from_chunks(chunks: Sequence[Any]) -> dict[str, Any]:
    """Concatenate per-delta token ids and logprobs of a streamed response."""
    prompt_ids: list[int] | None = None
    by_index: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        data = to_plain(chunk)
        if not isinstance(data, Mapping):
            continue
        if prompt_ids is None and isinstance(data.get("prompt_token_ids"), list):
            prompt_ids = list(data["prompt_token_ids"])
        for choice in data.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            entry = by_index.setdefault(
                int(choice.get("index") or 0), {"token_ids": None, "logprobs": None}
            )
            ids, logprobs = _choice_tokens(choice)
            if ids is not None:
                entry["token_ids"] = (entry["token_ids"] or []) + ids
            if logprobs is not None:
                entry["logprobs"] = (entry["logprobs"] or []) + logprobs
    return {
        "prompt_token_ids": prompt_ids,
        "choices": [{"index": i, **by_index[i]} for i in sorted(by_index)],
    }


def _version(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _header_version(headers: Any) -> int | None:
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if str(key).lower().endswith(WEIGHT_VERSION_HEADER):
            return _version(value)
    return None


def weight_version(kwargs: Mapping[str, Any], *responses: Any) -> tuple[int | None, str]:
    """(the weight version that served the call, where it was read), or (None, 'unavailable')
    when the replica does not report one (vLLM)."""
    for response in responses:
        hidden = response.get("_hidden_params") if isinstance(response, Mapping) else None
        hidden = hidden if hidden is not None else getattr(response, "_hidden_params", None)
        found = _header_version(_get(hidden, "additional_headers"))
        if found is not None:
            return found, "header"
    for path in (
        ("standard_logging_object", "hidden_params", "additional_headers"),
        ("response_headers",),
    ):
        found = _header_version(_get(kwargs, *path))
        if found is not None:
            return found, "header"
    for response in responses:
        found = _version(_get(to_plain(response), WEIGHT_VERSION_FIELD))
        if found is not None:
            return found, "body"
    return None, "unavailable"


def has_token_ids(tokens: Mapping[str, Any]) -> bool:
    return any(c.get("token_ids") for c in tokens.get("choices") or [])


# --- the record -----------------------------------------------------------------------------


def _get(mapping: Any, *path: str) -> Any:
    node = mapping
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _epoch_ms(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        return value.timestamp() * 1000.0
    if isinstance(value, int | float):
        return float(value) * (1000.0 if value < 1e11 else 1.0)
    return None


def _api_base(kwargs: Mapping[str, Any], slo: Any) -> str | None:
    """The deployment's base URL as configured (LiteLLM logs the full endpoint URL)."""
    value = _get(kwargs, "litellm_params", "api_base") or _get(slo, "api_base")
    return re.sub(r"/chat/completions/?$", "", str(value)) if value else None


def request_headers(kwargs: Mapping[str, Any]) -> dict[str, str]:
    headers = _get(kwargs, "litellm_params", "proxy_server_request", "headers")
    if not isinstance(headers, Mapping):
        headers = _get(kwargs, "litellm_params", "metadata", "headers")
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def request_section(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    body = _get(kwargs, "litellm_params", "proxy_server_request", "body")
    body = to_plain(body) if isinstance(body, Mapping) else {}
    call_type = str(kwargs.get("call_type") or "")
    if "anthropic_messages" in call_type:
        fmt = "anthropic"
        messages = anthropic_messages_to_openai(body.get("system"), body.get("messages") or [])
        tools = anthropic_tools_to_openai(body.get("tools") or [])
    else:
        fmt = "openai"
        messages = to_plain(body.get("messages") or kwargs.get("messages") or [])
        tools = to_plain(body.get("tools") or kwargs.get("tools") or [])
    params = {k: to_plain(v) for k, v in body.items() if k not in REQUEST_PARAM_SKIP}
    if fmt == "anthropic" and "stop_sequences" in params:
        params["stop"] = params.pop("stop_sequences")
    return {
        "format": fmt,
        "model": body.get("model") or kwargs.get("model"),
        "stream": bool(body.get("stream", kwargs.get("stream", False))),
        "messages": messages,
        "tools": tools,
        "params": redact(params),
        "headers": redact(request_headers(kwargs)),
    }


def failure_section(kwargs: Mapping[str, Any], response_obj: Any) -> dict[str, Any]:
    exc = kwargs.get("exception")
    if exc is None and isinstance(response_obj, BaseException):
        exc = response_obj
    info = _get(kwargs, "standard_logging_object", "error_information") or {}
    status = getattr(exc, "status_code", None) or (
        info.get("error_code") if isinstance(info, Mapping) else None
    )
    message = (
        str(exc) if exc is not None else str(_get(kwargs, "standard_logging_object", "error_str"))
    )
    return {
        "status_code": int(str(status)) if str(status or "").isdigit() else status,
        "error_type": type(exc).__name__ if exc is not None else (info or {}).get("error_class"),
        "message": SECRET_VALUE_PATTERN.sub(REDACTED, message[:MAX_ERROR_CHARS]),
    }


@functools.cache
def proxy_name() -> str:
    """This proxy's name in each record: HVT_PROXY_NAME, else the host (container) name."""
    return os.environ.get(PROXY_NAME_ENV, "").strip() or socket.gethostname()


def build(
    kwargs: Mapping[str, Any],
    response_obj: Any,
    start_time: Any,
    end_time: Any,
    success: bool,
) -> dict[str, Any]:
    start_ms = _epoch_ms(start_time)
    end_ms = _epoch_ms(end_time)
    first_ms = _epoch_ms(kwargs.get("completion_start_time"))
    slo = kwargs.get("standard_logging_object") or {}
    headers = request_headers(kwargs)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "success": success,
        "litellm_call_id": kwargs.get("litellm_call_id"),
        "call_type": kwargs.get("call_type"),
        "trial_dir": headers.get("x-harbor-trial-dir"),
        "proxy": proxy_name(),
        "request_time": int(start_ms) if start_ms is not None else None,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "duration_ms": round(end_ms - start_ms, 3) if start_ms and end_ms else None,
        "time_to_first_token_ms": (
            round(first_ms - start_ms, 3)
            if start_ms and first_ms and first_ms >= start_ms
            else None
        ),
        "deployment": {
            "model": kwargs.get("model"),
            "model_group": _get(slo, "model_group"),
            "api_base": _api_base(kwargs, slo),
            "model_id": _get(slo, "model_id"),
        },
        "request": request_section(kwargs),
    }
    version, source = weight_version(kwargs, response_obj)
    record["weight_version"] = version
    record["weight_version_source"] = source
    if success:
        response = to_plain(response_obj)
        response = response if isinstance(response, dict) else {"raw_response": response}
        record["tokens"] = tokens_from_response(response)
        record["usage"] = response.pop("usage", None)
        response.pop("_hidden_params", None)
        record["response"] = response
    else:
        record["failure"] = failure_section(kwargs, response_obj)
    return record
