"""A trial's proxied LLM calls -> one token sequence for training (prompt, response, mask,
logprobs), from the exact token ids the policy produced.

Input: `proxy/litellm-trajectory.jsonl`, one record per call (hvt.trajectory.record): the
prompt token ids vLLM rendered (`tokens.prompt_token_ids`), the sampled ids
(`tokens.choices[0].token_ids`) and their logprobs.

Exact assembly. Calls are taken in request order. A call whose prompt ids start with the ids
of an existing chain (its previous prompt + sampled tokens + ...) continues that chain: the
new prompt tokens after the chain (tool results, the next user turn, template glue) go in
with mask 0, the sampled tokens with mask 1 and their logprobs. Any other call starts a new
chain (claude-code's side calls, or a history the chat template re-rendered differently).
The chain with the most sampled tokens is the training sequence; the number of chains and of
calls left out are reported, never hidden. Nothing is re-tokenized on this path.

Fallback (records without token ids): the last successful call's messages plus its answer are
rendered with the tokenizer's chat template; assistant spans get mask 1, logprobs 0.0. The
result says `exact=False` so the caller counts it.

Aborted calls (`aborted: true`, written by the proxy for an answer the replica cut off at a
weight update; the client got a retryable error instead): never part of a sequence, neither
as sampled tokens nor as context. An aborted call counts as retried when a later call asked
the same thing (same messages and tools: claude-code resends the request); the retry then
continues the chain exactly where the aborted call would have. An aborted call that was not
retried (the agent gave up, or took the partial answer some other way) leaves a trial whose
course the abort changed: `TrajectoryStats.aborted_unretried` counts them and the rollout is
kept out of the loss (`verl_patch.infra_failure`).

Weight versions: each record's `weight_version` (the global step of the weights that served
it, where the replica reports it); the sequence lists those of the calls it was built from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAJECTORY_FILE = "litellm-trajectory.jsonl"
CONTEXT_ERROR = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|too many tokens"
    r"|maximum model length|max_model_len|context_length_exceeded",
    re.I,
)

# A failed call the policy cannot have caused: the proxy found no replica (503), a gateway
# failed (502/504) or nothing answered (connection errors). A 500 or a 400 may come from what
# the policy sent, so they are not counted here.
INFRA_STATUS = frozenset({502, 503, 504})
INFRA_ERRORS = frozenset({"APIConnectionError", "ServiceUnavailableError", "BadGatewayError"})

# render(messages, tools, add_generation_prompt) -> token ids (the tokenizer's chat template)
Render = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None, bool], list[int]]


@dataclass(frozen=True)
class Call:
    index: int
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None  # aligned with completion_ids, or None
    weight_version: int | None = None  # the weights that sampled completion_ids, if reported


@dataclass
class TrajectoryStats:
    records: int = 0
    bad_lines: int = 0
    succeeded: int = 0
    failed: int = 0
    with_tokens: int = 0
    context_overflow: bool = False
    infra_failed: int = 0  # failed calls of INFRA_STATUS / INFRA_ERRORS
    aborted: int = 0  # calls the replica aborted (weight updates); not counted as failed
    aborted_unretried: int = 0  # ... of which no later call asked the same again
    weight_versions: set[int] = field(default_factory=set)  # of the successful calls


@dataclass
class TokenSequence:
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    exact: bool
    num_turns: int  # sampled (assistant) turns in the sequence
    calls_total: int = 0
    calls_used: int = 0
    chains: int = 0
    logprobs_complete: bool = True
    truncated: bool = False
    weight_versions: list[int] = field(default_factory=list)  # of the calls used, sorted
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "tokens_exact": float(self.exact),
            "tokens_fallback": float(not self.exact),
            "calls_total": float(self.calls_total),
            "calls_used": float(self.calls_used),
            "chains": float(self.chains),
            "logprobs_complete": float(self.logprobs_complete),
            "truncated": float(self.truncated),
        }


# -- reading -----------------------------------------------------------------------------


def read_records(path: Path, stats: TrajectoryStats | None = None) -> list[dict[str, Any]]:
    """Every whole JSON object in the file, in file order; a torn or bad line is counted."""
    stats = stats if stats is not None else TrajectoryStats()
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            stats.bad_lines += 1
            continue
        if isinstance(item, dict):
            records.append(item)
        else:
            stats.bad_lines += 1
    stats.records = len(records)
    return records


def _ints(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return tuple(value)


def _logprobs(value: Any, n: int) -> tuple[float, ...] | None:
    if not isinstance(value, list) or len(value) != n:
        return None
    out: list[float] = []
    for entry in value:
        lp = entry.get("logprob") if isinstance(entry, Mapping) else entry
        if isinstance(lp, bool) or not isinstance(lp, int | float):
            return None
        out.append(float(lp))
    return tuple(out)


def _order(record: Mapping[str, Any], position: int) -> tuple[float, int]:
    t = record.get("request_time")
    return (float(t) if isinstance(t, int | float) else float("inf"), position)


def _asked(record: Mapping[str, Any]) -> str | None:
    """What a call asked (its messages and tools), to recognise a retry of it."""
    request = record.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("messages"), list):
        return None
    return json.dumps([request.get("messages"), request.get("tools") or []], sort_keys=True)


def _weight_version(record: Mapping[str, Any]) -> int | None:
    value = record.get("weight_version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def calls_from_records(
    records: Sequence[Mapping[str, Any]], stats: TrajectoryStats | None = None
) -> list[Call]:
    """Successful calls that carry token ids, in request order (aborted calls never)."""
    stats = stats if stats is not None else TrajectoryStats()
    ordered = sorted(enumerate(records), key=lambda p: _order(p[1], p[0]))
    calls: list[Call] = []
    for n, (position, record) in enumerate(ordered):
        if record.get("aborted"):
            stats.aborted += 1
            asked = _asked(record)
            later = (_asked(r) for _, r in ordered[n + 1 :])
            if asked is None or asked not in later:
                stats.aborted_unretried += 1
            continue
        if not record.get("success"):
            stats.failed += 1
            failure = record.get("failure") or {}
            message = str(failure.get("message", "")) if isinstance(failure, Mapping) else ""
            if CONTEXT_ERROR.search(message):
                stats.context_overflow = True
            if isinstance(failure, Mapping) and (
                failure.get("status_code") in INFRA_STATUS
                or failure.get("error_type") in INFRA_ERRORS
            ):
                stats.infra_failed += 1
            continue
        stats.succeeded += 1
        version = _weight_version(record)
        if version is not None:
            stats.weight_versions.add(version)
        tokens = record.get("tokens") or {}
        choices = tokens.get("choices") if isinstance(tokens, Mapping) else None
        choice = choices[0] if isinstance(choices, list) and choices else {}
        prompt = _ints(tokens.get("prompt_token_ids")) if isinstance(tokens, Mapping) else None
        completion = _ints(choice.get("token_ids")) if isinstance(choice, Mapping) else None
        if prompt is None or completion is None:
            continue
        stats.with_tokens += 1
        lps = _logprobs(choice.get("logprobs"), len(completion))
        calls.append(Call(position, prompt, completion, lps, version))
    return calls


# -- exact assembly ----------------------------------------------------------------------


@dataclass
class _Chain:
    prompt: list[int]
    response: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    calls: int = 0
    sampled: int = 0
    logprobs_complete: bool = True
    versions: set[int] = field(default_factory=set)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)

    def is_prefix_of(self, ids: Sequence[int]) -> bool:
        n = len(self.prompt)
        if len(ids) < self.length or tuple(ids[:n]) != tuple(self.prompt):
            return False
        return tuple(ids[n : self.length]) == tuple(self.response)

    def add(self, call: Call, continuing: bool) -> None:
        if continuing:
            glue = call.prompt_ids[self.length :]
            self.response += glue
            self.mask += [0] * len(glue)
            self.logprobs += [0.0] * len(glue)
        self.response += call.completion_ids
        self.mask += [1] * len(call.completion_ids)
        if call.logprobs is None:
            self.logprobs_complete = False
            self.logprobs += [0.0] * len(call.completion_ids)
        else:
            self.logprobs += call.logprobs
        self.calls += 1
        self.sampled += len(call.completion_ids)
        if call.weight_version is not None:
            self.versions.add(call.weight_version)


def assemble_exact(calls: Sequence[Call]) -> TokenSequence | None:
    """The longest prefix-consistent chain of calls as one sequence (None without calls)."""
    chains: list[_Chain] = []
    for call in calls:
        matches = [c for c in chains if c.is_prefix_of(call.prompt_ids)]
        if matches:
            max(matches, key=lambda c: c.length).add(call, continuing=True)
        else:
            chain = _Chain(prompt=list(call.prompt_ids))
            chain.add(call, continuing=False)
            chains.append(chain)
    if not chains:
        return None
    best = max(enumerate(chains), key=lambda p: (p[1].sampled, p[0]))[1]
    return TokenSequence(
        prompt_ids=best.prompt,
        response_ids=best.response,
        response_mask=best.mask,
        response_logprobs=best.logprobs,
        exact=True,
        num_turns=best.calls,
        calls_total=len(calls),
        calls_used=best.calls,
        chains=len(chains),
        logprobs_complete=best.logprobs_complete,
        weight_versions=sorted(best.versions),
    )


# -- fallback: the chat template ----------------------------------------------------------


def final_messages(
    records: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None] | None:
    """Messages of the last successful call plus its answer, and the tools it offered."""
    ordered = sorted(enumerate(records), key=lambda p: _order(p[1], p[0]))
    for _, record in reversed(ordered):
        if not record.get("success"):
            continue
        request = record.get("request") or {}
        messages = request.get("messages") if isinstance(request, Mapping) else None
        if not isinstance(messages, list) or not messages:
            continue
        response = record.get("response") or {}
        choices = response.get("choices") if isinstance(response, Mapping) else None
        answer = choices[0].get("message") if isinstance(choices, list) and choices else None
        out = [dict(m) for m in messages if isinstance(m, Mapping)]
        if isinstance(answer, Mapping):
            out.append(_assistant(answer))
        tools = request.get("tools") if isinstance(request, Mapping) else None
        return out, (list(tools) if isinstance(tools, list) and tools else None)
    return None


def _assistant(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    if message.get("reasoning_content"):
        out["reasoning_content"] = message["reasoning_content"]
    return out


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assemble_from_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, render: Render
) -> TokenSequence:
    """Re-tokenize a conversation with the chat template.

    The sequence is the template's rendering of the whole conversation; the prompt is what
    precedes the first assistant turn (with the generation prompt). Each assistant turn k is
    the span between render(messages[:k], generation prompt) and render(messages[:k+1]),
    located in the full rendering by common prefix (templates that rewrite earlier turns,
    e.g. dropping old reasoning, shorten the span; that is noted)."""
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
    if first is None:
        prompt = render(messages, tools, True)
        return TokenSequence(prompt, [], [], [], exact=False, num_turns=0, notes=["no answer"])
    full = render(messages, tools, False)
    start = _lcp(render(messages[:first], tools, True), full)
    mask = [0] * len(full)
    notes: list[str] = []
    turns = 0
    for k in range(first, len(messages)):
        if messages[k].get("role") != "assistant":
            continue
        before = render(messages[:k], tools, True)
        after = render(messages[: k + 1], tools, False)
        lo, hi = _lcp(before, full), _lcp(after, full)
        if lo < len(before) or hi < len(after):
            notes.append(f"turn {k}: the template renders it differently in the full history")
        for i in range(max(lo, start), hi):
            mask[i] = 1
        turns += 1
    response = full[start:]
    return TokenSequence(
        prompt_ids=full[:start],
        response_ids=response,
        response_mask=mask[start:],
        response_logprobs=[0.0] * len(response),
        exact=False,
        num_turns=turns,
        calls_used=1,
        chains=1,
        logprobs_complete=False,
        notes=notes,
    )


# -- limits ------------------------------------------------------------------------------


def fit(seq: TokenSequence, max_prompt: int, max_response: int) -> TokenSequence:
    """Cut to the rollout lengths: the prompt keeps its end (as verl does), the response its
    start. Marks `truncated` when anything was cut."""
    if len(seq.prompt_ids) > max_prompt:
        seq.prompt_ids = seq.prompt_ids[-max_prompt:]
        seq.truncated = True
    if len(seq.response_ids) > max_response:
        seq.response_ids = seq.response_ids[:max_response]
        seq.response_mask = seq.response_mask[:max_response]
        seq.response_logprobs = seq.response_logprobs[:max_response]
        seq.truncated = True
    return seq


def from_trial_dir(
    record_dir: Path,
    render: Render | None = None,
    stats: TrajectoryStats | None = None,
) -> TokenSequence | None:
    """Exact tokens from `record_dir/litellm-trajectory.jsonl`, else the template fallback (when
    `render` is given), else None (no usable call)."""
    stats = stats if stats is not None else TrajectoryStats()
    records = read_records(record_dir / TRAJECTORY_FILE, stats)
    exact = assemble_exact(calls_from_records(records, stats))
    if exact is not None:
        return exact
    if render is None:
        return None
    conversation = final_messages(records)
    if conversation is None:
        return None
    seq = assemble_from_messages(conversation[0], conversation[1], render)
    seq.calls_total = stats.succeeded
    seq.weight_versions = sorted(stats.weight_versions)
    return seq
