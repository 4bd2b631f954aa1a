"""The sandbox network of a trial: Harbor's phase network plan, narrowed by our policy.

`runtime_info.input.harbor_agent.sandbox_network` decides what a sandbox may reach:

* `proxy-only` (default): setup and the agent phase reach the LiteLLM proxy and nothing else
  (a task's own agent policy cannot widen that: the policy under training writes the code);
* `task`: the agent phase follows the task's own policy (Harbor's: public unless task.toml
  restricts it), plus the proxy where the task restricts it;
* `public`: Harbor's plan unchanged (the behaviour before egress control).

For `proxy-only` and `task` the verifier gets no network unless task.toml asks for more
(a `[verifier]` or step verifier `network_mode`, else an explicit `[environment]`
`network_mode`, or the legacy `allow_internet`). A stricter mode in the task always wins:
`no-network` for the agent still reaches the proxy (the agent cannot work without its model;
Harbor does the same with its inference hosts), and `no-network` for the verifier is
no network at all.

Harbor applies the plan itself: the environment starts under `agent_env_baseline`, and the
trial switches it with `set_network_policy` around the agent and the verifier phases. So
the policy lives in one place, `Trial._network_plan`, overridden by the subclass that
`create_trial` builds; the environment only has to enforce what it is told.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from harbor.models.task.config import NetworkMode, NetworkPolicy

if TYPE_CHECKING:
    from harbor.models.task.config import StepConfig, TaskConfig
    from harbor.models.trial.config import TrialConfig
    from harbor.trial.network_policy import TrialNetworkPlan
    from harbor.trial.trial import Trial

SandboxNetwork = Literal["proxy-only", "task", "public"]
MODES: tuple[str, ...] = get_args(SandboxNetwork)
DEFAULT: SandboxNetwork = "proxy-only"

NO_NETWORK = NetworkPolicy(network_mode=NetworkMode.NO_NETWORK)
PUBLIC = NetworkPolicy(network_mode=NetworkMode.PUBLIC)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxNetworkPolicy:
    mode: SandboxNetwork
    proxy_host: str  # the host sandboxes' model calls go to (an allowlist entry)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"runtime_info.input.harbor_agent.sandbox_network is {self.mode!r}; "
                f"use one of {', '.join(MODES)}"
            )
        if self.mode != "public" and not self.proxy_host:
            raise ValueError(
                f"sandbox_network {self.mode!r} needs the proxy's host (HVT_PROXY_URL or "
                "runtime_info.input.infrastructure.node0_ip), or set sandbox_network: public"
            )

    @property
    def proxy_only(self) -> NetworkPolicy:
        return NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=[self.proxy_host])


def _with_proxy(policy: NetworkPolicy, proxy_host: str) -> NetworkPolicy:
    """A restricted policy that also reaches the proxy; public stays public."""
    if policy.network_mode == NetworkMode.PUBLIC:
        return policy
    hosts = list(dict.fromkeys([*policy.allowed_hosts, proxy_host]))
    return NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=hosts)


def task_agent_policy(task_cfg: TaskConfig, step_cfg: StepConfig | None) -> NetworkPolicy:
    """What task.toml itself says for the agent phase (Harbor's rule, no inference hosts)."""
    explicit = None
    if step_cfg is not None:
        explicit = step_cfg.agent.explicit_phase_policy()
    explicit = explicit or task_cfg.agent.explicit_phase_policy()
    policy: NetworkPolicy = explicit or task_cfg.environment.resolve_baseline()
    return policy


def task_verifier_request(
    task_cfg: TaskConfig, step_cfg: StepConfig | None
) -> NetworkPolicy | None:
    """The verifier network task.toml asks for explicitly; None when it says nothing."""
    if step_cfg is not None:
        explicit = step_cfg.verifier.explicit_phase_policy()
        if explicit is not None:
            return explicit
    explicit = task_cfg.verifier.explicit_phase_policy()
    if explicit is not None:
        return explicit
    environment = task_cfg.environment
    if "network_mode" in environment.model_fields_set or environment.allowed_hosts is not None:
        return environment.resolve_baseline()
    return None


def narrow_plan(
    plan: TrialNetworkPlan,
    task_cfg: TaskConfig,
    step_cfg: StepConfig | None,
    policy: SandboxNetworkPolicy,
) -> TrialNetworkPlan:
    """Harbor's plan for this trial under `policy` (see the module docstring)."""
    if policy.mode == "public":
        return plan
    verifier = task_verifier_request(task_cfg, step_cfg) or NO_NETWORK
    if policy.mode == "proxy-only":
        baseline = NO_NETWORK
        agent = policy.proxy_only
    else:
        baseline = plan.agent_env_baseline
        agent = _with_proxy(task_agent_policy(task_cfg, step_cfg), policy.proxy_host)
    return replace(
        plan,
        agent_env_baseline=baseline,
        agent_phase=agent,
        verifier_env_baseline=None if plan.verifier_env_baseline is None else verifier,
        verifier_phase=verifier,
    )


class _SandboxNetworkTrial:
    """Mixin over Harbor's SingleStepTrial / MultiStepTrial: `_network_plan` narrowed."""

    sandbox_network_policy: SandboxNetworkPolicy
    task: Any  # Harbor's Task, set by Trial.__init__

    def _network_plan(self, step_cfg: StepConfig | None = None, **kwargs: Any) -> TrialNetworkPlan:
        # The narrowed plan switches phases, so Harbor's static-environment check and its
        # guess of the model's host (api.anthropic.com for claude-code) do not apply.
        kwargs["dynamic_network_policy"] = True
        kwargs["warn_unknown_inference"] = False
        plan: TrialNetworkPlan = super()._network_plan(step_cfg, **kwargs)  # type: ignore[misc]
        return narrow_plan(plan, self.task.config, step_cfg, self.sandbox_network_policy)


_classes: dict[tuple[type, SandboxNetworkPolicy], type] = {}


def trial_class(base: type, policy: SandboxNetworkPolicy) -> type:
    key = (base, policy)
    if key not in _classes:
        _classes[key] = type(
            f"SandboxNetwork{base.__name__}",
            (_SandboxNetworkTrial, base),
            {"sandbox_network_policy": policy, "__module__": __name__},
        )
    return _classes[key]


async def create_trial(config: TrialConfig, policy: SandboxNetworkPolicy) -> Trial:
    """`Trial.create(config)` with the sandbox network policy applied (Harbor's own steps:
    resolve skills, load the task, warn about the config, pick the single- or multi-step
    trial, create the bridge)."""
    from harbor.trial.multi_step import MultiStepTrial
    from harbor.trial.single_step import SingleStepTrial
    from harbor.trial.trial import Trial, check_trial_config

    if policy.mode == "public" or config.source_trial is not None:
        trial: Trial = await Trial.create(config)
        return trial
    Trial._resolve_agent_skills(config)
    task, download = await Trial._load_task(config)
    for warning in check_trial_config(task.config, config.environment, config.verifier):
        log.warning("Task %s: %s", task.name, warning)
    base = MultiStepTrial if task.has_steps else SingleStepTrial
    trial = trial_class(base, policy)(config, _task=task, _task_download_result=download)
    await trial._create_bridge()
    return trial
