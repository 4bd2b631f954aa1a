"""Per-trial proxy credentials: what a sandbox holds instead of the proxy's master key.

A credential is `hvt1.<claims>.<signature>`: base64url JSON claims signed with HMAC-SHA256
under a signing secret that only the trainer (which mints) and the proxy (which verifies) hold
(the compose secret `proxy_signing_key`, read from HVT_PROXY_SIGNING_KEY_FILE or
HVT_PROXY_SIGNING_KEY). LiteLLM needs no database for it: the proxy's auth hook checks it.

The claims bind it to one trial and one purpose:
* `route`: the trial directory relative to the trials root, the only trajectory it may write;
* `models`: the policy's served names, the only models it may call;
* `exp`: a Unix time after which it is refused (the trial's time limits plus a margin);
* `id`: random, named in the proxy's log.
When the trial ends the trainer writes REVOKED into the trial directory, which no sandbox can
write (a sandbox shares only agent/ and verifier/ with the trainer): the credential is refused
from then on, before it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hvt.secret_env import read_secret

PREFIX = "hvt1"
SIGNING_KEY_ENV = "HVT_PROXY_SIGNING_KEY"
SIGNING_KEY_FILE_ENV = "HVT_PROXY_SIGNING_KEY_FILE"
MIN_KEY_LENGTH = 32
REVOKED = "hvt-credential-revoked"  # marker file in the trial directory
MAX_TOKEN_LENGTH = 4096


class SigningKeyError(ValueError):
    """No usable signing secret; the message names the variable or file to fix."""


class CredentialRefused(ValueError):
    """The credential is not good for this call; str() is the reason (logged, never secret)."""


@dataclass(frozen=True)
class Claims:
    route: str
    models: tuple[str, ...]
    exp: int
    id: str


def signing_key(env: Mapping[str, str]) -> bytes:
    return read_secret(
        env,
        SIGNING_KEY_ENV,
        SIGNING_KEY_FILE_ENV,
        error=SigningKeyError,
        mount_hint="mount the compose secret proxy_signing_key there; `make secrets` creates it",
        missing=f"no signing secret for trial credentials: set {SIGNING_KEY_FILE_ENV} (e.g. "
        f"/run/secrets/proxy_signing_key, made by `make secrets`) or {SIGNING_KEY_ENV}",
        min_length=MIN_KEY_LENGTH,
        what="signing secret",
    ).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, f"{PREFIX}.{body}".encode(), hashlib.sha256).digest())


def mint(
    key: bytes, route: str, models: tuple[str, ...], ttl_sec: float, now: float | None = None
) -> str:
    if not route or not models or ttl_sec <= 0:
        raise ValueError("a credential needs a route, at least one model and a positive ttl")
    claims = {
        "route": route,
        "models": list(models),
        "exp": int((time.time() if now is None else now) + ttl_sec),
        "id": secrets.token_hex(8),
    }
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{PREFIX}.{body}.{_sign(key, body)}"


def looks_like_credential(token: str) -> bool:
    return token.startswith(PREFIX + ".")


def verify(key: bytes, token: str, now: float | None = None) -> Claims:
    """The claims of a well-signed, unexpired credential; CredentialRefused otherwise."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise CredentialRefused("credential too long")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise CredentialRefused("not a trial credential")
    body, signature = parts[1], parts[2]
    if not hmac.compare_digest(_sign(key, body), signature):
        raise CredentialRefused("bad signature")
    try:
        raw = json.loads(_unb64(body))
        claims = Claims(
            route=str(raw["route"]),
            models=tuple(str(m) for m in raw["models"]),
            exp=int(raw["exp"]),
            id=str(raw["id"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CredentialRefused(f"malformed claims ({type(exc).__name__})") from None
    if (time.time() if now is None else now) >= claims.exp:
        raise CredentialRefused(f"expired at {claims.exp}")
    return claims


def revoke(trial_dir: Path) -> None:
    """The trial is over: its credential is refused from now on."""
    (trial_dir / REVOKED).write_text(f"{int(time.time())}\n")


def is_revoked(trial_dir: Path) -> bool:
    return (trial_dir / REVOKED).exists()
