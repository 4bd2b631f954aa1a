"""Runs INSIDE a sandbox (python3, standard library only): what can this sandbox reach?

`python3 egress_probe.py agent`: with the environment claude-code gets (ANTHROPIC_BASE_URL,
ANTHROPIC_API_KEY, ANTHROPIC_CUSTOM_HEADERS, ANTHROPIC_MODEL) plus PROBE_* values from the test:
calls the proxy with the trial's own credential, with another trial's route, with an expired
and a revoked credential, on admin routes; tries the proxy directly (not through the relay) and
an HTTP server outside the allowlist; lists the sha256 of every `sk-...` token found in any
process's environment or command line and in the filesystem (canaries in its own environment
and in a file it writes prove the scan finds them). `python3 egress_probe.py verifier`: tries
the relay, the proxy and the outside server. Prints one JSON object.
"""

import hashlib
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request

TIMEOUT = float(os.environ.get("PROBE_TIMEOUT", "8"))  # for what must not answer
CALL_TIMEOUT = float(os.environ.get("PROBE_CALL_TIMEOUT", "60"))  # for the proxy's answers
TOKEN = re.compile(rb"sk-[A-Za-z0-9_-]{6,}")
SKIP_DIRS = ("/proc", "/sys", "/dev", "/usr")
MAX_FILE = 4 << 20


def http(method, url, headers=None, body=None, timeout=TIMEOUT):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return {"status": response.status, "body": response.read(4000).decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read(4000).decode(errors="replace")}
    except Exception as exc:  # unreachable: that is what we look for
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}


def tcp(host, port):
    try:
        socket.create_connection((host, int(port)), TIMEOUT).close()
        return "open"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def tokens_in(data, found):
    for match in TOKEN.findall(data):
        found.add(hashlib.sha256(match).hexdigest())


def secret_hashes():
    found = set()
    scanned = 0
    for value in os.environ.values():
        tokens_in(value.encode(), found)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            for name in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as handle:
                        tokens_in(handle.read(), found)
                except OSError:
                    pass
    for top, dirs, files in os.walk("/"):
        if top.startswith(SKIP_DIRS):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(top, name)
            try:
                if os.path.islink(path) or os.path.getsize(path) > MAX_FILE:
                    continue
                with open(path, "rb") as handle:
                    tokens_in(handle.read(), found)
                scanned += 1
            except OSError:
                pass
    return sorted(found), scanned


def agent():
    base = os.environ["ANTHROPIC_BASE_URL"].rstrip("/")
    key = os.environ["ANTHROPIC_API_KEY"]
    headers = dict(
        line.split(": ", 1) for line in os.environ["ANTHROPIC_CUSTOM_HEADERS"].splitlines()
    )
    message = {
        "model": os.environ["ANTHROPIC_MODEL"],
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello from the sandbox"}],
    }

    def call(token, route=None, path="/v1/messages", method="POST", body=message):
        sent = {"x-api-key": token, "anthropic-version": "2023-06-01", **headers}
        if route is not None:
            sent["x-harbor-trial-dir"] = route
        return http(method, base + path, sent, body, timeout=CALL_TIMEOUT)

    # a token only in a file (derived here, so in no environment or command line)
    canary = hashlib.sha256(os.environ["PROBE_CANARY"].encode()).hexdigest()[:24]
    with open("/root/.probe-canary", "w") as handle:
        handle.write(f"token=sk-file-{canary}\n")
    hashes, scanned = secret_hashes()
    return {
        "base_url": base,
        "credential_prefix": key.split(".", 1)[0],
        "own": call(key),
        "other_route": call(key, route=os.environ["PROBE_OTHER_ROUTE"]),
        "expired": call(os.environ["PROBE_EXPIRED"]),
        "revoked": call(os.environ["PROBE_REVOKED"]),
        "admin_key_generate": call(key, path="/key/generate", body={}),
        "admin_model_info": call(key, path="/model/info", method="GET", body=None),
        "proxy_direct": tcp(os.environ["PROBE_PROXY_HOST"], os.environ["PROBE_PROXY_PORT"]),
        "outside": http("GET", os.environ["PROBE_OUTSIDE_URL"]),
        "token_hashes": hashes,
        "files_scanned": scanned,
    }


def verifier():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets.json")) as f:
        targets = json.load(f)
    return {
        "relay": http("GET", targets["relay_url"] + "/health/liveliness"),
        "proxy_direct": tcp(targets["proxy_host"], targets["proxy_port"]),
        "outside": http("GET", targets["outside_url"]),
    }


if __name__ == "__main__":
    print(json.dumps(agent() if sys.argv[1:] == ["agent"] else verifier()))
