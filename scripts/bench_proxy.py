"""Benchmark the LiteLLM proxy (hvt proxy + trajectory logger) against its backend, on loopback.

What it measures, every run bounded in request count and time:
  1. latency of non-streaming chat completions, p50/p99, at 1/16/64 concurrent clients,
     directly against a fast fake vLLM server and through `hvt proxy` (same request, same
     token-id/logprob options), and the overhead the proxy adds;
  2. trajectory records per second: end to end under the 64-client load, and the writer alone;
  3. that no record is lost or torn: every proxied request has exactly one whole JSON line;
  4. per LiteLLM worker count (`--workers 1,2`: the same load at each): calls/s per worker and
     CPU-ms per call (user+system time of the `hvt proxy` process tree, LiteLLM and its workers,
     over the calls it served), and the scaling from the first count to the others.

Run (needs the proxy venv: `make proxy-venv`):
    .venv-proxy/bin/python scripts/bench_proxy.py [--requests 400] [--workers 1,2] [--json r.json]
The proxy runs this checkout's `hvt` (src/ goes first on its PYTHONPATH), whatever the proxy
venv has installed. Everything listens on and talks to 127.0.0.1 only.
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
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hvt.proxy import litellm_config  # noqa: E402
from hvt.proxy.discovery import Replica  # noqa: E402
from hvt.trajectory.paths import FILE_NAME, RECORD_DIR  # noqa: E402
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
    for path in trials.glob(f"step_0001/*/{RECORD_DIR}/{FILE_NAME}"):
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
            for p in root.glob(f"step_0001/*/{RECORD_DIR}/{FILE_NAME}")
        )
    return {
        "records": per_thread * threads,
        "written": lines,
        "records_per_s": round(per_thread * threads / wall),
        "bytes_per_record": len(json.dumps(record)),
    }


class ProxyTree:
    """CPU time and memory of the `hvt proxy` process tree (supervisor, LiteLLM, its workers)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> dict[int, float]:
        """user+system seconds per live pid (exited pids drop out; none exit during a run)."""
        times = {}
        for proc in self.processes():
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            times[proc.pid] = t.user + t.system
        return times

    def spawned_workers(self) -> int:
        """Processes LiteLLM spawned as uvicorn workers (with --num_workers 2 or more)."""
        count = 0
        for proc in self.processes():
            try:
                count += "spawn_main" in " ".join(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
        return count

    def rss_mb(self) -> float:
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return round(total / 2**20, 1)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_proxy(
    work: Path, config: Path, trials: Path, workers: int
) -> tuple[subprocess.Popen[Any], int, float]:
    """`hvt proxy --workers N` from this checkout; (process, port, start-up s) once it answers."""
    hvt_bin = Path(sys.executable).parent / "hvt"
    port = free_port()
    log = work / f"proxy-{workers}w.log"
    pythonpath = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOG": "ERROR",
        "PYTHONPATH": pythonpath,
    }
    started = time.monotonic()
    proxy = subprocess.Popen(
        [str(hvt_bin), "proxy", "--litellm-config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--trials-root", str(trials), "--workers", str(workers)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600  # 2+ workers: 275 s on the busy 2-core box
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or proxy.poll() is not None:
                stop(proxy)
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"hvt proxy did not come up:\n{tail}") from None
            time.sleep(0.5)
    # every worker must be up before the load: uvicorn answers as soon as the first one is.
    # Up = all spawned and the tree idle (under 0.2 cores for 2 s: imports and set-up done).
    tree = ProxyTree(proxy.pid)
    while time.monotonic() < deadline:
        spawned = tree.spawned_workers()
        before = sum(tree.cpu_s().values())
        time.sleep(2)
        busy = (sum(tree.cpu_s().values()) - before) / 2
        if (workers == 1 or spawned >= workers) and busy < 0.2:
            break
    else:
        stop(proxy)
        raise RuntimeError(f"not every LiteLLM worker came up:\n{log.read_text()[-3000:]}")
    return proxy, port, round(time.monotonic() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per run (bounded)")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument(
        "--workers",
        default="1",
        help="LiteLLM worker counts, comma-separated: the same load runs at each (e.g. 1,2)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--without-logger",
        action="store_true",
        help="baseline: LiteLLM without the trajectory callback (records are then not checked)",
    )
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(
            f"--workers takes whole numbers separated by commas, e.g. 1,2 (got {args.workers!r})"
        )
    if any(w < 1 for w in worker_counts):
        parser.error("--workers: each count must be 1 or more")
    if not (Path(sys.executable).parent / "hvt").exists():
        print("run with the proxy venv's python (make proxy-venv)", file=sys.stderr)
        return 2

    procs: list[subprocess.Popen[Any]] = []
    passes: list[dict[str, Any]] = []
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

            body = {
                "model": "vllm_model",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "benchmark " * 50}],
            }
            direct_body = {**body, "logprobs": True, "return_token_ids": True}
            direct_url = f"http://127.0.0.1:{backend_port}/v1/chat/completions"
            auth = {"Authorization": f"Bearer {MASTER_KEY}"}

            def proxy_headers(i: int) -> dict[str, str]:
                return {**auth, "x-harbor-trial-dir": f"step_0001/trial-{i % TRIALS}"}

            asyncio.run(load(direct_url, lambda i: {}, direct_body, 4, 40))  # warm up
            expected_records = 0
            for workers in worker_counts:
                proxy, proxy_port, startup_s = start_proxy(work, config, trials, workers)
                print(f"{workers} worker(s): up and every worker running after {startup_s} s")
                procs.append(proxy)
                tree = ProxyTree(proxy.pid)
                proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
                # warm up every worker (connection pools, LiteLLM's first-call imports)
                asyncio.run(load(proxy_url, proxy_headers, body, 4 * workers, 40 * workers))
                expected_records += 40 * workers
                rows = []
                for c in clients:
                    direct = asyncio.run(
                        load(direct_url, lambda i: {}, direct_body, c, args.requests)
                    )
                    load_before = os.getloadavg()[0]
                    cpu_before = tree.cpu_s()
                    proxied = asyncio.run(load(proxy_url, proxy_headers, body, c, args.requests))
                    cpu_after = tree.cpu_s()
                    served = proxied["requests"] - proxied["errors"]
                    cpu_s = sum(cpu_after.values()) - sum(
                        v for pid, v in cpu_before.items() if pid in cpu_after
                    )
                    proxied["cpu_ms_per_call"] = round(cpu_s * 1000 / served, 2) if served else None
                    proxied["cpu_cores_busy"] = round(cpu_s / proxied["wall_s"], 2)
                    proxied["rps_per_worker"] = round(proxied["rps"] / workers, 1)
                    proxied["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                    expected_records += served
                    rows.append(
                        {"workers": workers, "clients": c, "direct": direct, "proxy": proxied}
                    )
                    print(json.dumps(rows[-1]), flush=True)
                passes.append(
                    {
                        "workers": workers,
                        "startup_s": startup_s,
                        "processes": len(tree.processes()),
                        "rss_mb": tree.rss_mb(),
                        "latency": rows,
                    }
                )
                stop(proxy)

            # every proxied request must have exactly one whole record
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                good, bad = count_records(trials)
                if good + bad >= expected_records:
                    break
                time.sleep(0.5)
            good, bad = count_records(trials)
            last = passes[0]["latency"][-1]["proxy"]
            result = {
                "passes": passes,
                "records": {
                    "expected": expected_records,
                    "written_whole_with_tokens": good,
                    "torn_or_without_tokens": bad,
                    "lost": expected_records - good - bad,
                    "end_to_end_records_per_s_at_max_clients": last["rps"],
                },
                "writer_alone": writer_throughput(),
                "machine": (
                    f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable); client, proxy "
                    f"and backend share them; load average at the end {os.getloadavg()}"
                ),
            }
        finally:
            for proc in reversed(procs):
                stop(proc)

    print()
    print(
        "| workers | clients | direct p50 / p99 ms | proxy p50 / p99 ms | proxy calls/s | "
        "calls/s per worker | CPU-ms per call | cores busy | load 1m before / after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for one in passes:
        for row in one["latency"]:
            d, p = row["direct"], row["proxy"]
            print(
                f"| {row['workers']} | {row['clients']} | {d['p50_ms']} / {d['p99_ms']} | "
                f"{p['p50_ms']} / {p['p99_ms']} | {p['rps']} | {p['rps_per_worker']} | "
                f"{p['cpu_ms_per_call']} | {p['cpu_cores_busy']} | "
                f"{p['load_avg_1m'][0]} / {p['load_avg_1m'][1]} |"
            )
    if len(passes) > 1:
        base = passes[0]
        print()
        print(f"Scaling against {base['workers']} worker(s), proxy calls/s:")
        for one in passes[1:]:
            for b, r in zip(base["latency"], one["latency"], strict=True):
                ratio = r["proxy"]["rps"] / b["proxy"]["rps"] if b["proxy"]["rps"] else 0.0
                print(
                    f"  {r['clients']:>3} clients: {b['proxy']['rps']} -> {r['proxy']['rps']} "
                    f"calls/s at {one['workers']} workers = x{ratio:.2f} "
                    f"(ideal x{one['workers'] / base['workers']:.2f})"
                )
                b["proxy"].setdefault("scaling", {})[one["workers"]] = round(ratio, 2)
    print()
    print(json.dumps({k: v for k, v in result.items() if k != "passes"}, indent=2))
    print(json.dumps([{k: v for k, v in one.items() if k != "latency"} for one in passes]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = args.without_logger or (
        result["records"]["lost"] == 0 and result["records"]["torn_or_without_tokens"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
