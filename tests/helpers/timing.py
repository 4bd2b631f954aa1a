"""Wall-clock limits for tests on shared, noisy machines.

A test that waits for something (a process to start, a port to open, a child to die) gives up at
a deadline. Write that deadline as ``scaled(seconds)``, with the time it needs on a quiet
machine: it is multiplied by ``HVT_TEST_TIME_SCALE`` (a positive number; default 3, so that CI
runners and development machines shared by several people, up to three times slower, still
pass). Set ``HVT_TEST_TIME_SCALE=1`` on a quiet machine to have a hang reported sooner.

For deadlines only: a wait that polls for its condition ends as soon as the condition holds, so
a larger limit costs nothing when things work. Never scale a fixed ``time.sleep``: poll for the
condition until a scaled deadline instead.
"""

from __future__ import annotations

import os

ENV = "HVT_TEST_TIME_SCALE"
DEFAULT_SCALE = 3.0


def time_scale() -> float:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_SCALE
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{ENV}={raw!r} must be greater than 0")
    return value


def scaled(seconds: float) -> float:
    """`seconds` (enough on a quiet machine) stretched for this machine's load."""
    return seconds * time_scale()
