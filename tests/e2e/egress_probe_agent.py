"""The claude-code adapter with its agent run replaced by the egress probe (egress_probe.py).

Everything up to the run is the real adapter (harbor_patch.agents.image_mounted_claude_code):
the mounted runtime check, the proxy URL it picks (the environment's relay when egress is
controlled), the trial's own credential, the routing header. Instead of starting claude, the
run executes the probe in the sandbox with exactly that environment (plus the PROBE_* values
the test passes as the agent kwarg `probes`) and stores its JSON as agent/probe.json.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, override

from harbor.environments.base import BaseEnvironment
from harbor.models.agent.context import AgentContext

from harbor_patch.agents.image_mounted_claude_code import ClaudeCode

PROBE = Path(__file__).with_name("egress_probe.py")
RESULT = "probe.json"


class ProbeAgent(ClaudeCode):
    def __init__(
        self, logs_dir: Path, *args: Any, probes: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        self._probes = dict(probes or {})
        super().__init__(logs_dir, *args, **kwargs)

    @override
    async def run(
        self, instruction: str, environment: BaseEnvironment, context: AgentContext
    ) -> None:
        env = {**self._resolve_auth_env(), **self._probes}
        env["ANTHROPIC_MODEL"] = self._resolved_model_name() or ""
        command = f"python3 -c {shlex.quote(PROBE.read_text())} agent"
        result = await environment.exec(command=command, env=env, timeout_sec=900)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (self.logs_dir / RESULT).write_text(result.stdout or "")
        (self.logs_dir / "probe.stderr").write_text(result.stderr or "")
