"""What the CPU smoke trains on: a tiny model made on the spot and the smoke tasks' index.

No model hub is reachable and no GPU is present, so `make smoke` creates a tiny, randomly
initialised Qwen2-shaped causal LM (about 90k parameters) with a byte-level BPE tokenizer
trained locally ("\\n" is one token, as verl's agent loop needs), and indexes
config/smoke-tasks into the parquet files the config names. verl's real trainer then trains it
(`hvt launch --cpu-smoke`), served by the CPU rollout replica (verl_patch.cpu). The text it
writes is noise: the smoke checks the machinery, not the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvt.config.bundle import bundle_root
from hvt.config.model import RunConfig

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


def prepare_inputs(cfg: RunConfig) -> tuple[Path, list[dict[str, Any]]]:
    """The tiny model and the parquet indexes of the smoke tasks."""
    from hvt.run import tasks_index

    model = make_tiny_model(Path(cfg.inputs.model.model_path))
    data = Path(cfg.inputs.data.data_dir)
    tasks = bundle_root() / "config" / "smoke-tasks"
    entries = tasks_index.discover(tasks)
    train = tasks_index.rows(entries, split="train")
    tasks_index.write_parquet(train, data / cfg.inputs.data.train_index)
    tasks_index.write_parquet(
        tasks_index.rows(entries, split="val"), data / cfg.inputs.data.val_index
    )
    return model, train
