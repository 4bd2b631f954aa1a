"""Scans of the raw YAML tree: unfilled `human` markers, placeholder strings and secrets.

These run before the typed model so that they name the key even when its type is also wrong,
and so that a secret is reported as a secret, not as "a string where a bool was expected".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from hvt.config.problems import Problem

HUMAN_MARKER = "human"

PLACEHOLDERS = re.compile(
    r"^<[^>]*>$|REPLACE[_-]?ME|YOUR[_-]API[_-]KEY|YOUR[_-]TOKEN|^changeme$|^xxx+$|^TODO$|^FIXME$"
    r"|ghp_YOUR_TOKEN_HERE|^/path/to/",
    re.IGNORECASE,
)

# Keys whose value is a secret whatever it looks like.
SECRET_KEY = re.compile(r"(api[_-]?key|token|password|passwd|secret|private[_-]?key)$", re.I)

# Values that are secrets whatever their key is called.
SECRET_VALUE = re.compile(
    r"^(sk-[A-Za-z0-9_-]{6,}"  # OpenAI / Anthropic / LiteLLM style keys
    r"|sk-ant-[A-Za-z0-9_-]+"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|hf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JWT / k8s token
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*)$",
    re.S,
)

ENV_FOR_SECRET = {
    "wandb_api_key": "WANDB_API_KEY (or the compose secret wandb_api_key)",
    "anthropic_api_key": "LITELLM_MASTER_KEY (or the compose secret litellm_master_key); "
    "agents get it from their environment",
}


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, str(index)))
    else:
        yield path, node


def scan(raw: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for path, value in _leaves(raw):
        dotted = ".".join(path)
        key = path[-1] if path else ""
        in_input = path[:2] == ("runtime_info", "input")
        if SECRET_KEY.search(key) and value not in (None, ""):
            where = ENV_FOR_SECRET.get(key, "an environment variable or a compose secret")
            problems.append(
                Problem(
                    dotted,
                    "a secret value is written in the config file",
                    f'set it to "" and provide it through {where}; rotate the leaked value',
                )
            )
            continue
        if isinstance(value, str) and SECRET_VALUE.match(value.strip()):
            problems.append(
                Problem(
                    dotted,
                    "looks like a secret (an API key, token or private key)",
                    "remove it from the file; secrets come from the environment or compose"
                    " secrets; rotate the leaked value",
                )
            )
            continue
        if not in_input or not isinstance(value, str):
            continue
        if value.strip() == HUMAN_MARKER:
            problems.append(
                Problem(
                    dotted,
                    "not filled in (still the `human` marker)",
                    "replace `human` with your value; see the comment beside it in"
                    " config/config.yaml",
                )
            )
        elif PLACEHOLDERS.search(value.strip()):
            problems.append(
                Problem(dotted, f"is a placeholder ({value!r})", "replace it with the real value")
            )
    return problems


def flagged_paths(problems: list[Problem]) -> set[str]:
    return {p.path for p in problems}
