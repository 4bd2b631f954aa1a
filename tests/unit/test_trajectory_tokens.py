"""Trajectory records -> prompt/response/mask/logprobs: exact ids, chains, the template fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from hvt.trajectory import record as trajectory_record
from verl_patch.trajectory_tokens import (
    TRAJECTORY_FILE,
    TrajectoryStats,
    assemble_exact,
    assemble_from_messages,
    calls_from_records,
    final_messages,
    fit,
    from_trial_dir,
    read_records,
)


def record(
    t: int,
    prompt: list[int] | None,
    completion: list[int] | None,
    logprobs: list[float] | None = None,
    success: bool = True,
    messages: list[dict[str, Any]] | None = None,
    answer: str = "",
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "token_ids": completion}
    if logprobs is not None:
        choice["logprobs"] = [{"token": f"<{i}>", "logprob": lp} for i, lp in enumerate(logprobs)]
    out: dict[str, Any] = {
        "schema": "hvt.trajectory/1",
        "success": success,
        "request_time": t,
        "request": {"messages": messages or [{"role": "user", "content": "hi"}], "tools": []},
        "tokens": {"prompt_token_ids": prompt, "choices": [choice]},
        "response": {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]
        },
    }
    if not success:
        out.pop("tokens")
        out["failure"] = {"status_code": 500, "message": "upstream error"}
    return out


def test_a_multi_turn_chain_is_one_exact_sequence() -> None:
    p0 = [1, 2, 3]
    c0 = [10, 11, 99]
    p1 = p0 + c0 + [20, 21]  # tool result rendered by the template
    c1 = [12, 99]
    p2 = p1 + c1 + [22]
    c2 = [13, 14, 99]
    calls = calls_from_records(
        [
            record(3000, p2, c2, [-0.5, -0.6, -0.7]),
            record(1000, p0, c0, [-0.1, -0.2, -0.3]),  # out of file order: sorted by time
            record(2000, p1, c1, [-0.4, -0.45]),
        ]
    )
    seq = assemble_exact(calls)
    assert seq is not None
    assert seq.prompt_ids == p0
    assert seq.response_ids == [*c0, 20, 21, *c1, 22, *c2]
    assert seq.response_mask == [1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1]
    assert seq.response_logprobs == [-0.1, -0.2, -0.3, 0, 0, -0.4, -0.45, 0, -0.5, -0.6, -0.7]
    assert (seq.exact, seq.num_turns, seq.chains, seq.calls_used) == (True, 3, 1, 3)
    assert seq.logprobs_complete
    assert p0 + seq.response_ids == p2 + c2  # the sequence is exactly the last call's view


def test_side_calls_start_their_own_chain_and_the_longest_wins() -> None:
    main0, main1 = [1, 2], [1, 2, 10, 11, 3]
    side = [7, 7, 7]  # e.g. a quick title/summary request with another system prompt
    calls = calls_from_records(
        [
            record(1, main0, [10, 11], [-1.0, -1.0]),
            record(2, side, [50], [-0.5]),
            record(3, main1, [12, 13, 14], [-1.0] * 3),
        ]
    )
    seq = assemble_exact(calls)
    assert seq is not None
    assert seq.prompt_ids == main0
    assert (seq.chains, seq.calls_total, seq.calls_used) == (2, 3, 2)
    assert seq.metrics()["chains"] == 2.0


def test_a_rerendered_history_breaks_the_chain() -> None:
    # the template dropped the first answer's reasoning tokens when rendering turn 2
    calls = calls_from_records(
        [
            record(1, [1, 2], [30, 31, 10], [-1.0] * 3),
            record(2, [1, 2, 10, 5], [11, 12], [-1.0] * 2),
        ]
    )
    seq = assemble_exact(calls)
    assert seq is not None
    assert seq.chains == 2 and seq.calls_used == 1
    assert seq.response_ids == [30, 31, 10]  # the longer sampled chain


def test_missing_logprobs_are_zero_and_reported() -> None:
    seq = assemble_exact(calls_from_records([record(1, [1], [5, 6], None)]))
    assert seq is not None
    assert seq.response_logprobs == [0.0, 0.0]
    assert not seq.logprobs_complete


def test_failed_and_tokenless_calls_are_counted_not_used(tmp_path: Path) -> None:
    path = tmp_path / TRAJECTORY_FILE
    lines = [
        json.dumps(record(1, [1, 2], [3], [-0.1])),
        json.dumps(record(2, None, None, success=False)),
        json.dumps(record(3, None, [4])),  # tokens_status "missing": no prompt ids
        '{"torn": ',  # a line cut short by a crash
    ]
    path.write_text("\n".join(lines))
    stats = TrajectoryStats()
    calls = calls_from_records(read_records(path, stats), stats)
    assert (stats.records, stats.bad_lines, stats.succeeded, stats.failed) == (3, 1, 2, 1)
    assert stats.with_tokens == 1 and len(calls) == 1
    assert not stats.context_overflow


def test_fit_cuts_to_the_rollout_lengths() -> None:
    seq = assemble_exact(calls_from_records([record(1, [1, 2, 3, 4], [5, 6, 7], [-1.0] * 3)]))
    assert seq is not None
    fit(seq, max_prompt=2, max_response=2)
    assert seq.prompt_ids == [3, 4]  # verl keeps a prompt's end
    assert seq.response_ids == [5, 6] and len(seq.response_mask) == len(seq.response_logprobs) == 2
    assert seq.truncated


def test_records_written_by_the_proxy_logger_are_read_back(tmp_path: Path) -> None:
    """The writer side (hvt.trajectory.record) and this reader agree on the record format."""
    kwargs = {
        "call_type": "acompletion",
        "litellm_call_id": "abc",
        "litellm_params": {
            "proxy_server_request": {
                "headers": {"x-harbor-trial-dir": "step_0001/t-1"},
                "body": {"model": "vllm_model", "messages": [{"role": "user", "content": "hi"}]},
            }
        },
    }
    response = {
        "id": "x",
        "object": "chat.completion",
        "prompt_token_ids": [5, 6, 7],
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello there"},
                "token_ids": [8, 9],
                "logprobs": {
                    "content": [
                        {"token": "hello", "logprob": -0.25},
                        {"token": " there", "logprob": -1.5},
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    rec = trajectory_record.build(kwargs, response, 1000.0, 1001.0, success=True)
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / TRAJECTORY_FILE).write_text(json.dumps(rec) + "\n")
    seq = from_trial_dir(agent)
    assert seq is not None and seq.exact
    assert (seq.prompt_ids, seq.response_ids, seq.response_logprobs) == (
        [5, 6, 7],
        [8, 9],
        [-0.25, -1.5],
    )


# -- fallback through a real tokenizer and a ChatML template --------------------------------

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def render() -> Any:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|im_start\|>|<\|im_end\|>|\s+"), "isolated")
    words = ["user", "assistant", "system", "tool", "fix", "the", "bug", "done", "run", "tests"]
    words += ["ok", "."]
    corpus = ["<|im_start|>", "<|im_end|>", "\n", " ", *words]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    template = jinja2.Environment().from_string(CHATML)

    def _render(
        messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool
    ) -> list[int]:
        text = template.render(messages=messages, add_generation_prompt=add_generation_prompt)
        return list(tok.encode(text).ids)

    _render.decode = lambda ids: tok.decode(ids, skip_special_tokens=False)  # type: ignore[attr-defined]
    return _render


def test_fallback_masks_only_the_assistant_turns(render: Any) -> None:
    messages = [
        {"role": "system", "content": "fix the bug"},
        {"role": "user", "content": "run tests"},
        {"role": "assistant", "content": "run tests"},
        {"role": "tool", "content": "ok ."},
        {"role": "assistant", "content": "done"},
    ]
    seq = assemble_from_messages(messages, None, render)
    assert not seq.exact and seq.num_turns == 2 and not seq.notes
    assert seq.prompt_ids == render(messages[:2], None, True)
    full = render(messages, None, False)
    assert seq.prompt_ids + seq.response_ids == full
    trained = [t for t, m in zip(seq.response_ids, seq.response_mask, strict=True) if m]
    # "run tests<|im_end|>\n" and "done<|im_end|>\n": the content and the end-of-turn tokens
    assert render.decode(trained).split() == ["run", "tests", "<|im_end|>", "done", "<|im_end|>"]
    assert seq.response_logprobs == [0.0] * len(seq.response_ids)


def test_from_trial_dir_falls_back_when_no_call_has_token_ids(tmp_path: Path, render: Any) -> None:
    agent = tmp_path / "agent"
    agent.mkdir()
    msgs = [{"role": "user", "content": "fix the bug"}]
    (agent / TRAJECTORY_FILE).write_text(
        json.dumps(record(1, None, None, messages=msgs, answer="done")) + "\n"
    )
    assert from_trial_dir(agent) is None  # no render: nothing to build
    seq = from_trial_dir(agent, render)
    assert seq is not None and not seq.exact
    assert seq.metrics()["tokens_fallback"] == 1.0
    conversation = final_messages(read_records(agent / TRAJECTORY_FILE))
    assert conversation is not None and conversation[0][-1] == {
        "role": "assistant",
        "content": "done",
    }
