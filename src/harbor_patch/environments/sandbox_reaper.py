"""Delete this process's sandboxes when it exits or is told to stop (SIGTERM, SIGHUP, SIGQUIT,
SIGINT), so a killed trainer does not leave pods behind. activeDeadlineSeconds is the backstop
for what even this cannot catch (SIGKILL, a lost node).

Handlers are installed on first use, chain to whatever handler was there before, and then let
the signal do what it would have done. Installing needs the main thread; elsewhere only the
atexit hook is used (and said so in the log).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)

_live: dict[str, Callable[[], None]] = {}
_lock = threading.Lock()
_previous: dict[int, Any] = {}
_installed = False


def register(key: str, delete: Callable[[], None]) -> None:
    _install()
    with _lock:
        _live[key] = delete


def unregister(key: str) -> None:
    with _lock:
        _live.pop(key, None)


def live() -> list[str]:
    with _lock:
        return list(_live)


def reap_all() -> int:
    """Delete every registered sandbox; returns how many deletions were attempted."""
    with _lock:
        items = list(_live.items())
        _live.clear()
    for key, delete in items:
        try:
            delete()
        except Exception as exc:  # keep going: the others still need deleting
            log.warning("could not delete sandbox %s: %s", key, exc)
    return len(items)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    count = reap_all()
    if count:
        log.warning("signal %d: deleted %d sandbox(es)", signum, count)
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    atexit.register(reap_all)
    if threading.current_thread() is not threading.main_thread():
        log.info("not the main thread: sandboxes are deleted at exit, not on signals")
        return
    for signum in SIGNALS:
        _previous[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)
