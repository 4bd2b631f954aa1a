"""docker_tls on real systemd hosts: a TLS-only sandbox daemon and a trainer with client certs.

Converges the Molecule scenario ansible/molecule/docker_tls twice (the second run must change
nothing), then checks the daemon from outside through its loopback-published port: the issued
client certificate works (docker info, and a container runs); no certificate, a self-signed one
and one from another CA are refused with a TLS alert; nothing answers on 2375; the firewall
admits only the trainer; a container on the sandbox daemon reaches the trainer's proxy port and
nothing else.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import testinfra
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.ansible.conftest import converged
from tests.ansible.docker_host import docker, published_port, remove_containers
from tests.ansible.molecule_runner import REPO, Scenario, molecule_env, run_ansible
from tests.ansible.tls_material import (
    ClientCert,
    other_ca_client,
    ping,
    plain_http_answer,
    self_signed_client,
)
from tests.helpers.timing import scaled

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.usefixtures("hosts_available")]

SANDBOX = "hvt-ans-sandbox"
TRAINER = "hvt-ans-trainer"
OUTSIDER = "hvt-ans-outsider"
NETWORK = "hvt-ans-tls-net"
SCENARIO_VARS = yaml.safe_load((REPO / "ansible/molecule/docker_tls/molecule.yml").read_text())[
    "provisioner"
]["inventory"]["group_vars"]["all"]
GATEWAY = SCENARIO_VARS["docker_tls_extra_allowed_clients"][0]  # the network's gateway
CERT_DIR = "/etc/verl-swe-rl/docker-tls"
TEST_IMAGE = "local/debian:bookworm"
# OpenSSL's names for the alerts a TLS server refuses a client certificate with (Go sends
# certificate_required for none under TLS 1.3, unknown_ca or bad_certificate for an untrusted one)
REFUSAL_ALERT = re.compile(
    r"ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_UNKNOWN|HANDSHAKE_FAILURE)$"
)


@pytest.fixture(scope="module")
def scenario(molecule_logs: Path, say: Callable[[str], None]) -> Iterator[Scenario]:
    yield from converged("docker_tls", molecule_logs, say)


@pytest.fixture(scope="module")
def sandbox(scenario: Scenario) -> testinfra.host.Host:
    return testinfra.get_host(f"docker://{SANDBOX}")


@pytest.fixture(scope="module")
def trainer(scenario: Scenario) -> testinfra.host.Host:
    return testinfra.get_host(f"docker://{TRAINER}")


@pytest.fixture(scope="module")
def client_bundle(trainer: testinfra.host.Host, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client files the role installed on the trainer, copied out for the outside checks."""
    out = tmp_path_factory.mktemp("client-certs")
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (out / name).write_text(trainer.file(f"{CERT_DIR}/{name}").content_string)
    (out / "key.pem").chmod(0o600)
    return out


@pytest.fixture(scope="module")
def tls_port(scenario: Scenario) -> int:
    return published_port(SANDBOX, 2376)


def remote_docker(
    bundle: Path, port: int, *args: str, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "docker",
            "--tlsverify",
            f"--tlscacert={bundle / 'ca.pem'}",
            f"--tlscert={bundle / 'cert.pem'}",
            f"--tlskey={bundle / 'key.pem'}",
            "-H",
            f"tcp://127.0.0.1:{port}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        **kw,
    )  # type: ignore[call-overload]


def refusal_alert(port: int, ca: Path, client: ClientCert | None) -> str:
    """Handshake with the daemon on 127.0.0.1:port as `client`; return the TLS alert it refuses
    the client with (OpenSSL's name, e.g. TLSV1_ALERT_UNKNOWN_CA).

    Anything else fails the test instead of passing for a refusal: nothing listening
    (ConnectionRefusedError), docker-proxy with no daemon behind it (an EOF or a reset in the
    handshake), a server whose certificate `ca` did not sign (our own verification error), or a
    daemon that accepts the client.
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            # TLS 1.3: the server judges the client certificate after our Finished, and its alert
            # is the first thing to read. Send nothing first: a request the daemon has not read
            # when it closes can turn its alert into a bare connection reset.
            data = tls.recv(1)
    except ssl.SSLError as exc:
        if exc.reason and REFUSAL_ALERT.search(exc.reason):
            return str(exc.reason)
        pytest.fail(f"not a TLS refusal of the client certificate: {exc!r}")
    except TimeoutError:
        pytest.fail("the daemon neither refused the client certificate nor closed (accepted it?)")
    except OSError as exc:
        pytest.fail(f"no TLS refusal from a daemon on port {port}: {exc!r}")
    pytest.fail(f"the daemon did not refuse the client certificate (read {data!r})")


def test_second_converge_changes_nothing(scenario: Scenario) -> None:
    scenario.run("idempotence")


def test_molecule_verify(scenario: Scenario) -> None:
    scenario.run("verify")


def test_daemon_runs_tls_only_on_2376(sandbox: testinfra.host.Host) -> None:
    assert sandbox.service("docker").is_running
    assert sandbox.socket("tcp://0.0.0.0:2376").is_listening
    listening = sandbox.run("ss -Hltn").stdout
    assert ":2375 " not in listening, listening
    daemon = sandbox.file("/etc/docker/daemon.json").content_string
    assert '"tlsverify": true' in daemon and '"hosts"' not in daemon, daemon
    dropin = sandbox.file(
        "/etc/systemd/system/docker.service.d/10-verl-swe-rl-tls.conf"
    ).content_string
    assert "-H tcp://0.0.0.0:2376" in dropin and "2375" not in dropin, dropin


def test_sandbox_networks_come_from_the_large_address_pool(
    sandbox: testinfra.host.Host,
) -> None:
    """Two networks per sandbox: the role's pool holds 1024, Docker's built-in ones about 30."""
    made = sandbox.run(
        "docker network create hvt-pool-probe >/dev/null && "
        "docker network inspect -f '{{(index .IPAM.Config 0).Subnet}}' hvt-pool-probe; "
        "docker network rm hvt-pool-probe >/dev/null"
    )
    assert made.rc == 0, made.stderr
    subnet = ipaddress.ip_network(made.stdout.strip())
    assert subnet.prefixlen == 24 and subnet.subnet_of(ipaddress.ip_network("172.20.0.0/14"))


def test_key_and_certificate_files(
    sandbox: testinfra.host.Host, trainer: testinfra.host.Host
) -> None:
    server_key = sandbox.file("/etc/docker/tls/server-key.pem")
    assert (server_key.mode, server_key.user) == (0o400, "root")
    assert sandbox.file("/etc/docker/tls").mode == 0o750
    client_key = trainer.file(f"{CERT_DIR}/key.pem")
    assert client_key.mode == 0o600
    assert (client_key.uid, client_key.gid) == (1000, 1000)  # the trainer image's hvt user
    for name in ("ca.pem", "cert.pem"):
        assert trainer.file(f"{CERT_DIR}/{name}").mode == 0o444
    # the CA key never leaves the control node
    assert not sandbox.run("grep -rl 'PRIVATE KEY' /etc/docker/tls --exclude=server-key.pem").stdout
    assert not trainer.run(f"grep -rl 'PRIVATE KEY' {CERT_DIR} --exclude=key.pem").stdout


def test_server_certificate_names_and_usage(sandbox: testinfra.host.Host) -> None:
    cert = x509.load_pem_x509_certificate(sandbox.file("/etc/docker/tls/server-cert.pem").content)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(sans.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {SANDBOX, "hvt-ans-sandbox.hvt-ans-tls-net", "localhost"} <= dns, dns
    assert {"127.0.0.1", sandbox.interface("eth0").addresses[0]} <= ips, ips
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_docker_info_over_tls_with_the_issued_certificate(
    client_bundle: Path, tls_port: int
) -> None:
    proc = remote_docker(client_bundle, tls_port, "info", "--format", "{{.Name}} {{.Driver}}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{SANDBOX} vfs"


def test_trainer_reaches_the_daemon_by_name(trainer: testinfra.host.Host) -> None:
    out = trainer.run(
        f"DOCKER_HOST=tcp://{SANDBOX}:2376 DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={CERT_DIR} "
        "docker version --format '{{.Server.Version}}'"
    )
    assert out.rc == 0 and out.stdout.strip(), out.stderr


def test_issued_certificate_passes_the_probe(client_bundle: Path, tls_port: int) -> None:
    # the CA, address and server name of the refusal probe below work for the issued
    # certificate, so its refusals are the daemon's verdict on the other certificates
    issued = ClientCert(client_bundle / "cert.pem", client_bundle / "key.pem")
    assert ping("127.0.0.1", tls_port, client_bundle / "ca.pem", issued, scaled(10)) == "OK"


@pytest.mark.parametrize("kind", ["none", "self-signed", "other-ca"])
def test_daemon_refuses_other_clients(
    kind: str, client_bundle: Path, tls_port: int, tmp_path: Path
) -> None:
    client = {
        "none": None,
        "self-signed": self_signed_client(tmp_path),
        "other-ca": other_ca_client(tmp_path),
    }[kind]
    assert refusal_alert(tls_port, client_bundle / "ca.pem", client)
    if client is not None:  # and the docker CLI is refused too
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "ca.pem").write_bytes((client_bundle / "ca.pem").read_bytes())
        (bundle / "cert.pem").write_bytes(client.cert.read_bytes())
        (bundle / "key.pem").write_bytes(client.key.read_bytes())
        proc = remote_docker(bundle, tls_port, "info")
        assert proc.returncode != 0 and "certificate" in proc.stderr.lower(), proc.stderr


def test_nothing_answers_on_2375(scenario: Scenario) -> None:
    # 2375 is published on loopback as a probe: docker-proxy accepts, the host has no listener
    port = published_port(SANDBOX, 2375)
    assert plain_http_answer("127.0.0.1", port) == b""


def test_firewall_admits_only_the_trainer(trainer: testinfra.host.Host) -> None:
    probe = (
        f"timeout {scaled(5):.0f} bash -c 'exec 3<>/dev/tcp/{{host}}/{{port}}' "
        "&& echo open || echo closed"
    )
    assert trainer.run(probe.format(host=SANDBOX, port=2376)).stdout.strip() == "open"
    remove_containers(OUTSIDER)
    try:
        out = docker(
            "run",
            "--rm",
            "--name",
            OUTSIDER,
            "--network",
            NETWORK,
            TEST_IMAGE,
            "bash",
            "-c",
            probe.format(host=SANDBOX, port=2376),
            timeout=scaled(60),
        )
        assert out.strip() == "closed"
    finally:
        remove_containers(OUTSIDER)


def test_container_runs_on_the_remote_daemon(client_bundle: Path, tls_port: int) -> None:
    save = subprocess.Popen(["docker", "save", TEST_IMAGE], stdout=subprocess.PIPE)
    load = remote_docker(client_bundle, tls_port, "load", stdin=save.stdout)
    assert save.wait(timeout=300) == 0
    assert load.returncode == 0, load.stderr
    run = remote_docker(client_bundle, tls_port, "run", "--rm", TEST_IMAGE, "echo", "sandbox-ok")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "sandbox-ok"


def test_sandbox_containers_reach_only_the_proxy_port(client_bundle: Path, tls_port: int) -> None:
    """docker_tls_sandbox_egress: proxy-only (the default). A container on the sandbox daemon
    connects to the trainer's proxy port: the trainer itself refuses it (nothing listens there
    in this scenario), so the packet got through. Another port of the trainer and the
    network's gateway (this test host) time out: dropped on the sandbox host."""
    if remote_docker(client_bundle, tls_port, "image", "inspect", TEST_IMAGE).returncode:
        save = subprocess.Popen(["docker", "save", TEST_IMAGE], stdout=subprocess.PIPE)
        load = remote_docker(client_bundle, tls_port, "load", stdin=save.stdout)
        assert save.wait(timeout=300) == 0 and load.returncode == 0, load.stderr
    trainer_ip = docker(
        "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}', TRAINER
    ).strip()
    wait = f"{scaled(5):.0f}"
    probe = (
        'for t in "$@"; do timeout ' + wait + ' bash -c "exec 3<>/dev/tcp/${t%:*}/${t#*:}" '
        '2>/dev/null; echo "$t $?"; done'
    )
    targets = [f"{trainer_ip}:8002", f"{trainer_ip}:22", f"{GATEWAY}:8002"]
    run = remote_docker(
        client_bundle, tls_port, "run", "--rm", TEST_IMAGE, "bash", "-c", probe, "probe", *targets
    )
    assert run.returncode == 0, run.stderr
    exits = dict(line.split() for line in run.stdout.splitlines())
    # 1: refused by the trainer (reached it); 124: no answer within the limit (dropped)
    assert exits == {targets[0]: "1", targets[1]: "124", targets[2]: "124"}, run.stdout


def test_make_provision_check_reports_no_drift(scenario: Scenario, tmp_path: Path) -> None:
    """`make provision-check` (check mode, diff) on the converged sandbox host changes nothing.

    Runs the real provision.yml through the Makefile with LIMIT=sandbox_docker, so the trainer's
    address for the firewall comes from facts gathered on the fly (the --limit path).
    """
    ca_dirs = sorted(Path.home().glob(".ansible/tmp/molecule.*.docker_tls/docker-tls-ca"))
    assert ca_dirs, "the scenario's CA directory is missing"
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "community.docker.docker",
                        "docker_engine_source": "distro",
                        "docker_engine_storage_driver": "vfs",
                        "gpu_enabled": False,
                        "docker_tls_ca_dir": str(ca_dirs[-1]),
                        "docker_tls_server_extra_sans": ["hvt-ans-sandbox.hvt-ans-tls-net"],
                        "docker_tls_extra_allowed_clients": [GATEWAY],
                    },
                    "children": {
                        "sandbox_docker": {"hosts": {SANDBOX: {}}},
                        "trainer": {"hosts": {TRAINER: {}}},
                    },
                }
            }
        )
    )
    proc = run_ansible(
        ["make", "provision-check", f"INVENTORY={inventory}", "LIMIT=sandbox_docker"],
        cwd=REPO,
        env=molecule_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    recap = [line for line in proc.stdout.splitlines() if line.startswith(SANDBOX)]
    assert recap and "changed=0" in recap[-1] and "failed=0" in recap[-1], proc.stdout[-3000:]
