"""The LiteLLM master key, from the environment or a secret file (hvt.secret_env): the proxy
requires it and admits it as the admin; no sandbox ever gets it (trial credentials instead)."""

from __future__ import annotations

from collections.abc import Mapping

from hvt.secret_env import read_secret

MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
MASTER_KEY_FILE_ENV = "LITELLM_MASTER_KEY_FILE"
MIN_LENGTH = 16


class MasterKeyError(ValueError):
    """No usable key; the message says which variable or file to fix."""


def resolve(env: Mapping[str, str], key_env: str = MASTER_KEY_ENV) -> str:
    return read_secret(
        env,
        key_env,
        MASTER_KEY_FILE_ENV,
        error=MasterKeyError,
        mount_hint=f"mount the compose secret litellm_master_key there, or set {key_env}",
        missing=f"refusing to start without a master key: set {key_env} or {MASTER_KEY_FILE_ENV} "
        "(a file holding the key, e.g. /run/secrets/litellm_master_key)",
        min_length=MIN_LENGTH,
        what="master key",
    )
