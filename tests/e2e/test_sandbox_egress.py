"""The sandbox boundary, proven from inside real Harbor sandboxes on this machine's engine and
on a TLS-only daemon (tests/helpers/tls_dockerd.py), against the real proxy (`hvt proxy`).

One trial per backend under the default `sandbox_network: proxy-only`, with the claude-code
adapter (egress_probe_agent.py: the real adapter up to the run, then egress_probe.py in the
sandbox with exactly the environment claude-code would get). The task says
`[verifier] network_mode = "no-network"`; its verifier runs the probe too. Asserted:

* agent phase: the proxy answers the trial's own credential through the relay; another trial's
  route, an expired credential, a revoked credential and admin routes are refused, each with a
  `trial credential refused` line in the proxy's log; the proxy's own port (bypassing the relay)
  and an HTTP server on this host outside the allowlist are unreachable; the master key is in
  no process environment, command line or file of the sandbox (a canary shows the scan works);
* verifier phase: neither the relay, nor the proxy, nor the outside server answers.

Controls (so that "unreachable" means something): a plain container on the default bridge of
each daemon reaches both servers, and under `sandbox_network: task` (a task that leaves its
agent phase public) the same probe in the same kind of sandbox reaches them too, while its
`no-network` verifier is cut off again (the switch back from public).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from harbor_patch.environments import agent_runtime, sandbox_egress
from harbor_patch.environments.docker_daemon import DockerDaemon
from hvt.proxy import litellm_config
from hvt.proxy.discovery import Replica
from hvt.trajectory import credentials
from tests.helpers import prerequisites
from tests.helpers.prerequisites import require_images
from tests.helpers.timing import scaled
from tests.helpers.tls_dockerd import DOCKERD_IMAGE, TlsDaemon, tls_dockerd
from verl_patch import harbor_trial
from verl_patch.rollout_settings import RolloutSettings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import proxy_fake_vllm  # noqa: E402

proxy_venv = prerequisites.proxy_venv

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(scaled(900))]

PYTHON_IMAGE = "local/python:3.12-bookworm"
RUNTIME_PATH = agent_runtime.DEFAULT_MOUNT_PATH
AGENT = "tests.e2e.egress_probe_agent:ProbeAgent"
REMOTE = "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"
SERVED = "policy-under-test"
MASTER_KEY = "sk-hvt-egress-" + uuid.uuid4().hex
SIGNING_KEY = "signing-egress-" + uuid.uuid4().hex
CANARY = "sk-canary-" + uuid.uuid4().hex
# A runtime image with python3 (the relay's interpreter, as in verl-swe-rl/agent-runtime) and a
# claude that prints a version (the adapter's mounted-runtime check); the task image builds on it.
RUNTIME_DOCKERFILE = f"""FROM {PYTHON_IMAGE}
RUN mkdir -p {RUNTIME_PATH}/bin \\
 && printf '#!/bin/sh\\necho "9.9.9 (Claude Code)"\\n' > {RUNTIME_PATH}/bin/claude \\
 && chmod 755 {RUNTIME_PATH}/bin/claude
"""
TASK_TOML = """schema_version = "1.4"

[verifier]
timeout_sec = {verifier_timeout}
environment_mode = "shared"
network_mode = "no-network"

[agent]
timeout_sec = {agent_timeout}

[environment]
build_timeout_sec = 600.0
os = "linux"
cpus = 1
memory_mb = 512
"""
TEST_SH = """#!/bin/bash
python3 /tests/egress_probe.py verifier > /logs/verifier/probe.json 2> /logs/verifier/probe.err
echo 1 > /logs/verifier/reward.txt
"""


@dataclass
class Servers:
    gateway: str  # this host, as containers on the default bridge reach it
    proxy_port: int
    outside_port: int
    trials: Path
    proxy_log: Path

    @property
    def proxy_url(self) -> str:
        return f"http://{self.gateway}:{self.proxy_port}"

    @property
    def outside_url(self) -> str:
        return f"http://{self.gateway}:{self.outside_port}/secret-upstream-fix"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {scaled(timeout_s):.0f} s")


class _Outside(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"the upstream fix"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def local(docker_engine: None) -> Iterator[docker.DockerClient]:
    require_images(PYTHON_IMAGE)
    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def runtime_image(local: docker.DockerClient) -> Iterator[str]:
    tag = f"hvt-e2e-egress/runtime:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "build", "-q", "--network=none", "-t", tag, "-"],
        input=RUNTIME_DOCKERFILE.encode(),
        check=True,
        capture_output=True,
    )
    yield tag
    with contextlib.suppress(docker.errors.DockerException):
        volume = agent_runtime.volume_name(local.images.get(tag).id)
        for name in (volume + agent_runtime.READY_SUFFIX, volume):
            with contextlib.suppress(docker.errors.DockerException):
                local.volumes.get(name).remove(force=True)
    with contextlib.suppress(docker.errors.DockerException):
        local.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def servers(
    local: docker.DockerClient, proxy_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """The real proxy (fake vLLM behind it) and an outside HTTP server, both bound to the
    default bridge's gateway address only."""
    gateway = local.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    root = tmp_path_factory.mktemp("egress")
    trials = root / "trials"
    trials.mkdir()
    vllm_port = proxy_fake_vllm.start_in_thread("127.0.0.1", SERVED, "r0")
    config = root / "litellm.yaml"
    litellm_config.write(
        config,
        [Replica(0, "127.0.0.1", vllm_port)],
        litellm_config.ProxySettings(served_model_name=SERVED),
    )
    key_file, signing_file = root / "master_key", root / "signing_key"
    for path, value in ((key_file, MASTER_KEY), (signing_file, SIGNING_KEY)):
        path.write_text(value + "\n")
        path.chmod(0o600)
    proxy_port = _free_port(gateway)
    proxy_log = root / "proxy.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),  # this checkout's code, whichever venv holds LiteLLM
        "LITELLM_MASTER_KEY_FILE": str(key_file),
        credentials.SIGNING_KEY_FILE_ENV: str(signing_file),
    }
    env.pop("LITELLM_MASTER_KEY", None)
    with proxy_log.open("w") as log:
        proxy = subprocess.Popen(
            [
                str(proxy_venv / "bin" / "hvt"), "proxy", "--litellm-config", str(config),
                "--host", gateway, "--port", str(proxy_port), "--trials-root", str(trials),
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    outside = ThreadingHTTPServer((gateway, 0), _Outside)
    threading.Thread(target=outside.serve_forever, daemon=True).start()
    try:

        def ready() -> bool:
            url = f"http://{gateway}:{proxy_port}/health/liveliness"
            with urllib.request.urlopen(url, timeout=5) as response:
                return bool(response.status == 200)

        _wait(ready, 180, f"hvt proxy on {gateway}:{proxy_port} (log: {proxy_log})")
        # one call from here first: LiteLLM's first request is slow, the sandboxes' must not be
        warm = urllib.request.Request(
            f"http://{gateway}:{proxy_port}/v1/messages",
            data=json.dumps(
                {"model": SERVED, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            headers={"x-api-key": MASTER_KEY, "content-type": "application/json"},
        )
        with urllib.request.urlopen(warm, timeout=scaled(120)) as response:
            assert response.status == 200
        yield Servers(gateway, proxy_port, int(outside.server_address[1]), trials, proxy_log)
    finally:
        outside.shutdown()
        outside.server_close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proxy.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.wait(scaled(20))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proxy.pid, 9)
        proxy.wait()


@pytest.fixture(scope="module")
def tls(
    tmp_path_factory: pytest.TempPathFactory, local: docker.DockerClient
) -> Iterator[TlsDaemon]:
    require_images(DOCKERD_IMAGE)
    with tls_dockerd(tmp_path_factory.mktemp("tlsd")) as daemon:
        remote = DockerDaemon(daemon.host, daemon.good_client).client()
        remote.images.load(local.images.get(PYTHON_IMAGE).save(named=True))  # the control's
        remote.close()
        yield daemon


def _control_reaches(client: docker.DockerClient, servers: Servers) -> None:
    """A plain container on the daemon's default bridge reaches both servers."""
    script = (
        "import sys, urllib.request\n"
        "for url in sys.argv[2:]:\n"
        "    print(urllib.request.urlopen(url, timeout=float(sys.argv[1])).status)\n"
    )
    urls = [servers.outside_url, servers.proxy_url + "/health/liveliness"]
    output = client.containers.run(
        PYTHON_IMAGE,
        ["python3", "-c", script, str(scaled(20)), *urls],
        remove=True,
        labels={"hvt-test": "egress-control"},
    )
    assert output.decode().split() == ["200", "200"]


def _task(root: Path, runtime_image: str, servers: Servers) -> Path:
    task = root / "egress-probe"
    (task / "environment").mkdir(parents=True)
    (task / "tests").mkdir()
    (task / "task.toml").write_text(
        TASK_TOML.format(agent_timeout=scaled(300), verifier_timeout=scaled(120))
    )
    (task / "instruction.md").write_text("Probe the network.\n")
    (task / "environment" / "Dockerfile").write_text(f"FROM {runtime_image}\nWORKDIR /app\n")
    (task / "tests" / "test.sh").write_text(TEST_SH)
    (task / "tests" / "test.sh").chmod(0o755)
    (task / "tests" / "egress_probe.py").write_text((HERE / "egress_probe.py").read_text())
    targets = {
        "relay_url": sandbox_egress.relay_url(),
        "proxy_host": servers.gateway,
        "proxy_port": servers.proxy_port,
        "outside_url": servers.outside_url,
    }
    (task / "tests" / "targets.json").write_text(json.dumps(targets))
    return task


def _probe_tokens(servers: Servers, step: str) -> dict[str, str]:
    key = SIGNING_KEY.encode()
    other = servers.trials / step / "other-trial"
    revoked = servers.trials / step / "revoked-trial"
    for directory in (other, revoked):
        directory.mkdir(parents=True, exist_ok=True)
    credentials.revoke(revoked)
    return {
        "PROBE_OTHER_ROUTE": f"{step}/other-trial",
        "PROBE_EXPIRED": credentials.mint(
            key, f"{step}/other-trial", (SERVED,), 60.0, now=time.time() - 3600
        ),
        "PROBE_REVOKED": credentials.mint(key, f"{step}/revoked-trial", (SERVED,), 3600.0),
        "PROBE_PROXY_HOST": servers.gateway,
        "PROBE_PROXY_PORT": str(servers.proxy_port),
        "PROBE_OUTSIDE_URL": servers.outside_url,
        "PROBE_CANARY": CANARY,
        "PROBE_TIMEOUT": str(scaled(5)),
        "PROBE_CALL_TIMEOUT": str(scaled(60)),
    }


def _run_trial(
    servers: Servers,
    runtime_image: str,
    root: Path,
    prefix: str,
    env_kwargs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    sandbox_network: str = "proxy-only",
) -> Path:
    step = f"step_{prefix}"
    monkeypatch.setenv(credentials.SIGNING_KEY_ENV, SIGNING_KEY)
    monkeypatch.setenv("HVT_TRIALS_ROOT", str(servers.trials))
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    settings = RolloutSettings(
        trials_dir=servers.trials,
        model_name=SERVED,
        agent_import_path=AGENT,
        agent_kwargs={
            "proxy_url": servers.proxy_url,
            "runtime_root": RUNTIME_PATH,
            "credential_ttl_sec": 3600.0,
            "probes": _probe_tokens(servers, step),
        },
        env_import_path=REMOTE,
        env_kwargs={
            **env_kwargs,
            "agent_runtime_image": runtime_image,
            "pod_name_prefix": prefix,
            "proxy_url": servers.proxy_url,
        },
        override_cpus=1,
        override_memory_mb=1024,
        max_retries=0,
        pod_name_prefix=prefix,
        sandbox_network=sandbox_network,
        proxy_url=servers.proxy_url,
    )
    name = f"egress-{prefix}"
    report = asyncio.run(
        harbor_trial.run_attempt(
            settings, _task(root, runtime_image, servers), servers.trials / step, name
        )
    )
    trial = servers.trials / step / name
    assert report.exception_type is None, (report.exception_type, report.exception_message)
    return trial


def _check(trial: Path, servers: Servers, log_from: int) -> None:
    probe_file = trial / "agent" / "probe.json"
    assert probe_file.is_file(), (trial / "agent" / "probe.stderr").read_text()[-2000:]
    agent = json.loads(probe_file.read_text())

    # the adapter's URL is the relay, its key the trial's own credential
    assert agent["base_url"] == sandbox_egress.relay_url()
    assert agent["credential_prefix"] == credentials.PREFIX
    proxy_log = servers.proxy_log.read_text(errors="replace")[log_from:]
    assert agent["own"]["status"] == 200, (agent["own"], proxy_log[-3000:])
    assert json.loads(agent["own"]["body"])["type"] == "message"

    # refused by the proxy (reached through the relay), each refusal logged with its reason
    for case in ("other_route", "expired", "revoked", "admin_key_generate", "admin_model_info"):
        assert agent[case]["status"] in (401, 403), (case, agent[case])
    log = proxy_log
    route = f"{trial.parent.name}/{trial.name}"
    for line in (
        f"'{trial.parent.name}/other-trial' x-harbor-trial-dir header; it is bound to '{route}'",
        "trial credential refused: expired at",
        f"trial credential refused: its trial has ended (trial {trial.parent.name}/revoked-trial",
        "route /key/generate is not a completion or message route",
        "route /model/info is not a completion or message route",
    ):
        assert line in log, (line, log[-4000:])

    # no way out but the relay
    assert agent["proxy_direct"] != "open", agent["proxy_direct"]
    assert agent["outside"]["status"] is None, agent["outside"]

    # the master key is nowhere in the sandbox; the scan finds a planted token
    assert agent["files_scanned"] > 100
    hashes = set(agent["token_hashes"])
    file_canary = "sk-file-" + hashlib.sha256(CANARY.encode()).hexdigest()[:24]
    assert hashlib.sha256(CANARY.encode()).hexdigest() in hashes
    assert hashlib.sha256(file_canary.encode()).hexdigest() in hashes
    assert hashlib.sha256(MASTER_KEY.encode()).hexdigest() not in hashes

    # verifier phase, task says no-network: nothing answers, not even the relay
    verifier = json.loads((trial / "verifier" / "probe.json").read_text())
    assert verifier["relay"]["status"] is None, verifier["relay"]
    assert verifier["proxy_direct"] != "open", verifier["proxy_direct"]
    assert verifier["outside"]["status"] is None, verifier["outside"]


def _leftovers(client: docker.DockerClient, prefix: str) -> list[str]:
    found = [
        c.name for c in client.containers.list(all=True, filters={"label": f"harbor-run={prefix}"})
    ]
    found += [n.name for n in client.networks.list(filters={"label": f"harbor-run={prefix}"})]
    return found


def test_local_engine_sandbox_reaches_only_the_proxy(
    servers: Servers,
    runtime_image: str,
    local: docker.DockerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _control_reaches(local, servers)
    prefix = f"egress-local-{uuid.uuid4().hex[:6]}"
    log_from = len(servers.proxy_log.read_text(errors="replace"))
    try:
        trial = _run_trial(servers, runtime_image, tmp_path, prefix, {}, monkeypatch)
        _check(trial, servers, log_from)
    finally:
        assert _leftovers(local, prefix) == []


def test_task_mode_opens_the_agent_phase_and_closes_the_verifier(
    servers: Servers,
    runtime_image: str,
    local: docker.DockerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sandbox_network: task` with a task that leaves the agent public: the same probe now
    reaches the outside server and the proxy's own port (so it does detect reachability), and
    the verifier (`no-network` in task.toml) is cut off again."""
    prefix = f"egress-task-{uuid.uuid4().hex[:6]}"
    try:
        trial = _run_trial(servers, runtime_image, tmp_path, prefix, {}, monkeypatch, "task")
        agent = json.loads((trial / "agent" / "probe.json").read_text())
        assert agent["base_url"] == sandbox_egress.relay_url()
        assert agent["own"]["status"] == 200, agent["own"]
        assert agent["outside"]["status"] == 200, agent["outside"]
        assert agent["outside"]["body"] == "the upstream fix"
        assert agent["proxy_direct"] == "open"
        verifier = json.loads((trial / "verifier" / "probe.json").read_text())
        assert verifier["relay"]["status"] is None, verifier["relay"]
        assert verifier["proxy_direct"] != "open", verifier["proxy_direct"]
        assert verifier["outside"]["status"] is None, verifier["outside"]
    finally:
        assert _leftovers(local, prefix) == []


def test_tls_daemon_sandbox_reaches_only_the_proxy(
    servers: Servers,
    runtime_image: str,
    tls: TlsDaemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = DockerDaemon(tls.host, tls.good_client).client()
    try:
        _control_reaches(remote, servers)
        prefix = f"egress-tls-{uuid.uuid4().hex[:6]}"
        log_from = len(servers.proxy_log.read_text(errors="replace"))
        kwargs = {"docker_host": tls.host, "docker_cert_path": str(tls.good_client)}
        try:
            trial = _run_trial(servers, runtime_image, tmp_path, prefix, kwargs, monkeypatch)
            _check(trial, servers, log_from)
        finally:
            assert _leftovers(remote, prefix) == []
    finally:
        remote.close()
