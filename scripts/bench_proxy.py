"""Benchmark the LiteLLM proxy (hvt proxy + trajectory logger) against its backend, on loopback.

What it measures, every run bounded in request count and time:
  1. latency of non-streaming chat completions, p50/p99, at 1/16/64 concurrent clients,
     directly against a fast fake vLLM server and through `hvt proxy` (same request, same
     token-id/logprob options), and the overhead the proxy adds;
  2. trajectory records per second: end to end under the 64-client load, and the writer alone;
  3. that no record is lost or torn: every proxied request has exactly one whole JSON line.

Run (needs the proxy venv: `make proxy-venv`):
    .venv-proxy/bin/python scripts/bench_proxy.py [--requests 400] [--json results.json]
Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hvt.proxy import litellm_config  # noqa: E402
from hvt.proxy.discovery import Replica  # noqa: E402
from hvt.trajectory.writer import TrajectoryWriter  # noqa: E402

FAKE = ROOT / "tests" / "e2e" / "proxy_fake_vllm.py"
MASTER_KEY = "sk-bench-" + os.urandom(8).hex()
TRIALS = 8
RUN_TIME_CAP_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def load(
    url: str, headers_for: Any, body: dict[str, Any], clients: int, total: int
) -> dict[str, Any]:
    """`total` requests from `clients` concurrent workers; stops early at the time cap."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.monotonic() + RUN_TIME_CAP_S
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < total and time.monotonic() < deadline:
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                async with session.post(url, json=body, headers=headers_for(i)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
                latencies.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(latencies) + errors,
        "errors": errors,
        "wall_s": round(wall, 3),
        "rps": round((len(latencies) + errors) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }


def count_records(trials: Path) -> tuple[int, int]:
    """(whole JSON lines, bad lines) over all trajectory files."""
    good = bad = 0
    for path in trials.glob("step_0001/*/agent/litellm-trajectory.jsonl"):
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            bad += 1
        for line in data.splitlines():
            try:
                record = json.loads(line)
                good += 1 if record.get("tokens_status") == "ok" else 0
                bad += 0 if record.get("tokens_status") == "ok" else 1
            except ValueError:
                bad += 1
    return good, bad


def writer_throughput(records: int = 20000, threads: int = 8) -> dict[str, Any]:
    """The trajectory writer alone: records of a realistic size from several threads."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for t in range(TRIALS):
            (root / "step_0001" / f"trial-{t}").mkdir(parents=True)
        record = {
            "request": {"messages": [{"role": "user", "content": "x" * 3000}]},
            "tokens": {"choices": [{"token_ids": list(range(200)), "logprobs": [-0.1] * 200}]},
        }
        writer = TrajectoryWriter(root)
        per_thread = records // threads

        def submit(t: int) -> None:
            for i in range(per_thread):
                writer.submit(f"step_0001/trial-{(t + i) % TRIALS}", record)

        start = time.perf_counter()
        pool = [threading.Thread(target=submit, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        writer.flush(120)
        wall = time.perf_counter() - start
        writer.close()
        lines = sum(
            len(p.read_bytes().splitlines())
            for p in root.glob("step_0001/*/agent/litellm-trajectory.jsonl")
        )
    return {
        "records": per_thread * threads,
        "written": lines,
        "records_per_s": round(per_thread * threads / wall),
        "bytes_per_record": len(json.dumps(record)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per run (bounded)")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--without-logger",
        action="store_true",
        help="baseline: LiteLLM without the trajectory callback (records are then not checked)",
    )
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    hvt_bin = Path(sys.executable).parent / "hvt"
    if not hvt_bin.exists():
        print("run with the proxy venv's python (make proxy-venv)", file=sys.stderr)
        return 2

    procs: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="hvt-bench-") as tmp:
        work = Path(tmp)
        trials = work / "trials"
        for t in range(TRIALS):
            (trials / "step_0001" / f"trial-{t}").mkdir(parents=True)
        try:
            fake = subprocess.Popen(
                [sys.executable, str(FAKE), "--host", "127.0.0.1", "--port", "0",
                 "--served-model-name", "vllm_model"],
                stdout=subprocess.PIPE, text=True, start_new_session=True,
            )  # fmt: skip
            procs.append(fake)
            assert fake.stdout is not None
            backend_port = int(fake.stdout.readline().split(":")[-1])
            config = work / "litellm" / "config.yaml"
            replicas = [Replica(0, "127.0.0.1", backend_port)]
            settings = litellm_config.ProxySettings("vllm_model")
            if args.without_logger:
                cfg = litellm_config.build(replicas, settings)
                del cfg["litellm_settings"]["callbacks"]
                litellm_config.write_atomic(config, yaml.safe_dump(cfg))
            else:
                litellm_config.write(config, replicas, settings)
            proxy_port = free_port()
            env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOG": "ERROR"}
            proxy = subprocess.Popen(
                [str(hvt_bin), "proxy", "--litellm-config", str(config), "--host", "127.0.0.1",
                 "--port", str(proxy_port), "--trials-root", str(trials)],
                env=env, stdout=(work / "proxy.log").open("w"), stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            procs.append(proxy)
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{proxy_port}/health/liveliness", timeout=2
                    ):
                        break
                except OSError:
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        print((work / "proxy.log").read_text()[-3000:], file=sys.stderr)
                        return 1
                    time.sleep(0.5)

            body = {
                "model": "vllm_model",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "benchmark " * 50}],
            }
            direct_body = {**body, "logprobs": True, "return_token_ids": True}
            direct_url = f"http://127.0.0.1:{backend_port}/v1/chat/completions"
            proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
            auth = {"Authorization": f"Bearer {MASTER_KEY}"}

            def proxy_headers(i: int) -> dict[str, str]:
                return {**auth, "x-harbor-trial-dir": f"step_0001/trial-{i % TRIALS}"}

            # warm up both paths (connection pools, LiteLLM's first-call imports)
            asyncio.run(load(direct_url, lambda i: {}, direct_body, 4, 40))
            asyncio.run(load(proxy_url, proxy_headers, body, 4, 40))
            expected_records = 40
            rows = []
            for c in clients:
                direct = asyncio.run(load(direct_url, lambda i: {}, direct_body, c, args.requests))
                proxied = asyncio.run(load(proxy_url, proxy_headers, body, c, args.requests))
                expected_records += proxied["requests"] - proxied["errors"]
                rows.append({"clients": c, "direct": direct, "proxy": proxied})
                print(json.dumps(rows[-1]), flush=True)

            # every proxied request must have exactly one whole record
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                good, bad = count_records(trials)
                if good + bad >= expected_records:
                    break
                time.sleep(0.5)
            good, bad = count_records(trials)
            last = rows[-1]["proxy"]
            result = {
                "latency": rows,
                "records": {
                    "expected": expected_records,
                    "written_whole_with_tokens": good,
                    "torn_or_without_tokens": bad,
                    "lost": expected_records - good - bad,
                    "end_to_end_records_per_s_at_max_clients": last["rps"],
                },
                "writer_alone": writer_throughput(),
                "machine": f"{os.cpu_count()} CPUs; client, proxy and backend share them",
            }
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()

    print()
    print(
        "| clients | direct p50 / p99 ms | proxy p50 / p99 ms | overhead p50 / p99 ms | proxy rps |"
    )
    print("|---|---|---|---|---|")
    for row in result["latency"]:
        d, p = row["direct"], row["proxy"]
        print(
            f"| {row['clients']} | {d['p50_ms']} / {d['p99_ms']} | {p['p50_ms']} / {p['p99_ms']} | "
            f"{p['p50_ms'] - d['p50_ms']:.1f} / {p['p99_ms'] - d['p99_ms']:.1f} | {p['rps']} |"
        )
    print()
    print(json.dumps({k: v for k, v in result.items() if k != "latency"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = args.without_logger or (
        result["records"]["lost"] == 0 and result["records"]["torn_or_without_tokens"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
