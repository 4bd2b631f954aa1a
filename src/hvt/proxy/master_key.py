"""The LiteLLM master key, from the environment or a secret file: one reader for the proxy
(which requires it) and the agent adapter (which hands it to claude-code)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
MASTER_KEY_FILE_ENV = "LITELLM_MASTER_KEY_FILE"
MIN_LENGTH = 16


class MasterKeyError(ValueError):
    """No usable key; the message says which variable or file to fix."""


def resolve(env: Mapping[str, str], key_env: str = MASTER_KEY_ENV) -> str:
    direct = env.get(key_env, "")
    file_name = env.get(MASTER_KEY_FILE_ENV, "")
    from_file = ""
    if file_name:
        try:
            from_file = Path(file_name).read_text().strip()
        except OSError as exc:
            raise MasterKeyError(
                f"{MASTER_KEY_FILE_ENV}={file_name} cannot be read: {exc.strerror} "
                f"(mount the compose secret litellm_master_key there, or set {key_env})"
            ) from None
        if not from_file:
            raise MasterKeyError(
                f"{MASTER_KEY_FILE_ENV}={file_name} is empty (write the key into it)"
            )
    if direct and from_file and direct.strip() != from_file:
        raise MasterKeyError(
            f"{key_env} and {MASTER_KEY_FILE_ENV} are both set and differ; set only one"
        )
    key = direct.strip() or from_file
    if not key:
        raise MasterKeyError(
            f"refusing to start without a master key: set {key_env} or {MASTER_KEY_FILE_ENV} "
            "(a file holding the key, e.g. /run/secrets/litellm_master_key)"
        )
    if len(key) < MIN_LENGTH:
        raise MasterKeyError(
            f"the master key is {len(key)} characters long; use at least {MIN_LENGTH}"
        )
    return key
