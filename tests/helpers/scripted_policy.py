"""A next-token model for the CPU rollout server's own sampling loop and HTTP API, without torch.

`ScriptedPolicy` is a `verl_patch.cpu.server.GatedSampler`: the gate (sleep, abort, resume),
the loop, the weight version and the HTTP layer are the server's real code; only the model is
scripted. It writes `words` words, one per `delay_s`, then its end-of-turn token, so a test can
abort it mid-answer. Its chat template is prefix-consistent like a real one: a conversation
that continues a call (the call's messages + its answer + a new message) renders to the
call's prompt ids + its sampled ids + the new message's ids, so the proxy's records assemble
into one exact chain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from verl_patch.cpu.server import GatedSampler

END = 1  # end of a turn; also the end-of-sequence token
ROLES = {"system": 2, "user": 3, "assistant": 4, "tool": 5}
FIRST_WORD_ID = 10


class ScriptedPolicy(GatedSampler):
    def __init__(self, words: int = 12, delay_s: float = 0.1, max_new_tokens: int = 64) -> None:
        super().__init__(max_new_tokens=max_new_tokens, max_prompt_tokens=4096)
        self.eos_token_id = END
        self.words = words
        self.delay_s = delay_s
        self.vocab: dict[str, int] = {}
        self.names: dict[int, str] = {}
        self.sampled = 0  # tokens sampled so far, all calls (tests wait on it)
        self.vocab_lock = threading.Lock()

    def _id(self, word: str) -> int:
        with self.vocab_lock:
            if word not in self.vocab:
                token = FIRST_WORD_ID + len(self.vocab)
                self.vocab[word] = token
                self.names[token] = word
            return self.vocab[word]

    def text_ids(self, text: str) -> list[int]:
        return [self._id(word) for word in text.split()]

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        ids: list[int] = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            ids += [ROLES.get(str(message.get("role")), ROLES["user"])]
            ids += [*self.text_ids(str(content or "")), END]
        return [*ids, ROLES["assistant"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Each word with its leading space, as byte-level BPE tokens carry theirs: the text of
        a stream's deltas, joined, is the text of the whole answer."""
        return "".join(f" {self.names[t]}" for t in ids if t in self.names)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.names.get(t, f"<{t}>") for t in ids]

    def begin(self, prompt: list[int], temperature: float, seed: int) -> Any:
        return 0  # words written so far

    def step(self, state: Any) -> tuple[int, float, Any]:
        time.sleep(self.delay_s)
        self.sampled += 1
        if state >= self.words:
            return END, -0.25, state + 1
        return self._id(f"w{state}v{self.weight_version}"), -0.5, state + 1

    def load_weights(self, state_dict: dict[str, Any], version: int) -> int:
        with self.lock:
            self.weight_version = version
        return len(state_dict)
