"""The CPU rollout server: a Hugging Face model served the way verl's vLLM servers are.

One Ray actor per replica, named `vllm_server_{replica}_0` like verl's vLLM HTTP servers, so
discovery, LiteLLM and the trajectory logger work unchanged. It answers

- what verl calls on a server actor (`verl/workers/rollout/vllm_rollout/vllm_async_server.py`):
  `generate` (token ids in, token ids + log-probabilities + stop reason out), `sleep` and
  `wake_up`, `abort_all_requests` and `resume_generation`, the kv-cache calls, `set_global_steps`,
  `get_server_address`, profiling no-ops;
- `update_weights(state_dict, global_steps)`, which `CpuServerAdapter` (inside the FSDP actor)
  calls with the trained weights after every step;
- vLLM's OpenAI-compatible HTTP API as the rollout chain uses it: `/v1/chat/completions`
  (streamed or not, `return_token_ids`, `logprobs`), `/tokenize`, `/v1/models`, `/health`.

The tokens and log-probabilities are the ones the model really sampled, at the requested
temperature, so verl's rollout-vs-actor log-prob metrics compare like with like. While the
server sleeps (weights being replaced), new requests wait; `abort_all_requests` ends the ones in
flight with stop reason `aborted` (HTTP finish_reason `abort`), as vLLM does.

Every HTTP answer names the weights that produced it: the global step of the loaded weights
(`update_weights`' `global_steps`, 0 before the first update) in the response header
`x-hvt-weight-version` and the body's `weight_version`. The proxy's trajectory logger records
it per call (vLLM's own server has no such field: see docs/rollout.md).

The gate and the sampling loop (`GatedSampler`) are separate from the model (`HFPolicy`), so
the abort and resume semantics are the same whatever produces the next token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MAX_NEW_TOKENS = 24  # per call: the tiny smoke policy writes noise, short noise keeps trials fast
WEIGHT_VERSION_HEADER = "x-hvt-weight-version"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else json.dumps(content)


@dataclass(frozen=True)
class Sampled:
    token_ids: list[int]
    logprobs: list[float]
    reason: str  # 'completed', 'length' or 'aborted'
    weight_version: int  # the weights every token of this answer came from


class GatedSampler(ABC):
    """The sampling loop with vLLM's pause semantics, for any next-token model.

    `awake` gates new work (cleared while the weights are replaced: a new request waits);
    `aborting` ends the samples in flight (stop reason 'aborted', the tokens so far are
    returned). Both are threading primitives: HTTP requests run on the server's own event loop
    thread, verl's calls on the Ray actor's. `lock` serialises sampling and weight loads, so
    one answer never mixes two weight versions.

    A subclass supplies the model: `begin` (prompt -> state), `step` (state -> token id, its
    log-probability, next state), `eos_token_id`, `load_weights` (under `lock`, setting
    `weight_version`), and the text side (`prompt_ids`, `decode`, `token_strings`, `text_ids`).
    """

    eos_token_id: int | None = None

    def __init__(self, max_new_tokens: int = MAX_NEW_TOKENS, max_prompt_tokens: int = 4096) -> None:
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens  # longer chat prompts keep their last tokens
        self.lock = threading.Lock()
        self.awake = threading.Event()
        self.awake.set()
        self.aborting = threading.Event()
        self.in_flight: set[str] = set()
        self.weight_version = 0  # the global step whose weights are loaded (0: initial)

    # -- the model (subclasses) --------------------------------------------------------------

    @abstractmethod
    def begin(self, prompt: list[int], temperature: float, seed: int) -> Any: ...

    @abstractmethod
    def step(self, state: Any) -> tuple[int, float, Any]: ...

    @abstractmethod
    def load_weights(self, state_dict: dict[str, Any], version: int) -> int: ...

    @abstractmethod
    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]: ...

    @abstractmethod
    def text_ids(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def token_strings(self, ids: Sequence[int]) -> list[str]: ...

    # -- the loop ----------------------------------------------------------------------------

    def sample(
        self,
        prompt: list[int],
        max_tokens: int,
        temperature: float,
        seed: int,
        request_id: str,
    ) -> Sampled:
        self.awake.wait()
        out_ids: list[int] = []
        out_lp: list[float] = []
        reason = "length"
        self.in_flight.add(request_id)
        try:
            with self.lock:
                version = self.weight_version
                state = self.begin(prompt, temperature, seed)
                for _ in range(max(1, min(max_tokens, self.max_new_tokens))):
                    if self.aborting.is_set():
                        reason = "aborted"
                        break
                    token, logprob, state = self.step(state)
                    out_ids.append(token)
                    out_lp.append(logprob)
                    if token == self.eos_token_id:
                        reason = "completed"
                        break
        finally:
            self.in_flight.discard(request_id)
        return Sampled(out_ids, out_lp, reason, version)


class HFPolicy(GatedSampler):
    """Sampling with the real token ids and log-probabilities of a Hugging Face causal LM."""

    def __init__(
        self,
        model_dir: Path,
        max_new_tokens: int = MAX_NEW_TOKENS,
        max_prompt_tokens: int = 4096,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(max_new_tokens, max_prompt_tokens)
        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.eos_token_id = self.tokenizer.eos_token_id

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        plain = [
            {"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in messages
        ]
        encoded: Any = self.tokenizer.apply_chat_template(
            plain, add_generation_prompt=True, tokenize=True
        )
        if hasattr(encoded, "keys"):  # a BatchEncoding in newer transformers
            encoded = encoded["input_ids"]
        return [int(t) for t in encoded][-self.max_prompt_tokens :]

    def text_ids(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [str(self.tokenizer.convert_ids_to_tokens(int(t))) for t in ids]

    def begin(self, prompt: list[int], temperature: float, seed: int) -> Any:
        return {
            "ids": self.torch.tensor([prompt]),
            "past": None,
            "temperature": temperature,
            "generator": self.torch.Generator().manual_seed(seed),
        }

    def step(self, state: Any) -> tuple[int, float, Any]:
        torch = self.torch
        with torch.no_grad():
            result = self.model(
                input_ids=state["ids"], past_key_values=state["past"], use_cache=True
            )
        logits = result.logits[0, -1].float()
        temperature = state["temperature"]
        logp = torch.log_softmax(logits / max(temperature, 1e-5), dim=-1)
        if temperature <= 0:
            token = int(torch.argmax(logp))
        else:
            token = int(torch.multinomial(logp.exp(), 1, generator=state["generator"]))
        state = {**state, "ids": torch.tensor([[token]]), "past": result.past_key_values}
        return token, float(logp[token]), state

    def load_weights(self, state_dict: dict[str, Any], version: int) -> int:
        """Replace the weights (names as the FSDP actor's HF state dict); returns how many."""
        with self.lock, self.torch.no_grad():
            own = self.model.state_dict()
            missing = [name for name in own if name not in state_dict]
            tied = getattr(self.model.config, "tie_word_embeddings", False)
            if tied:
                missing = [n for n in missing if n != "lm_head.weight"]
            if missing:
                raise ValueError(f"weight update lacks {len(missing)} tensors, e.g. {missing[:3]}")
            for name, tensor in state_dict.items():
                if name in own:
                    own[name].copy_(tensor.to(own[name].dtype))
            self.weight_version = version
        return len(state_dict)


def _logprobs(policy: GatedSampler, ids: list[int], lps: list[float]) -> dict[str, Any]:
    return {
        "content": [
            {"token": token, "logprob": lp, "bytes": None, "top_logprobs": []}
            for token, lp in zip(policy.token_strings(ids), lps, strict=True)
        ]
    }


FINISH = {"completed": "stop", "length": "length", "aborted": "abort"}


def build_app(policy: GatedSampler, served_model_name: str) -> Any:
    from aiohttp import web

    async def models(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": served_model_name, "object": "model", "owned_by": "hvt-cpu"}],
            }
        )

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def tokenize(request: web.Request) -> web.Response:
        """vLLM's /tokenize: the prompt ids a chat request renders to (the proxy's logger asks
        for them because LiteLLM drops prompt_token_ids from streams)."""
        body = await request.json()
        if "messages" in body:
            ids = policy.prompt_ids(body.get("messages") or [])
        else:
            ids = policy.text_ids(str(body.get("prompt", "")))
        return web.json_response(
            {"count": len(ids), "max_model_len": policy.max_prompt_tokens, "tokens": ids}
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = policy.prompt_ids(body.get("messages") or [])
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        temperature = float(1.0 if body.get("temperature") is None else body["temperature"])
        seed = int(body.get("seed") or uuid.uuid4().int % 2**31)
        want_ids = bool(body.get("return_token_ids"))
        want_lp = bool(body.get("logprobs"))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(
            None, policy.sample, prompt, max_tokens, temperature, seed, rid
        )
        ids, lps = out.token_ids, out.logprobs
        finish = FINISH[out.reason]
        headers = {WEIGHT_VERSION_HEADER: str(out.weight_version)}
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(ids),
            "total_tokens": len(prompt) + len(ids),
        }
        if not body.get("stream"):
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": policy.decode(ids)},
                "logprobs": _logprobs(policy, ids, lps) if want_lp else None,
            }
            if want_ids:
                choice["token_ids"] = ids
            payload: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": served_model_name,
                "choices": [choice],
                "usage": usage,
                "weight_version": out.weight_version,
            }
            if want_ids:
                payload["prompt_token_ids"] = prompt
            return web.json_response(payload, headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
        await response.prepare(request)

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": served_model_name,
            "weight_version": out.weight_version,
        }
        first: dict[str, Any] = {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
        if want_ids:
            first["prompt_token_ids"] = prompt
        await send(first)
        for tid, lp in zip(ids, lps, strict=True):
            delta_choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": policy.decode([tid])},
                "finish_reason": None,
            }
            if want_ids:
                delta_choice["token_ids"] = [tid]
            if want_lp:
                delta_choice["logprobs"] = _logprobs(policy, [tid], [lp])
            await send({**base, "choices": [delta_choice]})
        await send(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                "usage": usage,
            }
        )
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application(client_max_size=64 * 2**20)
    app.add_routes(
        [
            web.get("/v1/models", models),
            web.get("/health", health),
            web.post("/v1/chat/completions", chat),
            web.post("/tokenize", tokenize),
        ]
    )
    return app


def serve_in_thread(policy: GatedSampler, served_model_name: str, host: str = "0.0.0.0") -> int:
    """Start the HTTP server on a free port in a daemon thread; return the port."""
    from aiohttp import web

    ready: dict[str, int] = {}
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(build_app(policy, served_model_name), access_log=None)
        loop.run_until_complete(runner.setup())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        loop.run_until_complete(web.SockSite(runner, sock).start())
        ready["port"] = int(sock.getsockname()[1])
        started.set()
        loop.run_forever()

    threading.Thread(target=run, name="cpu-rollout-http", daemon=True).start()
    if not started.wait(60):
        raise RuntimeError("CPU rollout server did not start within 60 s")
    return ready["port"]


class CpuRolloutServer:
    """The Ray actor behind `vllm_server_{replica}_0` (wrapped with ray.remote by CpuReplica)."""

    def __init__(
        self, model_dir: str, served_model_name: str, replica_rank: int, max_prompt_tokens: int
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_prompt_tokens = max_prompt_tokens
        self.served_model_name = served_model_name
        self.replica_rank = replica_rank
        self.policy: GatedSampler | None = None
        self.address: tuple[str, int] | None = None
        self.global_steps = 0

    async def launch_server(self) -> tuple[str, int]:
        import ray

        self.policy = await asyncio.to_thread(
            HFPolicy, self.model_dir, max_prompt_tokens=self.max_prompt_tokens
        )
        port = await asyncio.to_thread(serve_in_thread, self.policy, self.served_model_name)
        self.address = (ray.util.get_node_ip_address(), port)  # type: ignore[no-untyped-call]
        log.info("vllm_server_%d_0 (CPU) serving on %s:%d", self.replica_rank, *self.address)
        return self.address

    def _policy(self) -> GatedSampler:
        if self.policy is None:
            raise RuntimeError("the CPU rollout server was not launched")
        return self.policy

    async def get_server_address(self) -> tuple[str, int]:
        """The HTTP address, once launched: discovery may ask as soon as the actor has its name
        (vLLM's servers answer only when serving, too)."""
        while self.address is None:
            await asyncio.sleep(0.5)
        return self.address

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        **_media: Any,
    ) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        policy = self._policy()
        temperature = float(sampling_params.get("temperature", 1.0))
        max_tokens = int(sampling_params.get("max_tokens") or policy.max_new_tokens)
        seed = int(sampling_params.get("seed") or uuid.uuid4().int % 2**31)
        out = await asyncio.to_thread(
            policy.sample, list(prompt_ids), max_tokens, temperature, seed, request_id
        )
        return TokenOutput(
            token_ids=out.token_ids,
            log_probs=out.logprobs,
            stop_reason="aborted" if out.reason == "aborted" else "completed",
            extra_fields={"global_steps": out.weight_version},
        )

    def update_weights(self, state_dict: dict[str, Any], global_steps: int | None) -> int:
        count = self._policy().load_weights(state_dict, int(global_steps or 0))
        log.info("vllm_server_%d_0: %d tensors, step %s", self.replica_rank, count, global_steps)
        return count

    def weight_version(self) -> int:
        return self._policy().weight_version

    async def sleep(self) -> None:
        self._policy().awake.clear()

    async def wake_up(self, tags: list[str] | None = None) -> None:
        self._policy().awake.set()

    async def wait_for_requests_to_drain(self) -> None:
        while self._policy().in_flight:
            await asyncio.sleep(0.05)

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        policy = self._policy()
        ids = sorted(policy.in_flight)
        policy.awake.clear()  # new requests wait for resume_generation
        policy.aborting.set()
        while policy.in_flight:
            await asyncio.sleep(0.01)
        policy.aborting.clear()
        return {"aborted_count": len(ids), "request_ids": ids}

    async def resume_generation(self) -> None:
        self._policy().awake.set()

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def clear_kv_cache(self) -> None:
        return None  # no cache kept between requests

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def start_profile(self, **_kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None
