"""Per-trial proxy credentials and the proxy's auth hook: what a sandbox's credential may do,
and every way it is refused (each refusal logged with the trial and the reason)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from hvt.proxy import auth
from hvt.trajectory import credentials as creds

KEY = "k" * 40
MASTER = "sk-master-key-for-the-tests-only"
MODEL = "vllm_model"


@pytest.fixture
def trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "trials"
    for trial in ("step_0001/trial-a", "step_0001/trial-b"):
        (root / trial / "agent").mkdir(parents=True)
    monkeypatch.setenv(creds.SIGNING_KEY_ENV, KEY)
    monkeypatch.setenv(auth.MASTER_KEY_ENV, MASTER)
    monkeypatch.setenv("HVT_TRIALS_ROOT", str(root))
    return root


def _request(path: str, body: dict[str, Any], headers: dict[str, str]) -> Request:
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (k.lower().encode(), v.encode())
            for k, v in {"content-type": "application/json", **headers}.items()
        ],
        "scheme": "http",
        "server": ("proxy", 8002),
        "client": ("172.17.0.5", 40000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request(scope, receive)


def _call(
    token: str,
    path: str = "/v1/messages",
    model: str = MODEL,
    route: str | None = "step_0001/trial-a",
) -> Any:
    headers = {"x-harbor-trial-dir": route} if route is not None else {}
    request = _request(path, {"model": model, "messages": []}, headers)
    return asyncio.run(auth.user_api_key_auth(request, f"Bearer {token}"))


def _mint(route: str = "step_0001/trial-a", ttl: float = 600, now: float | None = None) -> str:
    return creds.mint(KEY.encode(), route, (MODEL,), ttl, now=now)


def _refused(token: str, caplog: pytest.LogCaptureFixture, **kw: Any) -> tuple[int, str]:
    with (
        caplog.at_level(logging.WARNING, logger="hvt.proxy.auth"),
        pytest.raises(HTTPException) as info,
    ):
        _call(token, **kw)
    return info.value.status_code, str(info.value.detail)


def test_the_trials_own_call_passes_as_a_non_admin(trials: Path) -> None:
    user = _call(_mint())
    assert user.user_role.value == "internal_user" and user.user_id == "trial:step_0001/trial-a"
    assert user.models == [MODEL]
    assert _call(_mint(), path="/v1/chat/completions").user_id == "trial:step_0001/trial-a"


def test_the_master_key_stays_admin(trials: Path) -> None:
    request = _request("/model/info", {}, {})
    user = asyncio.run(auth.user_api_key_auth(request, f"Bearer {MASTER}"))
    assert user.user_role.value == "proxy_admin"


def test_another_trials_route_is_refused_and_logged(
    trials: Path, caplog: pytest.LogCaptureFixture
) -> None:
    status, detail = _refused(_mint(), caplog, route="step_0001/trial-b")
    assert status == 403 and "bound to 'step_0001/trial-a'" in detail
    assert "trial step_0001/trial-a" in caplog.text and "x-harbor-trial-dir" in caplog.text
    status, detail = _refused(_mint(), caplog, route=None)
    assert status == 403 and "no x-harbor-trial-dir header" in detail


@pytest.mark.parametrize(
    "path",
    [
        "/key/generate",
        "/model/new",
        "/config/update",
        "/model/info",
        "/health",
        "/get/config/callbacks",
        "/v1/models",
        "/spend/logs",
        "/user/new",
    ],
)
def test_management_routes_refuse_a_trial_credential(
    trials: Path, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    status, detail = _refused(_mint(), caplog, path=path)
    assert status == 403 and f"route {path} is not a completion or message route" in detail


def test_another_model_is_refused(trials: Path, caplog: pytest.LogCaptureFixture) -> None:
    status, detail = _refused(_mint(), caplog, model="gpt-4o")
    assert status == 403 and "model 'gpt-4o'" in detail


def test_an_expired_credential_is_refused(trials: Path, caplog: pytest.LogCaptureFixture) -> None:
    status, detail = _refused(_mint(ttl=10, now=1_000_000), caplog)
    assert status == 401 and "expired at 1000010" in detail


def test_a_revoked_credential_is_refused(trials: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = _mint()
    assert _call(token).user_id == "trial:step_0001/trial-a"
    creds.revoke(trials / "step_0001" / "trial-a")
    status, detail = _refused(token, caplog)
    assert status == 401 and "its trial has ended" in detail


def test_forged_and_tampered_credentials_are_refused(
    trials: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = creds.mint(b"x" * 40, "step_0001/trial-a", (MODEL,), 600)
    assert _refused(other, caplog)[1].endswith("bad signature")
    prefix, body, sig = _mint().split(".")
    claims = json.loads(creds._unb64(body))
    claims["route"] = "step_0001/trial-b"
    forged = ".".join([prefix, creds._b64(json.dumps(claims).encode()), sig])
    assert _refused(forged, caplog, route="step_0001/trial-b")[1].endswith("bad signature")
    escape = creds.mint(KEY.encode(), "../outside", (MODEL,), 600)
    assert "contains '..'" in _refused(escape, caplog, route="../outside")[1]


def test_a_wrong_key_of_any_kind_gets_401(trials: Path) -> None:
    request = _request("/v1/messages", {"model": MODEL}, {})
    with pytest.raises(HTTPException) as info:
        asyncio.run(auth.user_api_key_auth(request, "Bearer sk-guess"))
    assert info.value.status_code == 401


def test_the_signing_secret_is_required_and_long(tmp_path: Path) -> None:
    with pytest.raises(creds.SigningKeyError, match="make secrets"):
        creds.signing_key({})
    with pytest.raises(creds.SigningKeyError, match="at least 32"):
        creds.signing_key({creds.SIGNING_KEY_ENV: "short"})
    secret = tmp_path / "proxy_signing_key"
    secret.write_text(KEY + "\n")
    assert creds.signing_key({creds.SIGNING_KEY_FILE_ENV: str(secret)}) == KEY.encode()
    with pytest.raises(creds.SigningKeyError, match="cannot be read"):
        creds.signing_key({creds.SIGNING_KEY_FILE_ENV: str(tmp_path / "none")})
