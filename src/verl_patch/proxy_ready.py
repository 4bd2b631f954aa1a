"""Wait, once per process, until the LiteLLM proxy answers before the first trial starts.

The trainer's launch writes the proxy's config when the replicas are up (discovery), and the
proxy then needs a while to start LiteLLM; verl's agent loop may start trials before that. A
claude-code whose first calls are refused backs off and can sit out its whole agent timeout, so
a trial would be lost to a start-up race. The agent loop calls `wait` before each trial: the
first caller polls the proxy's unauthenticated liveness route (`/health/liveliness`, what the
compose healthcheck asks), saying every 30 s what it waits for; later calls return at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

log = logging.getLogger(__name__)

LIVENESS = "/health/liveliness"
_ready: set[str] = set()


class ProxyNotReady(RuntimeError):
    pass


def _answers(url: str, timeout: float) -> str | None:
    """None when the proxy answers 200, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


async def wait(
    proxy_url: str | None, limit_s: float = 600.0, poll_s: float = 2.0, say_every_s: float = 30.0
) -> None:
    """Return once `proxy_url` answers (at once after the first success in this process)."""
    if not proxy_url or proxy_url in _ready:
        return
    if not proxy_url.startswith(("http://", "https://")):
        raise ProxyNotReady(f"HVT_PROXY_URL {proxy_url!r} is not an http(s) URL")
    url = urljoin(proxy_url.rstrip("/") + "/", LIVENESS.lstrip("/"))
    started = last_said = time.monotonic()
    while True:
        problem = await asyncio.to_thread(_answers, url, 5.0)
        waited = time.monotonic() - started
        if problem is None:
            _ready.add(proxy_url)
            if waited >= poll_s:
                log.info("the proxy at %s answers after %.0f s; trials start", proxy_url, waited)
            return
        if waited > limit_s:
            raise ProxyNotReady(
                f"the LiteLLM proxy at {proxy_url} (HVT_PROXY_URL) did not answer {LIVENESS} "
                f"within {limit_s:.0f} s ({problem}); no trial was started. See the proxy's log "
                "(docker compose logs litellm) and that the trainer reaches HVT_PROXY_URL"
            )
        if time.monotonic() - last_said >= say_every_s:
            log.info("waiting for the proxy at %s (%.0f s): %s", proxy_url, waited, problem)
            last_said = time.monotonic()
        await asyncio.sleep(poll_s)
