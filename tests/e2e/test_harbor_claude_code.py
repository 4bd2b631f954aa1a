"""claude-code from the real agent-runtime image, mounted into a Harbor sandbox, talking to a
stand-in Anthropic endpoint that records what it receives.

The policy is not under test here, the adapter is: a sidecar service in the trial's compose
project (`fakeapi`) answers /v1/messages (streaming, as claude-code asks) with a Bash tool call
that solves the task, then with text. The real claude-code runs that tool in the sandbox, the
task's verifier scores it. Checked: nothing installed in the sandbox, every model name and the
key and the routing header as the proxy expects them, --max-turns honoured and classified.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from hvt.trajectory import credentials as trial_credentials
from tests.helpers.prerequisites import require_images
from tests.helpers.timing import scaled
from verl_patch import harbor_trial
from verl_patch.rollout_settings import RolloutSettings
from verl_patch.termination import Termination

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
RUNTIME_IMAGE = "verl-swe-rl/agent-runtime:latest"
SIDECAR_IMAGE = "local/python:3.12-bookworm"
AGENT = "harbor_patch.agents.image_mounted_claude_code:ClaudeCode"
REMOTE = "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"
MASTER_KEY = "sk-hvt-e2e-" + uuid.uuid4().hex
SIGNING_KEY = "signing-" + uuid.uuid4().hex
SERVED = "policy-under-test"

FAKE_ANTHROPIC = r'''
"""Anthropic Messages API stand-in: records each request; answers with a Bash tool call that
writes the answer while tools are offered and no tool result came back yet, else with text."""
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDS = "/records/requests.jsonl"
LOCK = threading.Lock()


def answer(body):
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages else None
    done = isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )
    tools = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    if "Bash" in tools and not done:
        call = {"command": "echo 42 > /app/answer.txt", "description": "Write the answer"}
        block = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": "Bash"}
        return [dict(block, input=call)], "tool_use"
    return [{"type": "text", "text": "Done."}], "end_turn"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json(200 if self.path == "/health" else 404, {"path": self.path})

    def _event(self, name, data):
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.loads(raw or b"{}")
        record = {"path": self.path, "headers": dict(self.headers.items()), "body": body}
        with LOCK, open(RECORDS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if "count_tokens" in self.path:
            return self._json(200, {"input_tokens": 10})
        if not self.path.startswith("/v1/messages"):
            return self._json(404, {"type": "error", "error": {"type": "not_found_error"}})
        blocks, stop = answer(body)
        message = {
            "id": "msg_" + uuid.uuid4().hex[:20], "type": "message", "role": "assistant",
            "model": body.get("model"), "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
        if not body.get("stream"):
            return self._json(200, dict(message, content=blocks, stop_reason=stop))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self._event("message_start", {"type": "message_start",
                                      "message": dict(message, content=[], stop_reason=None)})
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                start, delta = dict(block, text=""), {"type": "text_delta", "text": block["text"]}
            else:
                start = dict(block, input={})
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            self._event("content_block_start",
                        {"type": "content_block_start", "index": i, "content_block": start})
            self._event("content_block_delta",
                        {"type": "content_block_delta", "index": i, "delta": delta})
            self._event("content_block_stop", {"type": "content_block_stop", "index": i})
        self._event("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": 5}})
        self._event("message_stop", {"type": "message_stop"})
        self.wfile.flush()
        self.close_connection = True


ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def runtime_images(images: dict[str, str]) -> None:
    """The agent runtime comes from the session build (`images`), the sidecar's from the bed."""
    assert images["agent-runtime"] == RUNTIME_IMAGE
    require_images(SIDECAR_IMAGE)


def runtime_version() -> str:
    client = docker.from_env(timeout=30)
    out = client.containers.run(
        RUNTIME_IMAGE,
        entrypoint=["cat", "/opt/custom-agent-runtime/claude-code/VERSION"],
        network_mode="none",
        remove=True,
    )
    return str(out.decode().strip())


@pytest.fixture
def sidecar(tmp_path: Path) -> tuple[Path, Path]:
    """The compose overlay adding `fakeapi`, and the file it records requests into."""
    srv, records = tmp_path / "srv", tmp_path / "records"
    srv.mkdir()
    records.mkdir()
    records.chmod(0o777)
    (srv / "fake_anthropic.py").write_text(FAKE_ANTHROPIC)
    probe = (
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"
    )
    overlay = {
        "services": {
            "fakeapi": {
                "image": SIDECAR_IMAGE,
                "command": ["python3.12", "/srv/fake_anthropic.py", "8080"],
                "volumes": [
                    {"type": "bind", "source": str(srv), "target": "/srv", "read_only": True},
                    {"type": "bind", "source": str(records), "target": "/records"},
                ],
                "healthcheck": {
                    "test": ["CMD", "python3.12", "-c", probe],
                    "interval": "1s",
                    "timeout": "3s",
                    "retries": 30,
                },
            }
        }
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path, records / "requests.jsonl"


def _settings(tmp_path: Path, sidecar: Path, max_turns: int, **overrides: Any) -> RolloutSettings:
    prefix = f"hvt-e2e-cc-{uuid.uuid4().hex[:6]}"
    values: dict[str, Any] = {
        "trials_dir": tmp_path / "trials" / "proj" / "exp",
        "model_name": SERVED,
        "agent_import_path": AGENT,
        "agent_kwargs": {
            "max_turns": max_turns,
            "proxy_url": "http://fakeapi:8080",
            "temperature": 0.7,
        },
        "env_import_path": REMOTE,
        "env_kwargs": {
            "docker_host": "unix:///var/run/docker.sock",
            "agent_runtime_image": RUNTIME_IMAGE,
            "pod_name_prefix": prefix,
        },
        "override_cpus": 1,
        "override_memory_mb": 1024,
        # the task's 120 s agent limit, scaled: claude-code's start-up alone took most of it on
        # a 2-core machine under a CPU burner (AgentTimeoutError in a CI run under load)
        "agent_timeout_multiplier": scaled(1.0),
        "max_retries": 0,
        "pod_name_prefix": prefix,
        "extra_compose": (sidecar,),
    }
    values.update(overrides)
    return RolloutSettings(**values)


@pytest.fixture
def proxy_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key_file = tmp_path / "litellm_master_key"  # the trainer holds it; no sandbox may
    key_file.write_text(MASTER_KEY + "\n")
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    monkeypatch.setenv("LITELLM_MASTER_KEY_FILE", str(key_file))
    signing = tmp_path / "proxy_signing_key"
    signing.write_text(SIGNING_KEY + "\n")
    monkeypatch.delenv(trial_credentials.SIGNING_KEY_ENV, raising=False)
    monkeypatch.setenv(trial_credentials.SIGNING_KEY_FILE_ENV, str(signing))
    monkeypatch.setenv("HVT_TRIALS_ROOT", str(tmp_path / "trials"))
    monkeypatch.delenv("HVT_PROXY_URL", raising=False)
    return tmp_path / "trials"


def test_claude_code_from_the_mounted_runtime(
    tmp_path: Path, runtime_images: None, sidecar: tuple[Path, Path], proxy_env: Path
) -> None:
    overlay, records = sidecar

    async def scenario() -> list[harbor_trial.RolloutResult]:
        return await asyncio.gather(
            harbor_trial.run_rollout(
                _settings(tmp_path, overlay, max_turns=5), TASKS / "write-answer", "step_0004"
            ),
            harbor_trial.run_rollout(
                _settings(tmp_path, overlay, max_turns=1), TASKS / "write-answer", "step_0004"
            ),
        )

    done, cut = asyncio.run(scenario())
    solved = done.final
    assert solved is not None, done
    assert solved.exception_type is None, solved.exception_message
    assert solved.reward_value == 1.0  # claude-code ran the tool in the sandbox
    assert solved.stop_subtype == "success"
    assert solved.termination is Termination.AGENT_COMPLETED
    # the claude-code that ran is the image's (Harbor records the version the agent reported)
    assert solved.result is not None
    assert solved.result["agent_info"]["version"] == runtime_version()

    limited = cut.final
    assert limited is not None
    assert limited.stop_subtype == "error_max_turns"
    assert limited.termination is Termination.MAX_TURNS_REACHED

    requests = [json.loads(line) for line in records.read_text().splitlines()]
    messages = [r for r in requests if r["path"].startswith("/v1/messages")]
    assert len(messages) >= 3  # 2 turns for the solver, 1 for the cut one
    routes = set()
    for r in messages:
        headers = {k.lower(): v for k, v in r["headers"].items()}
        assert r["body"]["model"] == SERVED
        assert MASTER_KEY not in json.dumps(r)  # the master key never left the trainer
        claims = trial_credentials.verify(SIGNING_KEY.encode(), headers["x-api-key"])
        assert claims.route == headers["x-harbor-trial-dir"] and claims.models == (SERVED,)
        assert headers["x-harbor-temperature"] == "0.7"
        routes.add(headers["x-harbor-trial-dir"])
    expected = {
        str(result.final.trial_dir.relative_to(proxy_env)) for result in (done, cut) if result.final
    }
    assert routes == expected  # relative to HVT_TRIALS_ROOT: proj/exp/step_0004/<trial>
    for result in (done, cut):  # over: their credentials are refused from now on
        assert result.final is not None and trial_credentials.is_revoked(result.final.trial_dir)


def test_missing_runtime_fails_setup_with_a_clear_message(
    tmp_path: Path, runtime_images: None, sidecar: tuple[Path, Path], proxy_env: Path
) -> None:
    settings = _settings(
        tmp_path,
        sidecar[0],
        max_turns=3,
        env_kwargs={"docker_host": "unix:///var/run/docker.sock"},  # no runtime image mounted
    )
    result = asyncio.run(harbor_trial.run_rollout(settings, TASKS / "write-answer", "step_0005"))
    final = result.final
    assert final is not None
    assert final.termination is Termination.ENV_SETUP_FAILED
    assert final.exception_type == "RuntimeNotMountedError"
    assert "claude-code is not mounted at /opt/custom-agent-runtime/claude-code" in (
        final.exception_message or ""
    )
    assert final.reward_value == 0.0
