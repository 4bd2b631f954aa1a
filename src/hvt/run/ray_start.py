"""What `ray start` gets on every node of the bundle's cluster, head and workers alike.

One place for the node's identity and resources, so the head (`hvt launch`) and the workers
(`hvt worker`) advertise the same way: the `hvt-node=<name>` label, this node's cluster address
(HVT_NODE_IP: the address the other trainer hosts reach it at, which Ray advertises; Ray 2.60
listens on every interface regardless, so a firewall keeps its ports to the trainer hosts), a
temp dir of its own, and in CPU mode `ngpus_per_node` logical GPUs plus enough CPU slots. Also
the one reader of `ray start`'s failures: the address, the token or the version, each with its fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hvt import ray_nodes
from hvt.config.model import RunConfig

CPU_MODE_RAY_CPUS = 32
# Every node's Ray servers on fixed ports, so a firewall can name them (the trainer_stack role's
# nftables rule admits them only from the other trainer hosts): ray_port + 1..5, the dashboard
# agent's 52365 and the worker processes' 10002-19999 (Ray's defaults), the client's 10001.
NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
)
DASHBOARD_AGENT_PORT = 52365
WORKER_PORTS = (10002, 19999)


def node_args(cfg: RunConfig, temp_dir: Path, cpu: bool) -> list[str]:
    """The flags every node's `ray start` takes (the head adds --head and its ports)."""
    i = cfg.inputs.infrastructure
    args = [
        f"--temp-dir={temp_dir}",
        f"--labels={ray_nodes.NODE_LABEL}={ray_nodes.node_name()}",
        "--disable-usage-stats",
        *(f"{flag}={i.ray_port + n}" for n, flag in enumerate(NODE_PORT_FLAGS, 1)),
        f"--dashboard-agent-listen-port={DASHBOARD_AGENT_PORT}",
        f"--min-worker-port={WORKER_PORTS[0]}",
        f"--max-worker-port={WORKER_PORTS[1]}",
    ]
    ip = os.environ.get("HVT_NODE_IP", "")
    if ip:
        args.append(f"--node-ip-address={ip}")
    if cpu:
        # logical GPUs (one per trainer rank) and CPUs: Ray counts CPUs as slots, and verl's
        # task runner, TransferQueue, FSDP, agent-loop and reward workers each take one
        args += [f"--num-gpus={i.ngpus_per_node}", f"--num-cpus={CPU_MODE_RAY_CPUS}"]
    return args


def node_env(env: dict[str, str], cpu: bool) -> dict[str, str]:
    """Ray starts workers at nice 15; on a CPU host the workers are the training itself."""
    return {**env, "RAY_worker_niceness": "0"} if cpu else env


_VERSION = re.compile(r"Version mismatch.*", re.DOTALL)


def explain_join_failure(output: str, head: str, token_path: str) -> str:
    """`ray start --address` failed: what went wrong, named, with the fix."""
    if "InvalidAuthToken" in output or "AuthenticationError" in output:
        return (
            f"the Ray head at {head} refused this node's token ({token_path}): every trainer "
            "host must read the same token, which the head writes to <run dir>/run/"
            "ray_auth_token; put the run directory (HVT_DATA_DIR) on the shared filesystem at "
            "the same path on every host, or copy that file here, then start the worker again"
        )
    version = _VERSION.search(output)
    if version:
        detail = " ".join(version.group(0).split())[:400]
        return (
            f"this node's Ray or Python differs from the head's at {head}: {detail} -- run the "
            "same trainer image (IMAGE_TAG in .env, make image) on every trainer host"
        )
    if "Failed to connect to GCS" in output or "Timed out while waiting for GCS" in output:
        return (
            f"no Ray head answers at {head}: set infrastructure.node0_ip (or HVT_RAY_HEAD) to "
            "the head host's cluster address and check that the firewall admits Ray's ports "
            "between trainer hosts"
        )
    tail = " ".join(output.strip().splitlines()[-3:])[-600:]
    return f"ray start --address={head} failed: {tail}"
