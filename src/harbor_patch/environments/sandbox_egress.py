"""Egress control for Docker sandboxes: the proxy and nothing else, switched per trial phase.

Harbor 0.25's own mechanism for Docker (an egress sidecar that shares the sandbox's network
namespace and programs nftables) is built FROM `gogost/gost` on Docker Hub and probes the
kernel with an `alpine` image first. Sandbox hosts without a registry (this test bed: "lookup
registry-1.docker.io: no such host"; air-gapped TLS sandbox hosts) can pull neither; the failed
probe turns Harbor's egress control off, and every restricted task is then refused. So the
Docker environments enforce Harbor's network policies with pieces that are already on every
sandbox daemon:

* the compose project's `default` network is `internal: true` with no address on the host
  side of its bridge (`com.docker.network.bridge.inhibit_ipv4`): its containers have no
  route out and cannot even reach the sandbox host's own ports. Task services talk to each
  other on it as before;
* a relay service (egress_relay.py, run by `python3` from the agent-runtime image) sits on
  that network and on a second, ordinary bridge network, and forwards one TCP port to the
  proxy's host:port, nothing else. claude-code's ANTHROPIC_BASE_URL points at the relay;
* the phase policy (Harbor's `set_network_policy`): `allowlist` of the proxy host = relay
  up; `no-network` = relay stopped; `public` = relay up and the task services also attached
  to the ordinary bridge (a default route). Allowlists naming any other host are refused
  before the sandbox starts: the relay can only reach the proxy.

Pure helpers here (no Docker calls); RemoteDockerEnvironment runs the commands.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from harbor_patch.environments import egress_relay

RELAY_SERVICE = "hvt-egress-relay"
RELAY_PORT = 8787
EGRESS_NETWORK = "hvt-egress"  # the relay's way out (an ordinary bridge network)
EGRESS_LABEL = "hvt-egress"  # Kubernetes: the pod label the NetworkPolicies select on
INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"
RELAY_USER = "65534:65534"  # nobody
RELAY_MEMORY = "64m"
RELAY_PIDS = 64


class EgressConfigError(ValueError):
    """Egress control cannot be set up as asked; the message names the setting and a fix."""


@dataclass(frozen=True)
class ProxyEndpoint:
    """The LiteLLM proxy as the relay reaches it."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> ProxyEndpoint:
        parts = urlsplit(url.strip())
        if parts.scheme != "http" or not parts.hostname:
            raise EgressConfigError(
                f"the proxy URL {url!r} cannot be relayed into a sandbox: egress control "
                "needs http://<host>:<port> (set HVT_PROXY_URL or "
                "runtime_info.input.infrastructure.node0_ip)"
            )
        try:
            port = parts.port or 80
        except ValueError:
            raise EgressConfigError(f"the proxy URL {url!r} has an invalid port") from None
        return cls(parts.hostname.lower(), port)

    @property
    def display(self) -> str:
        return f"{self.host}:{self.port}"


def relay_url() -> str:
    """ANTHROPIC_BASE_URL inside a sandbox whose egress goes through the relay."""
    return f"http://{RELAY_SERVICE}:{RELAY_PORT}"


def normalize_host(host: str) -> str:
    text = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text


def foreign_hosts(allowed_hosts: Iterable[str], proxy: ProxyEndpoint) -> list[str]:
    """Allowlist entries the relay cannot serve (anything but the proxy's own host)."""
    own = normalize_host(proxy.host)
    return [host for host in allowed_hosts if normalize_host(host) != own]


def refuse_foreign_hosts(allowed_hosts: Iterable[str], proxy: ProxyEndpoint, where: str) -> None:
    """Raise (Harbor rejects the task before start) for allowlist hosts other than the proxy."""
    foreign = foreign_hosts(allowed_hosts, proxy)
    if foreign:
        raise ValueError(
            f"network_mode='allowlist' with {', '.join(foreign)} cannot be enforced by {where}: "
            f"its sandboxes reach only the LiteLLM proxy ({proxy.display}). Drop those hosts "
            "from the task's allowed_hosts, or set runtime_info.input.harbor_agent."
            "sandbox_network: public and give the task network_mode = 'public'"
        )


# The Harbor capabilities both sandbox backends declare for egress control: no-network, public
# and allowlists of the proxy's host (by name or address), switched per phase;
# refuse_unenforceable refuses other hosts.
EGRESS_CAPABILITIES: dict[str, bool] = {
    "disable_internet": True,
    "network_allowlist": True,
    "network_allowlist_hostnames": True,
    "network_allowlist_ipv4_addresses": True,
    "network_allowlist_ipv6_addresses": True,
    "dynamic_network_policy": True,
}


def refuse_unenforceable(
    mode: str, allowed_hosts: Iterable[str], proxy: ProxyEndpoint | None, where: str
) -> None:
    """Raise for a network policy `where` cannot enforce: an allowlist needs the proxy's URL,
    and hosts other than the proxy are refused (refuse_foreign_hosts)."""
    if mode != "allowlist":
        return
    if proxy is None:
        raise ValueError(
            f"an allowlist network policy needs the proxy's URL ({where}): set HVT_PROXY_URL "
            "or the environment kwarg proxy_url"
        )
    refuse_foreign_hosts(allowed_hosts, proxy, where)


def policy_label(mode: str) -> str:
    """The `hvt-egress` pod label value for a Harbor network mode (Kubernetes backend: the
    k8s_sandbox role's NetworkPolicies select on it)."""
    return {"no-network": "none", "allowlist": "proxy", "public": "public"}[mode]


def services_with_own_networking(compose_files: Iterable[Path]) -> list[str]:
    """Task services that pick their own networks (`networks`, `network_mode`): they would
    bypass the internal network, so egress control refuses them."""
    found: list[str] = []
    for path in compose_files:
        document = yaml.safe_load(Path(path).read_text()) or {}
        services = document.get("services") if isinstance(document, dict) else None
        if not isinstance(services, dict):
            continue
        for name, spec in services.items():
            if isinstance(spec, dict) and ("networks" in spec or "network_mode" in spec):
                found.append(str(name))
    return found


def egress_network_name(session_id: str) -> str:
    """A Docker-valid, per-sandbox name for the relay's outside network."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", session_id.lower()).strip("-.") or "sandbox"
    return f"{EGRESS_NETWORK}-{slug}"[:120]


def relay_command() -> list[str]:
    """`python3 -c <relay source>`: compose would expand `$`, and the source has none."""
    source = Path(egress_relay.__file__).read_text()
    if "$" in source:
        raise RuntimeError("egress_relay.py must not contain '$' (compose interpolates it)")
    return ["python3", "-c", source]


def overlay(
    labels: Mapping[str, str],
    proxy: ProxyEndpoint,
    image: str,
    network_name: str,
) -> dict[str, Any]:
    """The compose fragment: internal `default` network, the relay and its way out."""
    return {
        "services": {
            RELAY_SERVICE: {
                "image": image,
                "pull_policy": "never",  # the agent-runtime image, staged on this daemon
                "entrypoint": relay_command(),
                "command": [str(RELAY_PORT), proxy.host, str(proxy.port)],
                "networks": ["default", EGRESS_NETWORK],
                "user": RELAY_USER,
                "read_only": True,
                "cap_drop": ["ALL"],
                "security_opt": ["no-new-privileges:true"],
                "mem_limit": RELAY_MEMORY,
                "pids_limit": RELAY_PIDS,
                "restart": "no",
                "labels": dict(labels),
                "stop_grace_period": "1s",
            }
        },
        "networks": {
            "default": {
                "internal": True,
                "driver_opts": {INHIBIT_IPV4: "true"},
                "labels": dict(labels),
            },
            EGRESS_NETWORK: {"name": network_name, "labels": dict(labels)},
        },
    }
