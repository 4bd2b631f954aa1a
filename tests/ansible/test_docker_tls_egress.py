"""docker_tls's nftables rules for sandbox egress, rendered from the role's template with its
defaults (no host needed). The rules load for real, through `nft -c` (the template task's
validate) and systemd, in the docker_tls Molecule scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.ansible.ansible_runner import playbook

TRAINER = "192.0.2.10"


def render(tmp_path: Path, **extra: Any) -> str:
    out = tmp_path / "docker-tls-firewall.nft"
    values = {
        "out": str(out),
        "docker_tls_allowed_sources": [TRAINER],
        "docker_tls_proxy_destinations": [TRAINER],
        **extra,
    }
    proc = playbook("render_docker_tls_firewall.yml", values)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text.count("{") == text.count("}"), text
    return text


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_default_lets_sandbox_containers_reach_only_the_proxy(tmp_path: Path) -> None:
    lines = _lines(render(tmp_path))
    # the proxy's address and port, nothing else, for new connections out of the Docker bridges
    assert f"elements = {{ {TRAINER} }}" in lines
    assert "ip daddr @proxy_v4 tcp dport 8002 accept" in lines
    assert "type filter hook forward priority filter - 5; policy accept;" in lines
    assert 'iifname "docker0" jump sandbox_out' in lines
    assert 'iifname "br-*" jump sandbox_out' in lines
    out = lines[lines.index("chain sandbox_out {") :]
    assert out[1:5] == [
        "ct state established,related accept",
        'oifname "docker0" accept',
        'oifname "br-*" accept',
        "jump sandbox_proxy_only",
    ]
    only = lines[lines.index("chain sandbox_proxy_only {") :]
    assert only[1:3] == ["ip daddr @proxy_v4 tcp dport 8002 accept", "counter drop"]
    # and to this host itself only the proxy (if it runs here), before the TLS port rules
    inp = lines[lines.index("chain input {") :]
    assert inp[3:5] == [
        'iifname "docker0" ct state new jump sandbox_proxy_only',
        'iifname "br-*" ct state new jump sandbox_proxy_only',
    ]
    assert "tcp dport 2375 drop" in lines  # the TLS rules are still there


def test_proxy_addresses_port_and_reject(tmp_path: Path) -> None:
    text = render(
        tmp_path,
        docker_tls_proxy_destinations=["10.1.2.3", "2001:db8::7"],
        docker_tls_proxy_port=9002,
        docker_tls_firewall_action="reject",
    )
    lines = _lines(text)
    assert "elements = { 10.1.2.3 }" in lines and "elements = { 2001:db8::7 }" in lines
    assert "ip daddr @proxy_v4 tcp dport 9002 accept" in lines
    assert "ip6 daddr @proxy_v6 tcp dport 9002 accept" in lines
    assert "counter reject" in lines


def test_open_adds_no_egress_rule(tmp_path: Path) -> None:
    text = render(tmp_path, docker_tls_sandbox_egress="open")
    assert "sandbox" not in text and "hook forward" not in text
    assert "tcp dport 2376" in text
