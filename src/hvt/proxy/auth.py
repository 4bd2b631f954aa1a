"""LiteLLM `custom_auth`: the master key or nothing, answered with a clean 401.

LiteLLM 1.108 without a database answers a missing key with a 500 (its error handler imports
`prisma`) and a wrong key with a 400 ("No connected db"). This hook, registered as
`general_settings.custom_auth`, compares the key the client sent (Authorization: Bearer, or
x-api-key for Anthropic clients; LiteLLM extracts it) with LITELLM_MASTER_KEY in constant time
and raises HTTP 401 otherwise. Health endpoints do not go through auth.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

MASTER_KEY_ENV = "LITELLM_MASTER_KEY"


def key_matches(presented: str | None, expected: str | None) -> bool:
    if not presented or not expected:
        return False
    if presented.lower().startswith("bearer "):
        presented = presented[7:].strip()
    return hmac.compare_digest(presented.encode(), expected.encode())


async def user_api_key_auth(request: Request, api_key: str) -> Any:
    if key_matches(api_key, os.environ.get(MASTER_KEY_ENV)):
        return UserAPIKeyAuth(
            api_key="hvt-master-key",
            user_role=LitellmUserRoles.PROXY_ADMIN,
            user_id="hvt",
        )
    raise HTTPException(
        status_code=401,
        detail="missing or invalid API key: send the proxy master key as "
        "'Authorization: Bearer <key>' or 'x-api-key: <key>'",
    )
