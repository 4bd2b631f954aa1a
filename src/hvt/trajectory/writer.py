"""Append JSONL records to trial trajectory files from a background thread.

Callers `submit()` and return at once (the proxy's event loop never waits on the disk). The
writer thread serializes each record to one line and appends it with a single `os.write` on an
O_APPEND descriptor while holding an exclusive `flock`, so lines from several threads or proxy
worker processes never interleave. Routes are validated by `trajectory_paths`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hvt.trajectory import paths as trajectory_paths

log = logging.getLogger("hvt.trajectory")
_STOP = object()


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One JSON object and a newline; non-JSON values become strings."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text + "\n").encode("utf-8")


def append_line(fd: int, line: bytes) -> None:
    """Append a whole line under an exclusive lock; one write unless the kernel writes short."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        view = memoryview(line)
        written = os.write(fd, view)
        while written < len(view):  # only on a full disk or a signal; still under the lock
            written += os.write(fd, view[written:])
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class TrajectoryWriter:
    def __init__(self, root: Path, max_queue: int = 100_000) -> None:
        self.root = root
        self.stats: Counter[str] = Counter()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hvt-trajectory", daemon=True)
        self._thread.start()

    def submit(self, trial_dir: str, record: Mapping[str, Any]) -> bool:
        """Queue a record for `<root>/<trial_dir>/agent/...`; False (and logged) if refused."""
        try:
            parts = trajectory_paths.trial_parts(self.root, trial_dir)
        except trajectory_paths.RouteRefused as exc:
            self._count("refused")
            log.error(
                "trajectory record refused: %s=%r: %s", trajectory_paths.HEADER, trial_dir, exc
            )
            return False
        try:
            self._queue.put_nowait((parts, record))
        except queue.Full:
            self._count("dropped")
            log.error(
                "trajectory queue full (%d); record for %r dropped", self._queue.maxsize, trial_dir
            )
            return False
        return True

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued record is written (or refused); False on timeout."""
        done = threading.Event()
        try:
            self._queue.put((None, done), timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            parts, payload = item
            if parts is None:
                payload.set()
                continue
            try:
                line = encode_line(payload)
                fd = trajectory_paths.open_for_append(self.root, parts)
                try:
                    append_line(fd, line)
                finally:
                    os.close(fd)
                self._count("written")
            except trajectory_paths.RouteRefused as exc:
                self._count("refused")
                log.error("trajectory record refused: %s", exc)
            except Exception:  # never let one record stop the writer
                self._count("errors")
                log.exception("trajectory record for %s not written", "/".join(parts))
