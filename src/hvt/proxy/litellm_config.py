"""Build and atomically write the LiteLLM proxy config for a set of vLLM replicas.

Every replica gets the same three model names, so LiteLLM load-balances each name over all
replicas:
  - `claude-*`                   what claude-code sends (main, background and haiku calls)
  - `hosted_vllm/<served name>`  LiteLLM-style provider name
  - `<served name>`              the plain vLLM served model name
Each deployment asks vLLM for the sampled token ids (`return_token_ids`) and their logprobs,
so the trajectory logger can store exactly what the policy produced. The master key is read
from the environment (`os.environ/LITELLM_MASTER_KEY`) and never written to the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hvt.proxy.discovery import Replica

DEFAULT_PATH = Path("/shared/litellm/config.yaml")
PATH_ENV = "HVT_LITELLM_CONFIG"
CALLBACK = "hvt.trajectory.logger.proxy_handler_instance"
CUSTOM_AUTH = "hvt.proxy.auth.user_api_key_auth"
MASTER_KEY_REF = "os.environ/LITELLM_MASTER_KEY"
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


@dataclass(frozen=True)
class ProxySettings:
    served_model_name: str
    request_timeout_s: int = 900
    return_token_ids: bool = True
    logprobs: bool = True


def default_path() -> Path:
    env = os.environ.get(PATH_ENV)
    return Path(env) if env else DEFAULT_PATH


def check_served_model_name(name: str) -> str:
    if "/" in name or not SERVED_NAME.match(name):
        raise ValueError(
            f"served model name {name!r} is not usable as a vLLM --served-model-name and LiteLLM "
            "alias: use letters, digits, '.', '_', ':' and '-' (no '/')"
        )
    return name


def aliases(served_model_name: str) -> list[str]:
    return ["claude-*", f"hosted_vllm/{served_model_name}", served_model_name]


def _slug(alias: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", alias).strip("-") or "alias"


def build(replicas: Sequence[Replica], settings: ProxySettings) -> dict[str, Any]:
    """The LiteLLM config as a mapping (model_list, litellm_settings, general_settings)."""
    if not replicas:
        raise ValueError("no replicas: refusing to write a LiteLLM config without backends")
    served = check_served_model_name(settings.served_model_name)
    model_list: list[dict[str, Any]] = []
    for replica in sorted(replicas):
        for alias in aliases(served):
            params: dict[str, Any] = {
                "model": f"hosted_vllm/{served}",
                "api_base": replica.api_base,
                "api_key": "none",  # vLLM started by verl checks no key
                "timeout": settings.request_timeout_s,
            }
            if settings.logprobs:
                params["logprobs"] = True
            if settings.return_token_ids:
                params["extra_body"] = {"return_token_ids": True}
            model_list.append(
                {
                    "model_name": alias,
                    "litellm_params": params,
                    "model_info": {
                        "id": f"vllm-{replica.index}-{_slug(alias)}",
                        "supports_reasoning": False,
                    },
                }
            )
    return {
        "model_list": model_list,
        "litellm_settings": {
            "drop_params": True,
            "request_timeout": settings.request_timeout_s,
            "use_chat_completions_url_for_anthropic_messages": True,
            "callbacks": [CALLBACK],
        },
        "general_settings": {
            "master_key": MASTER_KEY_REF,
            "custom_auth": CUSTOM_AUTH,
        },
    }


def fingerprint(replicas: Sequence[Replica], settings: ProxySettings) -> str:
    """Identifies the backend set and settings; the file is rewritten only when it changes."""
    data = {
        "replicas": [(r.index, r.api_base) for r in sorted(replicas)],
        "settings": [
            settings.served_model_name,
            settings.request_timeout_s,
            settings.return_token_ids,
            settings.logprobs,
        ],
    }
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def render(replicas: Sequence[Replica], settings: ProxySettings) -> str:
    header = [
        "# Written by `hvt litellm-config`; rewritten when the vLLM replica set changes.",
        f"# fingerprint: {fingerprint(replicas, settings)}",
        "# replicas: " + ", ".join(f"{r.index}={r.api_base}" for r in sorted(replicas)),
        "",
    ]
    body = yaml.safe_dump(build(replicas, settings), sort_keys=False, width=100)
    return "\n".join(header) + body


def read_fingerprint(path: Path) -> str | None:
    try:
        with path.open() as fh:
            for line in fh:
                if line.startswith("# fingerprint: "):
                    return line.split(":", 1)[1].strip()
                if not line.startswith("#"):
                    break
    except OSError:
        return None
    return None


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory, fsync, rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write(path: Path, replicas: Sequence[Replica], settings: ProxySettings) -> bool:
    """Write the config if its fingerprint differs from the file's; True when written."""
    if read_fingerprint(path) == fingerprint(replicas, settings):
        return False
    write_atomic(path, render(replicas, settings))
    return True
