"""The CPU rollout replica, registered with verl as rollout.name `hvt_cpu`.

verl builds one replica per `tensor_model_parallel_size` trainer ranks
(`RolloutReplicaRegistry`, `verl/workers/rollout/replica.py` 312-327; looked up in
`workers/rollout/llm_server.py` 393). `CpuReplica.launch_servers` starts one
`CpuRolloutServer` actor per replica, named `vllm_server_{replica}_0` and pinned to the node of
the replica's first trainer rank, and loads the model from `actor_rollout_ref.model.path`.

Inside each FSDP worker verl builds the rollout adapter by the same name (`_ROLLOUT_REGISTRY`,
`workers/rollout/base.py` 89-110; `engine_workers.py` 667). `CpuServerAdapter` follows vLLM's
`ServerAdapter`: `release` puts the server to sleep, `resume` wakes it, and `update_weights`
drains the actor's weight generator on every rank (each `DTensor.full_tensor()` is a
collective) and ships the full state dict to the server from the replica's first rank. The
sync v1 trainer calls these with the `naive` checkpoint engine after every step
(`trainer/ppo/v1/trainer_base.py` 382, `engine_workers.py` 728-827).

HVT_CPU_WEIGHT_SYNC=off drains the weights but keeps the server on its initial weights: the
switch the weight-sync test uses to show that the check can fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import ray
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica

from verl_patch.cpu.server import CpuRolloutServer

log = logging.getLogger(__name__)
SYNC_SWITCH = "HVT_CPU_WEIGHT_SYNC"


def server_name(replica_rank: int) -> str:
    return f"vllm_server_{replica_rank}_0"  # what discovery and the proxy look for


def model_dir(model_config: Any) -> str:
    """The model's local directory: HFModelConfig's local_path, or the path of the DictConfig
    verl hands the replica (a local directory in CPU mode)."""
    local = getattr(model_config, "local_path", None)
    if local is None and hasattr(model_config, "get"):
        local = model_config.get("local_path") or model_config.get("path")
    return str(local or model_config.path)


def served_model_name(config: Any) -> str:
    engine = (getattr(config, "engine_kwargs", None) or {}).get("vllm") or {}
    name = engine.get("served_model_name") if hasattr(engine, "get") else None
    return str(name or "policy")


class CpuReplica(RolloutReplica):  # type: ignore[misc]
    async def launch_servers(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self.nnodes != 1:
            raise ValueError(
                f"the CPU rollout replica serves from one node; tensor_model_parallel_size="
                f"{self.config.tensor_model_parallel_size} spans {self.nnodes} (use 1)"
            )
        node_id = (
            await self.workers[0].__ray_call__.remote(
                lambda _self: ray.get_runtime_context().get_node_id()
            )
            if self.workers
            else ray.get_runtime_context().get_node_id()
        )
        server_cls: Any = ray.remote(CpuRolloutServer)
        server: Any = server_cls.options(
            name=server_name(self.replica_rank),
            num_cpus=0,
            max_concurrency=self.max_concurrency,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(
            model_dir(self.model_config),
            served_model_name(self.config),
            self.replica_rank,
            int(self.config.prompt_length),  # data.max_prompt_length
        )
        self.servers = [server]
        host, port = await server.launch_server.remote()
        self._server_handle = server
        self._server_address = f"{host}:{port}"
        log.info("%s (CPU) at %s", server_name(self.replica_rank), self._server_address)

    async def sleep(self) -> None:
        server: Any
        for server in self.servers:
            await server.wait_for_requests_to_drain.remote()
            await server.sleep.remote()


class CpuServerAdapter(BaseRollout):  # type: ignore[misc]
    def __init__(
        self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1
    ) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ["RANK"])
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.leader = rank % world == 0
        self._server: Any = None

    def server(self) -> Any:
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        if self.leader:
            await self.server().wake_up.remote(tags=tags)

    async def release(self) -> None:
        if self.leader:
            await self.server().sleep.remote()

    async def update_weights(
        self,
        weights: Iterable[tuple[str, Any]],
        global_steps: int | None = None,
        wire_format: str = "named_tensors",
        **_kwargs: Any,
    ) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"the CPU rollout takes named_tensors, not {wire_format!r}")
        state: dict[str, Any] = {}
        for name, tensor in weights:  # every rank drains: full_tensor() is a collective
            if self.leader:
                state[name] = tensor.detach().to("cpu", copy=True)
        if not self.leader:
            return
        if os.environ.get(SYNC_SWITCH, "on").lower() == "off":
            log.warning("%s=off: the rollout keeps its initial weights", SYNC_SWITCH)
            return
        server = self.server()
        await server.update_weights.remote(state, global_steps)
        if global_steps is not None:
            await server.set_global_steps.remote(global_steps)
