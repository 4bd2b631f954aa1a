"""Trials wait for the proxy's start-up (verl_patch.proxy_ready), against a real HTTP server."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from verl_patch import proxy_ready


class _Liveness(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == proxy_ready.LIVENESS else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def late_proxy() -> Iterator[str]:
    """A proxy that starts listening 1.5 s after the trials asked."""
    port = _free_port()
    server: list[http.server.HTTPServer] = []

    def start() -> None:
        time.sleep(1.5)
        server.append(http.server.HTTPServer(("127.0.0.1", port), _Liveness))
        server[0].serve_forever()

    threading.Thread(target=start, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    if server:
        server[0].shutdown()


def test_trials_wait_for_a_proxy_still_starting(late_proxy: str) -> None:
    started = time.monotonic()
    asyncio.run(proxy_ready.wait(late_proxy, limit_s=30, poll_s=0.2))
    assert 1.0 < time.monotonic() - started < 20
    again = time.monotonic()
    asyncio.run(proxy_ready.wait(late_proxy, limit_s=30, poll_s=0.2))  # known good: no request
    assert time.monotonic() - again < 0.1


def test_a_proxy_that_never_answers_stops_with_its_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(proxy_ready.ProxyNotReady) as err:
        asyncio.run(proxy_ready.wait(url, limit_s=0.5, poll_s=0.1))
    assert url in str(err.value) and "HVT_PROXY_URL" in str(err.value)
    assert "no trial was started" in str(err.value)


def test_no_proxy_configured_waits_for_nothing() -> None:
    asyncio.run(proxy_ready.wait(None))
    with pytest.raises(proxy_ready.ProxyNotReady, match="not an http"):
        asyncio.run(proxy_ready.wait("litellm:8002"))
