"""Real listening processes for tests: ours (with the bundle marker) or someone else's."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hvt.ownership import MARKER, marker_value
from tests.helpers.timing import scaled

SERVER = (
    "import http.server, sys; "
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), "
    "http.server.SimpleHTTPRequestHandler).serve_forever()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def listener(port: int, workdir: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    """A process listening on 127.0.0.1:port; marked as the bundle's when workdir is given."""
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    if workdir is not None:
        env[MARKER] = marker_value(workdir)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + scaled(15)
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"test listener on {port} did not start")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
