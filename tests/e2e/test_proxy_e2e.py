"""End to end: a real Ray cluster, discovery, real LiteLLM under `hvt proxy`, trajectory files.

The replicas are CPU Ray actors named like verl's (`vllm_server_{i}_0`, anonymous namespace,
not detached, `get_server_address()`), backed by the fake vLLM server: the policy is not what
is tested here. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from hvt.run import ray_auth
from hvt.trajectory import credentials

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import proxy_fake_vllm  # noqa: E402

from tests.helpers import prerequisites  # noqa: E402
from tests.helpers.timing import scaled  # noqa: E402

# the session fixture (`make proxy-venv`, live log), under the name test_proxy_restart.py imports
proxy_venv = prerequisites.proxy_venv

VENV_BIN = Path(sys.executable).parent
MASTER_KEY = "sk-hvt-e2e-" + os.urandom(8).hex()
SIGNING_KEY = "signing-e2e-" + os.urandom(16).hex()
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # node IP 127.0.0.1, not the LAN IP

pytestmark = [pytest.mark.slow, pytest.mark.timeout(scaled(600))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_outside_ray_worker_range() -> int:
    while True:
        port = free_port()
        if not 10002 <= port <= 19999:
            return port


def kill_group(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(check: Any, timeout_s: float, what: str, proc: subprocess.Popen[Any] | None = None):
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            result = check()
        except (OSError, urllib.error.URLError):
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {scaled(timeout_s):.0f} s")


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    if shutil.which("ray", path=str(VENV_BIN)) is None:
        pytest.fail("ray is not installed in the operator venv (make venv)", pytrace=False)
    temp = Path(f"/tmp/hvt-e2e-ray-{os.getpid()}")  # short: Ray's socket paths have a length cap
    temp.mkdir(exist_ok=True)
    port = free_port_outside_ray_worker_range()
    env = {**os.environ, **LOOPBACK_RAY, **ray_auth.settings(temp), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path_factory.mktemp("ray") / "ray.log").open("w")
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
            "--include-dashboard=false",
            f"--dashboard-agent-listen-port={free_port_outside_ray_worker_range()}",
            f"--dashboard-port={free_port_outside_ray_worker_range()}",
            "--disable-usage-stats", f"--temp-dir={temp}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"

        def gcs_up() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_until(gcs_up, 90, "Ray head", proc)
        yield RayCluster(address, env)
    finally:
        kill_group(proc, grace_s=4.0)  # `ray start --block` takes its time; its group goes anyway
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


class Replicas:
    """A driver process holding `count` fake replica actors (like verl's trainer does)."""

    def __init__(self, cluster: RayCluster, count: int, start: int = 0, delay_s: float = 0) -> None:
        # the driver's stderr, shown if it dies; closed in stop()
        self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable, str(HERE / "proxy_ray_replicas.py"),
                "--address", cluster.address, "--replicas", str(count),
                "--start-index", str(start), "--delay-s", str(delay_s),
            ],
            env={**cluster.env, "HVT_ACTOR_START_TIMEOUT_S": str(scaled(60))},
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        self.ports: dict[int, int] = {}
        assert self.proc.stdout is not None
        deadline = time.monotonic() + scaled(120)
        while len(self.ports) < count and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                self.errors.seek(0)
                tail = self.errors.read()[-3000:]
                raise AssertionError(f"replica driver exited with {self.proc.wait()}:\n{tail}")
            if line.startswith("READY "):
                _, index, addr = line.split()
                self.ports[int(index)] = int(addr.rsplit(":", 1)[1])
        assert len(self.ports) == count, f"replicas did not start within {scaled(120):.0f} s"

    def stats(self, index: int) -> dict[str, int]:
        status, body = http("GET", f"http://127.0.0.1:{self.ports[index]}/stats")
        assert status == 200
        return dict(json.loads(body)["counts"])

    def stop(self) -> None:
        kill_group(self.proc)
        self.errors.close()


def hvt_litellm_config(
    cluster: RayCluster, out: Path, *args: str, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(VENV_BIN / "hvt"), "litellm-config", "--out", str(out),
            "--ray-address", cluster.address, "--poll", "1", *args,
        ],
        env=cluster.env, capture_output=True, text=True, timeout=scaled(timeout_s),
    )  # fmt: skip


def test_discovery_waits_for_all_replicas_and_proxy_serves_them(
    ray_cluster: RayCluster, proxy_venv: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared" / "litellm"
    config = shared / "config.yaml"
    trials = tmp_path / "trials"
    for trial in ("t-chat", "t-msgs", "t-stream", "t-cred", "t-other"):
        (trials / "step_0001" / trial).mkdir(parents=True)
    key_file = tmp_path / "master_key"
    key_file.write_text(MASTER_KEY + "\n")
    key_file.chmod(0o600)
    signing_file = tmp_path / "proxy_signing_key"
    signing_file.write_text(SIGNING_KEY + "\n")
    signing_file.chmod(0o600)

    # The proxy starts first (as in compose) and waits for the config.
    proxy_log = (tmp_path / "proxy.log").open("w")
    port = free_port()
    proxy_env = {
        **os.environ,
        "LITELLM_MASTER_KEY_FILE": str(key_file),
        credentials.SIGNING_KEY_FILE_ENV: str(signing_file),
    }
    proxy_env.pop("LITELLM_MASTER_KEY", None)
    proxy = subprocess.Popen(
        [
            str(proxy_venv / "bin" / "hvt"), "proxy", "--litellm-config", str(config),
            "--host", "127.0.0.1", "--port", str(port), "--trials-root", str(trials),
            "--workers", "2",  # what auto gives a 3-core proxy: every check below on 2 workers
        ],
        env=proxy_env, stdout=proxy_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    tree: list[psutil.Process] = []
    replicas = Replicas(ray_cluster, 2, delay_s=4)  # named at once, serving only after 4 s
    extra: Replicas | None = None
    watcher: subprocess.Popen[str] | None = None
    base = f"http://127.0.0.1:{port}"
    try:
        # 1. Discovery: too few replicas within the limit fails and writes nothing.
        short = hvt_litellm_config(ray_cluster, tmp_path / "partial.yaml", "--expected", "3",
                                   "--timeout", "6")  # fmt: skip
        assert short.returncode == 1, short.stderr
        assert "vllm_server_2_0: not registered in Ray" in short.stderr
        assert "waiting for vLLM replicas" in short.stderr
        assert not (tmp_path / "partial.yaml").exists()

        # 2. Discovery with the right count waits for both and writes them (in --watch mode).
        watcher = subprocess.Popen(
            [
                str(VENV_BIN / "hvt"), "litellm-config", "--out", str(config),
                "--ray-address", ray_cluster.address, "--poll", "1", "--expected", "2",
                "--timeout", str(scaled(120)), "--watch",
            ],
            env=ray_cluster.env, stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "watch.log").open("w"), text=True, start_new_session=True,
        )  # fmt: skip
        wait_until(config.exists, 120, "LiteLLM config written", watcher)
        cfg = yaml.safe_load(config.read_text())
        bases = {e["litellm_params"]["api_base"] for e in cfg["model_list"]}
        assert bases == {f"http://127.0.0.1:{p}/v1" for p in replicas.ports.values()}
        assert len(cfg["model_list"]) == 6

        # 3. The proxy picks the file up and serves; health endpoints answer without a key.
        def ready() -> bool:
            return http("GET", f"{base}/health/liveliness")[0] == 200

        wait_until(ready, 120, "LiteLLM liveliness", proxy)
        status, body = http("GET", f"{base}/health/readiness")
        assert status == 200 and json.loads(body)["status"] == "healthy"
        assert "2 LiteLLM workers (--workers 2)" in (tmp_path / "proxy.log").read_text()
        # the supervisor gave LiteLLM --num_workers 2, and LiteLLM runs two uvicorn workers
        tree = wait_until(lambda: litellm_workers(proxy.pid, 2), 120, "two LiteLLM workers", proxy)
        argv = tree[0].cmdline()
        assert argv[argv.index("--num_workers") + 1] == "2"
        assert argv[argv.index("--timeout_worker_healthcheck") + 1] == "120"

        # 4. Without the key, or with a wrong one: 401 on both APIs.
        chat = {"model": "vllm_model", "messages": [{"role": "user", "content": "hi"}]}
        msgs = {"model": "claude-sonnet-4-5", "max_tokens": 32,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        assert http("POST", f"{base}/v1/chat/completions", chat)[0] == 401
        assert http("POST", f"{base}/v1/chat/completions", chat,
                    {"Authorization": "Bearer sk-wrong-key-000000"})[0] == 401  # fmt: skip
        assert http("POST", f"{base}/v1/messages", msgs, {"x-api-key": "sk-wrong-000000"})[0] == 401
        assert http("GET", f"{base}/v1/models")[0] == 401

        # 5. OpenAI chat and Anthropic messages reach both replicas, trajectories are written.
        auth = {"Authorization": f"Bearer {MASTER_KEY}"}
        anth = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}
        schema = {"type": "object", "properties": {"path": {"type": "string"}}}
        tools = [{"name": "read", "description": "read a file", "input_schema": schema}]
        for i in range(12):
            status, body = http(
                "POST", f"{base}/v1/chat/completions",
                {**chat, "messages": [{"role": "user", "content": f"hi {i}"}]},
                {**auth, "x-harbor-trial-dir": "step_0001/t-chat"},
            )  # fmt: skip
            assert status == 200, body
            assert json.loads(body)["choices"][0]["message"]["content"].startswith("reply from r")
            status, body = http(
                "POST", f"{base}/v1/messages",
                {**msgs, "system": "be terse", "tools": tools,
                 "messages": [{"role": "user", "content": f"please CALL_TOOL {i}"}]},
                {**anth, "x-harbor-trial-dir": str(trials / "step_0001" / "t-msgs")},
            )  # fmt: skip
            assert status == 200, body
            reply = json.loads(body)
            assert reply["type"] == "message" and reply["content"][0]["type"] == "tool_use"
        for _ in range(4):  # streamed Anthropic calls: what claude-code sends
            status, body = http(
                "POST", f"{base}/v1/messages", {**msgs, "stream": True},
                {**anth, "x-harbor-trial-dir": "step_0001/t-stream"},
            )  # fmt: skip
            assert status == 200 and b"message_stop" in body
        # a request whose route escapes the root is served but its record is refused
        status, _ = http("POST", f"{base}/v1/chat/completions", chat,
                         {**auth, "x-harbor-trial-dir": "../../etc"})  # fmt: skip
        assert status == 200

        per_replica = [replicas.stats(i).get("chat", 0) for i in (0, 1)]
        assert sum(per_replica) == 12 + 12 + 4 + 1
        assert min(per_replica) > 0, f"not balanced over both replicas: {per_replica}"

        def records(trial: str, n: int) -> list[dict[str, Any]] | None:
            path = trials / "step_0001" / trial / "proxy" / "litellm-trajectory.jsonl"
            if not path.exists():
                return None
            lines = path.read_text().splitlines()
            return [json.loads(line) for line in lines] if len(lines) >= n else None

        chat_recs = wait_until(lambda: records("t-chat", 12), 30, "chat records")
        msg_recs = wait_until(lambda: records("t-msgs", 12), 30, "messages records")
        stream_recs = wait_until(lambda: records("t-stream", 4), 30, "stream records")
        for rec in chat_recs + msg_recs + stream_recs:
            assert rec["success"] is True
            assert rec["tokens_status"] == "ok"
            choice = rec["tokens"]["choices"][0]
            assert choice["token_ids"] and len(choice["logprobs"]) == len(choice["token_ids"])
            assert MASTER_KEY not in json.dumps(rec)
        for rec in chat_recs + msg_recs:
            assert rec["tokens"]["prompt_token_ids"]
            assert rec["tokens"]["prompt_token_ids_source"] == "response"
        for rec in stream_recs:  # LiteLLM drops them from streams: vLLM's /tokenize fills in
            assert rec["tokens"]["prompt_token_ids_source"] == "vllm-tokenize"
            assert rec["tokens"]["prompt_token_ids"] == proxy_fake_vllm.token_ids_for("hi")
        assert {r["deployment"]["api_base"] for r in chat_recs + msg_recs + stream_recs} == bases
        first = msg_recs[0]["request"]
        assert first["format"] == "anthropic"
        assert first["messages"][0] == {"role": "system", "content": "be terse"}
        assert first["tools"][0]["function"]["parameters"]["type"] == "object"
        assert msg_recs[0]["response"]["choices"][0]["message"]["tool_calls"]
        assert not list(trials.glob("**/etc"))
        wait_until(
            lambda: "trajectory record refused" in (tmp_path / "proxy.log").read_text(), 30,
            "the refused route is logged",
        )  # fmt: skip

        # 5b. A trial's own credential, what a sandbox holds: its calls pass and are recorded
        # in its trajectory; everything else is refused and logged (401/403).
        token = credentials.mint(SIGNING_KEY.encode(), "step_0001/t-cred", ("vllm_model",), 600)
        mine = {"Authorization": f"Bearer {token}", "x-harbor-trial-dir": "step_0001/t-cred"}
        status, body = http("POST", f"{base}/v1/chat/completions", chat, mine)
        assert status == 200, body
        status, body = http(
            "POST", f"{base}/v1/messages", {**msgs, "model": "vllm_model"},
            {"x-api-key": token, "anthropic-version": "2023-06-01",
             "x-harbor-trial-dir": "step_0001/t-cred"},
        )  # fmt: skip
        assert status == 200, body
        wait_until(lambda: records("t-cred", 2), 30, "the credential's calls are recorded")
        other = {**mine, "x-harbor-trial-dir": "step_0001/t-other"}
        assert http("POST", f"{base}/v1/chat/completions", chat, other)[0] == 403
        assert (
            http("POST", f"{base}/v1/chat/completions", {**chat, "model": "gpt-4o"}, mine)[0] == 403
        )
        for path, payload in (("/key/generate", {}), ("/model/new", {}), ("/config/update", {})):
            assert http("POST", f"{base}{path}", payload, mine)[0] == 403, path
        for path in ("/model/info", "/v1/models", "/get/config/callbacks"):
            assert http("GET", f"{base}{path}", None, mine)[0] == 403, path
        credentials.revoke(trials / "step_0001" / "t-cred")
        assert http("POST", f"{base}/v1/chat/completions", chat, mine)[0] == 401
        expired = credentials.mint(SIGNING_KEY.encode(), "step_0001/t-other", ("vllm_model",), 1,
                                   now=time.time() - 60)  # fmt: skip
        assert http("POST", f"{base}/v1/chat/completions", chat,
                    {**other, "Authorization": f"Bearer {expired}"})[0] == 401  # fmt: skip
        assert records("t-other", 1) is None  # nothing refused reached the trajectory
        log_text = (tmp_path / "proxy.log").read_text()
        assert "trial credential refused: its trial has ended (trial step_0001/t-cred" in log_text

        # 6. A third replica appears: --watch rewrites the file, the proxy restarts LiteLLM.
        extra = Replicas(ray_cluster, 1, start=2)
        wait_until(lambda: f"127.0.0.1:{extra.ports[2]}" in config.read_text(), 60,
                   "config rewritten with the new replica", watcher)  # fmt: skip
        wait_until(
            lambda: "LiteLLM config changed" in (tmp_path / "proxy.log").read_text(), 30,
            "proxy noticed the change", proxy,
        )  # fmt: skip

        def new_replica_served() -> bool:
            status, _ = http("POST", f"{base}/v1/chat/completions", chat, auth)
            return status == 200 and extra is not None and extra.stats(2).get("chat", 0) > 0

        wait_until(new_replica_served, 120, "requests reach the new replica", proxy)
        assert proxy.poll() is None
    finally:
        if watcher is not None:
            kill_group(watcher)
        kill_group(proxy)
        proxy_log.close()
        for group in (replicas, extra):
            if group is not None:
                group.stop()
    # LiteLLM went down with the supervisor
    assert http_refused(port)
    wait_until(lambda: not any(alive(p) for p in tree), 30, "LiteLLM's workers gone")


def litellm_workers(supervisor_pid: int, count: int) -> list[psutil.Process] | None:
    """[litellm, its uvicorn workers...] under `hvt proxy` once `count` workers run."""
    children = psutil.Process(supervisor_pid).children()
    litellm = [c for c in children if "--num_workers" in c.cmdline()]
    if len(litellm) != 1:
        return None
    workers = [w for w in litellm[0].children() if "spawn_main" in " ".join(w.cmdline())]
    return [litellm[0], *workers] if len(workers) == count else None


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def http_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_proxy_refuses_to_start_without_a_master_key(proxy_venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_MASTER_KEY")}
    result = subprocess.run(
        [str(proxy_venv / "bin" / "hvt"), "proxy", "--litellm-config", str(tmp_path / "c.yaml"),
         "--trials-root", str(tmp_path), "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "refusing to start without a master key" in result.stderr
    assert "LITELLM_MASTER_KEY_FILE" in result.stderr
