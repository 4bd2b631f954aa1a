"""LiteLLM `custom_auth`: the master key, a trial's own credential, or a clean 401.

LiteLLM 1.108 without a database answers a missing key with a 500 (its error handler imports
`prisma`) and a wrong key with a 400 ("No connected db"). This hook, registered as
`general_settings.custom_auth`, reads the key the client sent (Authorization: Bearer, or
x-api-key for Anthropic clients; LiteLLM extracts it):

* the master key (LITELLM_MASTER_KEY, compared in constant time): the proxy's admin, for the
  trainer and the operator, never for a sandbox;
* a trial credential (`hvt.trajectory.credentials`, what a sandbox holds): good only on the
  completion and message routes, for the models it names, with the routing header of its own
  trial, until it expires or its trial ends. Anything else is refused with 401 or 403 and a
  log line naming the trial and the reason.

Health endpoints do not go through auth.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from hvt.trajectory import credentials as creds
from hvt.trajectory.paths import HEADER, ROOT_ENV, RouteRefused, trial_parts

MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
# what a trial may call: chat completions (OpenAI) and messages (Anthropic), nothing else
TRIAL_ROUTES = frozenset(
    {
        "/chat/completions",
        "/v1/chat/completions",
        "/messages",
        "/v1/messages",
        "/v1/messages/count_tokens",
    }
)
log = logging.getLogger(__name__)


def key_matches(presented: str | None, expected: str | None) -> bool:
    if not presented or not expected:
        return False
    return hmac.compare_digest(_bare(presented).encode(), expected.encode())


def _bare(presented: str) -> str:
    return presented[7:].strip() if presented.lower().startswith("bearer ") else presented.strip()


def _refuse(status: int, claims: creds.Claims | None, path: str, reason: str) -> HTTPException:
    trial = claims.route if claims else "?"
    ident = claims.id if claims else "?"
    log.warning(
        "trial credential refused: %s (trial %s, credential %s, %s)", reason, trial, ident, path
    )
    return HTTPException(status_code=status, detail=f"trial credential refused: {reason}")


async def trial_auth(request: Request, token: str) -> UserAPIKeyAuth:
    path = request.url.path
    try:
        key = creds.signing_key(os.environ)
    except creds.SigningKeyError as exc:
        log.error("trial credentials cannot be checked: %s", exc)
        raise HTTPException(status_code=401, detail="trial credentials are not enabled") from None
    try:
        claims = creds.verify(key, token)
    except creds.CredentialRefused as exc:
        raise _refuse(401, None, path, str(exc)) from None
    root = Path(os.environ.get(ROOT_ENV, ""))
    try:
        parts = trial_parts(root, claims.route)
    except RouteRefused as exc:
        raise _refuse(401, claims, path, f"bad route: {exc}") from None
    if creds.is_revoked(root.joinpath(*parts)):
        raise _refuse(401, claims, path, "its trial has ended")
    if path.rstrip("/") not in TRIAL_ROUTES:
        raise _refuse(403, claims, path, f"route {path} is not a completion or message route")
    header = (request.headers.get(HEADER) or "").strip()
    if header != claims.route:
        said = repr(header) if header else "no"
        raise _refuse(403, claims, path, f"{said} {HEADER} header; it is bound to {claims.route!r}")
    model = await _model_of(request)
    if model not in claims.models:
        raise _refuse(403, claims, path, f"model {model!r} is not one of {list(claims.models)}")
    return UserAPIKeyAuth(
        api_key=f"sk-hvt-trial-{claims.id}",  # sk-: LiteLLM logs only its hash
        user_role=LitellmUserRoles.INTERNAL_USER,
        user_id=f"trial:{claims.route}",
        models=list(claims.models),
    )


async def _model_of(request: Request) -> str | None:
    """The body's `model` (Starlette keeps the body, so LiteLLM reads it again afterwards)."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


async def user_api_key_auth(request: Request, api_key: str) -> Any:
    if key_matches(api_key, os.environ.get(MASTER_KEY_ENV)):
        return UserAPIKeyAuth(
            api_key="sk-hvt-master-key",  # a label, not the key (sk-: logged hashed)
            user_role=LitellmUserRoles.PROXY_ADMIN,
            user_id="hvt",
        )
    token = _bare(api_key or "")
    if creds.looks_like_credential(token):
        return await trial_auth(request, token)
    raise HTTPException(
        status_code=401,
        detail="missing or invalid API key: send the proxy master key or a trial credential "
        "as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
    )
