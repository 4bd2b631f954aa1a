"""Why a trial ended, and whether running it again is worth it.

Taxonomy (first match wins):

* `timeout`           the agent or verifier ran out of time (Harbor's AgentTimeoutError /
                      VerifierTimeoutError), or the tail-killer stopped the trial;
* `env_setup_failed`  the sandbox or the agent never got to run (build, start, agent setup);
* `overlong`          the context overflowed (a context-window error from the model or the
                      proxy), or the token sequence had to be cut to fit the rollout lengths;
* `max_turns_reached` claude-code stopped at its turn limit (`error_max_turns`);
* `agent_completed`   everything else: the agent ended on its own (also with a non-zero exit).

Retry rule: a trial is run again (whole: sandbox, agent, verifier) only when it produced no
verifier result, and never for `timeout` or `overlong` (running longer or again would not
fit either), up to `max_retries` extra attempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Termination(StrEnum):
    AGENT_COMPLETED = "agent_completed"
    MAX_TURNS_REACHED = "max_turns_reached"
    OVERLONG = "overlong"
    TIMEOUT = "timeout"
    ENV_SETUP_FAILED = "env_setup_failed"


TIMEOUT_EXCEPTIONS = frozenset({"AgentTimeoutError", "VerifierTimeoutError"})
SETUP_EXCEPTIONS = frozenset({"EnvironmentStartTimeoutError", "AgentSetupTimeoutError"})
OVERLONG_EXCEPTIONS = frozenset({"ContextWindowExceededError", "OutputTokenExceededError"})
MAX_TURNS_SUBTYPES = frozenset({"error_max_turns"})
NO_RETRY = frozenset({Termination.TIMEOUT, Termination.OVERLONG})


@dataclass(frozen=True)
class TrialFacts:
    exception_type: str | None = None  # result.json exception_info.exception_type
    agent_started: bool = False  # the agent phase began (result.json agent_execution)
    has_reward: bool = False  # the verifier left a usable reward
    stop_subtype: str | None = None  # claude-code's final stream-json `result` subtype
    context_overflow: bool = False  # a model call failed for context length
    truncated: bool = False  # tokens were cut to the rollout prompt/response lengths
    tail_killed: bool = False


def classify(facts: TrialFacts) -> Termination:
    if facts.tail_killed or facts.exception_type in TIMEOUT_EXCEPTIONS:
        return Termination.TIMEOUT
    if facts.exception_type in SETUP_EXCEPTIONS or (
        not facts.agent_started and (facts.exception_type is not None or not facts.has_reward)
    ):
        return Termination.ENV_SETUP_FAILED
    if facts.context_overflow or facts.truncated or facts.exception_type in OVERLONG_EXCEPTIONS:
        return Termination.OVERLONG
    if facts.stop_subtype in MAX_TURNS_SUBTYPES:
        return Termination.MAX_TURNS_REACHED
    return Termination.AGENT_COMPLETED


def should_retry(
    termination: Termination, has_reward: bool, attempt: int, max_retries: int
) -> bool:
    """`attempt` counts from 0; `max_retries` extra attempts are allowed after the first."""
    return not has_reward and termination not in NO_RETRY and attempt < max_retries
