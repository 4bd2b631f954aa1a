"""Stand-in for verl's rollout replicas: CPU Ray actors named `vllm_server_{i}_0`.

Like verl 0.9.1's vLLM server actors they are named, not detached, live in this driver's
anonymous namespace, and expose `get_server_address() -> (ip, port)`, which fails until the HTTP
server is up. The HTTP server is the fake vLLM backend (proxy_fake_vllm.py) on 127.0.0.1: the
policy is not what these tests check. The driver keeps the actors alive until it is killed.

Run: python tests/e2e/proxy_ray_replicas.py --address 127.0.0.1:PORT --replicas 2 \
         [--start-index 0] [--delay-s 0] [--served-model-name vllm_model]
Prints `READY <i> <host>:<port>` per replica.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray

HERE = Path(__file__).resolve().parent


@ray.remote(num_cpus=0)
class FakeVllmServer:
    def __init__(self, replica: int, served_model_name: str, delay_s: float) -> None:
        sys.path.insert(0, str(HERE))
        self.replica = replica
        self.served_model_name = served_model_name
        self.ready_at = time.monotonic() + delay_s
        self.port: int | None = None

    def launch(self) -> int:
        import proxy_fake_vllm

        self.port = proxy_fake_vllm.start_in_thread(
            "127.0.0.1", self.served_model_name, f"r{self.replica}"
        )
        return self.port

    def get_server_address(self) -> tuple[str, int]:
        # verl asserts the same way until launch_server() has run
        assert self.port is not None and time.monotonic() >= self.ready_at, "server not launched"
        return "127.0.0.1", self.port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--start-index", type=int, default=0)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--served-model-name", default="vllm_model")
    args = parser.parse_args()
    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    actors: list[Any] = []
    for i in range(args.start_index, args.start_index + args.replicas):
        actor = FakeVllmServer.options(name=f"vllm_server_{i}_0").remote(
            i, args.served_model_name, args.delay_s
        )
        # an actor's process can take minutes to start on a loaded machine (the test scales it)
        port = ray.get(
            actor.launch.remote(), timeout=float(os.environ.get("HVT_ACTOR_START_TIMEOUT_S", "60"))
        )
        actors.append(actor)
        print(f"READY {i} 127.0.0.1:{port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
