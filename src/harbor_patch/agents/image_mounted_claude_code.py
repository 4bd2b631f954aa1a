"""claude-code from the mounted agent runtime, talking only to the LiteLLM proxy.

`harbor_patch.agents.image_mounted_claude_code:ClaudeCode` is Harbor's claude-code agent with:

* no installation in the sandbox: the runtime (Node.js + claude-code) is mounted read-only at
  `runtime_root` (default /opt/custom-agent-runtime/claude-code; RemoteDockerEnvironment and
  KubernetesEnvironment mount it, and set CUSTOM_AGENT_RUNTIME_ROOT). If it is missing the
  trial fails at agent setup with a message saying so, unless `allow_network_install=True`
  lets Harbor's own installer (which needs internet in the sandbox) run instead;
* the proxy environment of `proxy_env.agent_env`: base URL, this trial's own credential (never
  the master key), every model name, the trial routing header, quiet mode. When the sandbox's
  egress is controlled (RemoteDockerEnvironment's relay), the base URL is the environment's
  `sandbox_proxy_url`, the only way out of the sandbox;
* `max_turns` (claude-code --max-turns) from runtime_info.input.harbor_agent.max_iterations.

Agent kwargs (TrialConfig.agent.kwargs): max_turns, runtime_root, proxy_url (else
HVT_PROXY_URL), temperature (sent as x-harbor-temperature for the proxy), credential_ttl_sec
(how long the trial's credential lives at most; it is revoked when the trial ends anyway),
allow_network_install. The model name is the served policy name (model.served_model_name).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, override

from harbor.agents.installed.claude_code import ClaudeCode as HarborClaudeCode
from harbor.environments.base import BaseEnvironment

from harbor_patch.agents import proxy_env
from harbor_patch.environments.agent_runtime import DEFAULT_MOUNT_PATH

HOME_PATH_EXPORT = 'export PATH="$HOME/.local/bin:$PATH"; '
DEFAULT_CREDENTIAL_TTL_SEC = 4 * 3600.0


class RuntimeNotMountedError(RuntimeError):
    pass


class ClaudeCode(HarborClaudeCode):  # type: ignore[misc]
    _version: str | None  # Harbor's ClaudeCode sets it (the version the config pins)

    def __init__(
        self,
        logs_dir: Path,
        *args: Any,
        runtime_root: str = DEFAULT_MOUNT_PATH,
        proxy_url: str | None = None,
        temperature: float | None = None,
        credential_ttl_sec: float = DEFAULT_CREDENTIAL_TTL_SEC,
        allow_network_install: bool = False,
        **kwargs: Any,
    ) -> None:
        if not runtime_root.startswith("/"):
            raise ValueError(f"runtime_root must be an absolute path, got {runtime_root!r}")
        self.runtime_root = runtime_root.rstrip("/")
        self._proxy_url = proxy_url
        self._temperature = temperature
        self._credential_ttl_sec = credential_ttl_sec
        self._allow_network_install = allow_network_install
        self.using_mounted_runtime = False
        self._sandbox_proxy_url: str | None = None
        super().__init__(logs_dir, *args, **kwargs)

    @staticmethod
    @override
    def name() -> str:
        return "claude-code"

    # -- the runtime -----------------------------------------------------------------------

    @property
    def _runtime_bin(self) -> str:
        return f"{self.runtime_root}/bin"

    @override
    def get_version_command(self) -> str | None:
        return f"{shlex.quote(self._runtime_bin)}/claude --version"

    @override
    async def install(self, environment: BaseEnvironment) -> None:
        relay = getattr(environment, "sandbox_proxy_url", None)
        self._sandbox_proxy_url = relay if isinstance(relay, str) and relay else None
        claude = shlex.quote(f"{self._runtime_bin}/claude")
        result = await environment.exec(command=f"test -x {claude} && {claude} --version")
        if result.return_code == 0:
            self.using_mounted_runtime = True
            version = self.parse_version(result.stdout or "")
            if self._version is not None and version != self._version:
                raise RuntimeNotMountedError(
                    f"the mounted claude-code is {version}, the agent config asks for "
                    f"{self._version}; rebuild the agent-runtime image or drop the version pin"
                )
            self._version = version
            return
        if self._allow_network_install:
            self.logger.warning(
                "no agent runtime at %s; installing claude-code in the sandbox (needs internet)",
                self.runtime_root,
            )
            await super().install(environment)
            return
        detail = (result.stdout or result.stderr or "").strip()[-300:]
        raise RuntimeNotMountedError(
            f"claude-code is not mounted at {self.runtime_root} in the sandbox "
            f"({detail or 'not found'}); "
            "use harbor_patch.environments.remote_docker:RemoteDockerEnvironment or "
            "harbor_patch.environments.kubernetes:KubernetesEnvironment with "
            "harbor_agent.runtime_image set (make image builds verl-swe-rl/agent-runtime)"
        )

    @override
    async def _exec(
        self, environment: BaseEnvironment, command: str, *args: Any, **kwargs: Any
    ) -> Any:
        if self.using_mounted_runtime:
            runtime_path = f'export PATH={shlex.quote(self._runtime_bin)}:"$PATH"; '
            command = runtime_path + command.replace(HOME_PATH_EXPORT, runtime_path)
        return await super()._exec(environment, command, *args, **kwargs)

    # -- the proxy -------------------------------------------------------------------------

    @override
    def _resolved_model_name(self) -> str | None:
        name: str | None = self.model_name
        if not name:
            return None
        return name.split("/", 1)[1] if name.startswith("anthropic/") else name

    @override
    def _resolve_auth_env(self) -> dict[str, str]:
        model = self._resolved_model_name()
        if not model:
            raise proxy_env.ProxySettingsError(
                "no model name for claude-code: set model.served_model_name "
                "(the agent's model_name)"
            )
        route = proxy_env.trial_route(self.logs_dir.parent)
        return proxy_env.agent_env(
            base_url=self._sandbox_proxy_url or proxy_env.proxy_url(self._proxy_url),
            api_key=proxy_env.trial_credential(route, model, self._credential_ttl_sec),
            model=model,
            route=route,
            temperature=self._temperature,
        )

    @override
    def _model_alias_env(self, model: str, *, all_aliases: bool) -> dict[str, str]:
        return {name: model for name in proxy_env.MODEL_VARS if name != "ANTHROPIC_MODEL"}
