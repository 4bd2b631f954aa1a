"""A restart of the proxy (what `docker compose restart litellm` does) during a run loses no
trajectory record: every call that got an answer has its whole line in the trial's file.

Clients behave like claude-code: a call refused while the proxy is down is retried. The backend
is the fake vLLM server on 127.0.0.1 (the policy is not what is tested here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from hvt.proxy.discovery import Replica
from hvt.proxy.litellm_config import ProxySettings, write
from hvt.trajectory.paths import HEADER
from tests.e2e.test_proxy_e2e import (
    MASTER_KEY,
    free_port,
    http,
    kill_group,
    proxy_fake_vllm,
    proxy_venv,  # noqa: F401  (fixture)
    wait_until,
)
from tests.helpers.timing import scaled

pytestmark = [pytest.mark.slow, pytest.mark.timeout(scaled(600))]
CLIENTS = 4
CALLS_PER_CLIENT = 12


def _start_proxy(
    venv: Path, config: Path, trials: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen(
        [str(venv / "bin" / "hvt"), "proxy", "--litellm-config", str(config),
         "--trials-root", str(trials), "--port", str(port), "--host", "127.0.0.1"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    wait_until(
        lambda: http("GET", f"http://127.0.0.1:{port}/health/liveliness")[0] == 200,
        240, "proxy liveliness", proc,
    )  # fmt: skip
    return proc


def test_restart_during_a_run_loses_no_record(proxy_venv: Path, tmp_path: Path) -> None:  # noqa: F811
    backend = proxy_fake_vllm.start_in_thread("127.0.0.1", "vllm_model", "r0")
    config = tmp_path / "litellm.yaml"
    write(config, [Replica(0, "127.0.0.1", backend)], ProxySettings("vllm_model"))
    trials = tmp_path / "trials"
    trial = trials / "step_0000" / "trial-a"
    (trial / "agent").mkdir(parents=True)
    port = free_port()
    log = tmp_path / "proxy.log"
    proc = _start_proxy(proxy_venv, config, trials, port, log)

    answered: list[str] = []
    retried = [0]
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(CALLS_PER_CLIENT):
            marker = f"call-{n}-{i}-{uuid.uuid4().hex[:6]}"
            body = {
                "model": "vllm_model",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": marker}],
            }
            headers = {"Authorization": f"Bearer {MASTER_KEY}", HEADER: "step_0000/trial-a"}
            deadline = time.monotonic() + scaled(180)
            while time.monotonic() < deadline:
                try:
                    status, _ = http(
                        "POST", f"http://127.0.0.1:{port}/v1/chat/completions", body, headers
                    )
                except OSError:
                    status = 0
                if status == 200:
                    with lock:
                        answered.append(marker)
                    break
                with lock:
                    retried[0] += 1
                time.sleep(0.5)
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(answered) >= CLIENTS * 2, 120, "first calls answered")
        os.killpg(proc.pid, signal.SIGTERM)  # compose's stop: SIGTERM, then a new container
        proc.wait(scaled(60))
        proc = _start_proxy(proxy_venv, config, trials, port, log)
        for t in threads:
            t.join(scaled(300))
    finally:
        kill_group(proc)
    assert len(answered) == CLIENTS * CALLS_PER_CLIENT, "every call was answered in the end"
    assert retried[0] > 0, "the restart happened while calls were in flight"
    lines = (trial / "proxy" / "litellm-trajectory.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    logged = {m for r in records for m in answered if m in json.dumps(r)}
    missing = sorted(set(answered) - logged)
    assert not missing, f"{len(missing)} answered call(s) without a record, e.g. {missing[:3]}"
