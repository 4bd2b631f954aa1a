"""Ray token authentication for the bundle's own cluster, on by default.

Ray 2.60 turns a new head's token auth on when `~/.ray/auth_token` exists but leaves clients
without the token unless told, so a leftover file breaks every `ray.init(address=...)`. The
launcher instead makes one token per work directory (0600, in its state dir) and gives the head,
verl, discovery and every other client the same explicit settings.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = "ray_auth_token"


def token_path(state_dir: Path) -> Path:
    """The run's token: in the run directory, which every trainer host shares (multi-node)."""
    return state_dir / TOKEN_FILE


def settings(state_dir: Path) -> dict[str, str]:
    """RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH for every Ray process of this run (the head makes
    the token; `hvt worker` only reads it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = token_path(state_dir)
    if not path.is_file() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
        finally:
            os.close(fd)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
