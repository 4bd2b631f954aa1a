"""The CPU smoke policy: a tiny model made on the spot, served like verl's vLLM replicas.

No model hub is reachable and no GPU is present, so `make smoke` creates a tiny, randomly
initialised causal LM with a tokenizer trained locally, and serves it on the CPU from Ray actors
that carry verl's names (`vllm_server_{i}_0`) and interface (`get_server_address()`). Each
replica speaks the part of vLLM's OpenAI API the rollout chain uses: chat completions, streamed
or not, with `return_token_ids` (prompt_token_ids, token_ids) and `logprobs`. The tokens and
log-probabilities are the ones the model really sampled, so the exact-token path of the agent
loop is exercised for real. This is a plumbing check, not a trainer: the text is noise.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{{ part.get('text', '') }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "def solve(): return the answer to the task in the repository",
    "I will read the file, run the tests and fix the failing function.",
    "The bug is in the parser: it drops the last token of the input line.",
    "import os, sys, json, re; print('hello world')",
    "git diff shows the change; the verifier runs pytest on the tests directory.",
]


def make_tiny_model(directory: Path, seed: int = 0) -> Path:
    """A ~1 MB Qwen2-shaped causal LM with a locally trained BPE tokenizer (idempotent)."""
    if (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class TinyPolicy:
    """Sampling with the real token ids and log-probabilities of the tiny model."""

    def __init__(
        self,
        model_dir: Path,
        max_new_tokens: int = 24,
        max_prompt_tokens: int = 2048,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.lock = threading.Lock()

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

    def sample(
        self,
        prompt: list[int],
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> tuple[list[int], list[float], str]:
        torch = self.torch
        generator = torch.Generator().manual_seed(seed)
        out_ids: list[int] = []
        out_lp: list[float] = []
        with self.lock, torch.no_grad():
            ids = torch.tensor([prompt])
            past = None
            for _ in range(max(1, min(max_tokens, self.max_new_tokens))):
                result = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = result.past_key_values
                logits = result.logits[0, -1].float()
                logp = torch.log_softmax(logits / max(temperature, 1e-5), dim=-1)
                if temperature <= 0:
                    token = int(torch.argmax(logp))
                else:
                    token = int(torch.multinomial(logp.exp(), 1, generator=generator))
                out_ids.append(token)
                out_lp.append(float(logp[token]))
                if token == self.tokenizer.eos_token_id:
                    break
                ids = torch.tensor([[token]])
        text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
        return out_ids, out_lp, text


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else json.dumps(content)


def _logprobs(policy: TinyPolicy, ids: list[int], lps: list[float]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": policy.tokenizer.convert_ids_to_tokens(t),
                "logprob": lp,
                "bytes": None,
                "top_logprobs": [],
            }
            for t, lp in zip(ids, lps, strict=True)
        ]
    }


def build_app(policy: TinyPolicy, served_model_name: str) -> Any:
    from aiohttp import web

    async def models(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": served_model_name, "object": "model", "owned_by": "hvt-smoke"}],
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
            ids = list(policy.tokenizer(str(body.get("prompt", "")))["input_ids"])
        return web.json_response(
            {"count": len(ids), "max_model_len": policy.max_prompt_tokens, "tokens": ids}
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = policy.prompt_ids(body.get("messages") or [])
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        temperature = float(
            body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0
        )
        seed = int(body.get("seed") or uuid.uuid4().int % 2**31)
        want_ids = bool(body.get("return_token_ids"))
        want_lp = bool(body.get("logprobs"))
        loop = asyncio.get_running_loop()
        ids, lps, text = await loop.run_in_executor(
            None, policy.sample, prompt, max_tokens, temperature, seed
        )
        finish = "stop" if ids and ids[-1] == policy.tokenizer.eos_token_id else "length"
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(ids),
            "total_tokens": len(prompt) + len(ids),
        }
        if not body.get("stream"):
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": text},
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
            }
            if want_ids:
                payload["prompt_token_ids"] = prompt
            return web.json_response(payload)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": served_model_name,
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
            piece = policy.tokenizer.decode([tid], skip_special_tokens=True)
            delta_choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": piece},
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


def serve_in_thread(
    policy: TinyPolicy,
    served_model_name: str,
    host: str = "0.0.0.0",
) -> int:
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

    threading.Thread(target=run, name="smoke-policy-http", daemon=True).start()
    if not started.wait(60):
        raise RuntimeError("smoke policy server did not start within 60 s")
    return ready["port"]


def start_replicas(count: int, model_dir: Path, served_model_name: str) -> list[Any]:
    """Ray actors `vllm_server_{i}_0` in this driver's namespace, like verl's; return handles."""
    import ray

    @ray.remote(num_cpus=0)
    class SmokeVllmServer:
        def __init__(self, replica: int) -> None:
            self.replica = replica
            self.address: tuple[str, int] | None = None

        def launch(self) -> tuple[str, int]:
            policy = TinyPolicy(model_dir)
            port = serve_in_thread(policy, served_model_name)
            self.address = (ray.util.get_node_ip_address(), port)  # type: ignore[no-untyped-call]
            return self.address

        def get_server_address(self) -> tuple[str, int]:
            assert self.address is not None, "server not launched"
            return self.address

    actors = [
        SmokeVllmServer.options(name=f"vllm_server_{i}_0").remote(i)  # type: ignore[attr-defined]
        for i in range(count)
    ]
    ray.get([a.launch.remote() for a in actors], timeout=300)
    return actors


def perplexity_sanity(policy: TinyPolicy) -> float:
    """exp(-mean logprob) of one sample: finite and positive if the model really ran."""
    ids, lps, _ = policy.sample(policy.prompt_ids([{"role": "user", "content": "hi"}]), 8, 1.0, 1)
    return math.exp(-sum(lps) / len(lps)) if ids else float("nan")
