"""The environment claude-code gets inside a sandbox: everything points at the LiteLLM proxy.

* ANTHROPIC_BASE_URL is the proxy (as the sandbox reaches it), ANTHROPIC_API_KEY a credential
  of this trial only (`hvt.trajectory.credentials`): signed here with the proxy signing secret
  (HVT_PROXY_SIGNING_KEY_FILE, the compose secret), bound to the trial's route and the policy's
  model, expiring after the trial's time limit, revoked when the trial ends. The proxy's master
  key never enters a sandbox;
* every model name claude-code may ask for (main, small/fast, the sonnet/opus/haiku/fable
  defaults, sub-agents) is the served policy, so no call leaves for a model we do not train;
* ANTHROPIC_CUSTOM_HEADERS carries the trial routing header, so the proxy's trajectory logger
  appends each call to <trial>/proxy/litellm-trajectory.jsonl;
* non-essential traffic (telemetry, auto-update, error reports) is off: sandboxes have no
  route to Anthropic, and the attribution header would defeat vLLM's prefix cache.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from hvt.trajectory import credentials as trial_credentials
from hvt.trajectory.paths import HEADER as TRIAL_HEADER
from hvt.trajectory.paths import ROOT_ENV as TRIALS_ROOT_ENV

PROXY_URL_ENV = "HVT_PROXY_URL"
TEMPERATURE_HEADER = "x-harbor-temperature"
MODEL_VARS = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_DEFAULT_FABLE_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)
QUIET_VARS = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


class ProxySettingsError(RuntimeError):
    """The agent cannot be pointed at the proxy; the message says what to set."""


def trial_credential(
    route: str, model: str, ttl_sec: float, environ: Mapping[str, str] | None = None
) -> str:
    """A credential good for this trial's calls to the policy, and nothing else."""
    try:
        key = trial_credentials.signing_key(os.environ if environ is None else environ)
    except trial_credentials.SigningKeyError as exc:
        raise ProxySettingsError(
            f"the trainer cannot give claude-code a credential: {exc}"
        ) from None
    return trial_credentials.mint(key, route, (model,), ttl_sec)


def proxy_url(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    url = (explicit or env.get(PROXY_URL_ENV) or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ProxySettingsError(
            f"the proxy URL sandboxes use is {url or 'not set'!r}; set {PROXY_URL_ENV} "
            "(e.g. http://<node0_ip>:8002) or the agent kwarg proxy_url"
        )
    return url


def trial_route(trial_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """The routing header value: the trial dir relative to the trials root when it is under
    HVT_TRIALS_ROOT, else its absolute path (the proxy accepts both, inside its root)."""
    env = os.environ if environ is None else environ
    trial = Path(os.path.abspath(trial_dir))
    root = env.get(TRIALS_ROOT_ENV)
    if root:
        try:
            return trial.relative_to(os.path.abspath(root)).as_posix()
        except ValueError:
            pass
    return trial.as_posix()


def agent_env(
    *,
    base_url: str,
    api_key: str,
    model: str,
    route: str,
    temperature: float | None = None,
) -> dict[str, str]:
    headers = [f"{TRIAL_HEADER}: {route}"]
    if temperature is not None:
        headers.append(f"{TEMPERATURE_HEADER}: {temperature:g}")
    env = {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": api_key,
        "ANTHROPIC_AUTH_TOKEN": "",
        "ANTHROPIC_CUSTOM_HEADERS": "\n".join(headers),
        **{name: model for name in MODEL_VARS},
        **QUIET_VARS,
    }
    return env
