"""Calls the replica aborted: recognise them in LiteLLM's objects and turn them into a retryable
error for the client, so no agent ever takes a cut-off answer for a finished turn.

Why: under `training.mode: colocate_async` verl aborts every generation call in flight at each
step boundary (vLLM answers finish_reason `abort`, with the tokens sampled so far) and new calls
wait until the weights are updated. LiteLLM (1.108) does not know `abort`: it maps it to
`stop`, and its Anthropic adapter to `end_turn`, so claude-code would get half an answer as a
complete one and build the rest of its trial on it.

What the proxy does instead (`hvt.trajectory.logger` calls these from its LiteLLM hooks):

* `register_abort_finish_reason()` makes LiteLLM map `abort` to `finish_reason_unspecified`
  (a value its response models accept and that vLLM never sends), so an aborted call stays
  recognisable in streamed chunks, where LiteLLM keeps no native finish reason;
* an aborted answer is replaced by `AbortedCall`: HTTP 529 with Anthropic's `overloaded_error`
  before any byte was sent (non-streamed calls), or an `event: error` frame of that type (an
  OpenAI `data: {"error": ...}` frame on the chat route) in place of the stream's closing
  events. Clients retry that error (it is what Anthropic sends when it is overloaded); the
  retry waits at the replica until the update is done and is served by the new weights;
* the trajectory record of the aborted call says so (`aborted: true`, `finish_reason:
  "abort"`, the failure as the client saw it, the partial token ids for inspection):
  `verl_patch.trajectory_tokens` never splices it into a training sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ABORT = "abort"  # vLLM's finish_reason for a request ended by abort_all_requests
MARK = "finish_reason_unspecified"  # what LiteLLM carries it as (register_abort_finish_reason)
STATUS = 529
ERROR_TYPE = "overloaded_error"
MESSAGE = (
    "the policy's replica aborted this call (a weight update between training steps); "
    "retry it: the retry is served once the new weights are loaded"
)


class AbortedCall(Exception):
    """The client's view of an aborted call. LiteLLM's proxy reads `status_code`, `message`
    and `type` from the exception it gets from a hook (an Anthropic error frame's type comes
    from the status: 529 is `overloaded_error`)."""

    def __init__(self) -> None:
        super().__init__(MESSAGE)
        self.status_code = STATUS
        self.message = MESSAGE
        self.type = ERROR_TYPE


def register_abort_finish_reason() -> bool:
    """Teach LiteLLM's finish-reason map `abort` (True when the map was found and changed).

    The target must map to itself: LiteLLM maps a streamed finish reason twice."""
    try:
        from litellm.litellm_core_utils import core_helpers
    except ImportError:
        return False
    table = getattr(core_helpers, "_FINISH_REASON_MAP", None)
    if not isinstance(table, dict):
        return False
    table[ABORT] = MARK
    table[MARK] = MARK
    return True


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def choice_aborted(choice: Any) -> bool:
    """An OpenAI-shape choice (dict or LiteLLM object) that the replica aborted."""
    reason = _get(choice, "finish_reason")
    native = _get(_get(choice, "provider_specific_fields") or {}, "native_finish_reason")
    return reason in (ABORT, MARK) or native == ABORT


def response_aborted(response: Any) -> bool:
    """A chat.completion (or a streamed chunk) with an aborted choice."""
    choices = _get(response, "choices")
    return isinstance(choices, list | tuple) and any(choice_aborted(c) for c in choices)


def stream_aborted(chunks: Iterable[Any] | None) -> bool:
    return any(response_aborted(chunk) for chunk in chunks or ())


def mark_record(record: dict[str, Any]) -> dict[str, Any]:
    """Turn a call record into the record of an aborted call (the client got `AbortedCall`)."""
    record["aborted"] = True
    record["finish_reason"] = ABORT
    record["success"] = False
    record["failure"] = {
        "status_code": STATUS,
        "error_type": AbortedCall.__name__,
        "message": MESSAGE,
    }
    return record
