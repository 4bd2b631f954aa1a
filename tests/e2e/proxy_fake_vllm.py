"""A small, fast OpenAI-compatible server that answers like vLLM 0.24 does (test backend only).

It stands in for the policy where the policy is not what is tested (proxy, discovery, logger).
Like vLLM's chat-completions endpoint it returns, when asked:
  - `return_token_ids: true`  -> top-level `prompt_token_ids` and per-choice `token_ids`
                                 (streaming: `prompt_token_ids` in the first chunk, then
                                 `token_ids` per delta)
  - `logprobs: true`          -> `choices[i].logprobs.content[{token, logprob, bytes,
                                 top_logprobs}]`
A request whose last user message contains CALL_TOOL (with tools given) gets a tool call.
Counters per path are served on GET /stats so tests can see which replica got the traffic.

Run: python tests/e2e/proxy_fake_vllm.py --host 127.0.0.1 --port 0 --served-model-name m
(prints `LISTENING <host>:<port>` once it accepts connections).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

VOCAB = 32000


def token_ids_for(text: str) -> list[int]:
    """Deterministic fake tokenization: one id per whitespace-separated word."""
    return [sum(word.encode()) * 31 % VOCAB for word in text.split()] or [0]


def _flatten(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _logprobs(words: list[str], ids: list[int]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": word,
                "logprob": -0.01 * (i + 1),
                "bytes": list(word.encode()),
                "top_logprobs": [{"token": word, "logprob": -0.01 * (i + 1), "bytes": None}],
            }
            for i, (word, _) in enumerate(zip(words, ids, strict=True))
        ]
    }


class FakeVllm:
    def __init__(self, served_model_name: str, replica: str, max_model_len: int = 32768) -> None:
        self.served_model_name = served_model_name
        self.replica = replica
        self.max_model_len = max_model_len
        self.counts: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/stats", self.stats)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"replica": self.replica, "counts": dict(self.counts)})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's chat /tokenize: the prompt ids the same messages get in chat completions."""
        body = await request.json()
        self.counts["tokenize"] += 1
        messages = body.get("messages") or []
        ids = token_ids_for(" ".join(_flatten(m.get("content")) for m in messages))
        return web.json_response(
            {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}
        )

    async def models(self, _: web.Request) -> web.Response:
        self.counts["models"] += 1
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.served_model_name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "vllm",
                        "max_model_len": self.max_model_len,
                    }
                ],
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.counts["chat"] += 1
        if body.get("model") != self.served_model_name:
            self.counts["wrong_model"] += 1
            return web.json_response(
                {
                    "object": "error",
                    "message": f"The model `{body.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "code": 404,
                },
                status=404,
            )
        messages = body.get("messages") or []
        prompt_text = " ".join(_flatten(m.get("content")) for m in messages)
        last_user = next(
            (_flatten(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
            "",
        )
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        words = f"reply from {self.replica} to {len(messages)} messages".split()[:max_tokens]
        ids = token_ids_for(" ".join(words))
        tool_calls = None
        if body.get("tools") and "CALL_TOOL" in last_user:
            fn = body["tools"][0]["function"]["name"]
            tool_calls = [
                {
                    "id": f"call_{uuid.uuid4().hex[:12]}",
                    "type": "function",
                    "function": {"name": fn, "arguments": json.dumps({"path": "README.md"})},
                }
            ]
        want_ids = bool(body.get("return_token_ids"))
        want_lp = bool(body.get("logprobs"))
        prompt_ids = token_ids_for(prompt_text)
        usage = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(ids),
            "total_tokens": len(prompt_ids) + len(ids),
        }
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        finish = "tool_calls" if tool_calls else ("length" if len(words) >= max_tokens else "stop")
        if body.get("stream"):
            return await self._stream(
                request,
                rid,
                created,
                words,
                ids,
                prompt_ids,
                want_ids,
                want_lp,
                finish,
                usage,
                tool_calls,
                bool((body.get("stream_options") or {}).get("include_usage")),
            )
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
        if tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": _logprobs(words, ids) if want_lp else None,
            "finish_reason": finish,
            "stop_reason": None,
            "token_ids": ids if want_ids else None,
        }
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": self.served_model_name,
                "choices": [choice],
                "usage": usage,
                "system_fingerprint": f"fake-vllm-{self.replica}",
                "prompt_token_ids": prompt_ids if want_ids else None,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        rid: str,
        created: int,
        words: list[str],
        ids: list[int],
        prompt_ids: list[int],
        want_ids: bool,
        want_lp: bool,
        finish: str,
        usage: dict[str, int],
        tool_calls: list[dict[str, Any]] | None,
        include_usage: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], **extra: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            choice.update(extra.pop("choice", {}))
            obj = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.served_model_name,
                "choices": [choice],
                **extra,
            }
            return f"data: {json.dumps(obj)}\n\n".encode()

        first: dict[str, Any] = {"prompt_token_ids": prompt_ids} if want_ids else {}
        await resp.write(chunk({"role": "assistant", "content": ""}, **first))
        if tool_calls:
            call = {"index": 0, **tool_calls[0]}
            await resp.write(chunk({"tool_calls": [call]}))
        else:
            for i, (word, tid) in enumerate(zip(words, ids, strict=True)):
                extra: dict[str, Any] = {}
                if want_ids:
                    extra["token_ids"] = [tid]
                if want_lp:
                    extra["logprobs"] = _logprobs([word], [tid])
                text = word if i == 0 else " " + word
                await resp.write(chunk({"content": text}, choice=extra))
        await resp.write(chunk({}, choice={"finish_reason": finish}))
        if include_usage:
            obj = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.served_model_name,
                "choices": [],
                "usage": usage,
            }
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def start(
    host: str, port: int, served_model_name: str, replica: str
) -> tuple[web.AppRunner, int]:
    """Start the server on the running loop; returns the runner and the bound port."""
    runner = web.AppRunner(FakeVllm(served_model_name, replica).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(bound)


def start_in_thread(host: str, served_model_name: str, replica: str) -> int:
    """Run the server on its own loop in a daemon thread (used inside Ray actors)."""
    ready: dict[str, int] = {}
    event = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        _, port = loop.run_until_complete(start(host, 0, served_model_name, replica))
        ready["port"] = port
        event.set()
        loop.run_forever()

    threading.Thread(target=run, name=f"fake-vllm-{replica}", daemon=True).start()
    if not event.wait(30):
        raise RuntimeError("fake vLLM server did not start within 30 s")
    return ready["port"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--served-model-name", default="vllm_model")
    parser.add_argument("--replica", default="r0")
    args = parser.parse_args()

    async def serve() -> None:
        _, port = await start(args.host, args.port, args.served_model_name, args.replica)
        print(f"LISTENING {args.host}:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
