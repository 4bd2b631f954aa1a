"""Preflight checks of the sandbox backend: local Docker, remote Docker over TLS, Kubernetes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException

from hvt.config.model import RunConfig
from hvt.config.summary import sandbox_network_text
from hvt.docker_remote import CERT_FILES, connect
from hvt.preflight.check import Check, Context, fail, ok, skip, warn

TIMEOUT_S = 10
LOCAL_SOCKET = "unix:///var/run/docker.sock"
# What Harbor does to a sandbox pod: (resource, subresource, verb)
K8S_VERBS = (
    ("pods", "", "create"),
    ("pods", "", "get"),
    ("pods", "", "list"),
    ("pods", "", "watch"),
    ("pods", "", "delete"),
    ("pods", "exec", "create"),
    ("pods", "log", "get"),
)


def check_backend(ctx: Context) -> Iterator[Check]:
    backend = ctx.cfg.inputs.harbor_agent.backend
    if backend == "kubernetes":
        yield skip("backend.docker", "backend is kubernetes")
        yield from check_kubernetes(ctx)
    elif ctx.cfg.inputs.harbor_agent.docker_hosts:
        yield skip("backend.kubernetes", "backend is a fleet of docker hosts")
        yield from check_fleet(ctx)
    elif backend == "remote_docker":
        yield skip("backend.kubernetes", "backend is remote docker")
        h = ctx.cfg.inputs.harbor_agent
        yield from check_remote_docker(
            "backend.docker",
            h.docker_host,
            cert_dir_for_config(ctx.cfg),
            h.allow_insecure_test_network,
        )
    else:
        yield skip("backend.kubernetes", "backend is local docker")
        yield from check_local_docker(
            "backend.docker", ctx.cfg.inputs.harbor_agent.docker_host or LOCAL_SOCKET
        )
    yield check_sandbox_network(ctx.cfg)


def check_sandbox_network(cfg: RunConfig, environ: Mapping[str, str] | None = None) -> Check:
    """The effective sandbox network policy on this backend, and what enforcing it needs."""
    h, i = cfg.inputs.harbor_agent, cfg.inputs.infrastructure
    name = "backend.sandbox_network"
    text = sandbox_network_text(cfg)
    if h.sandbox_network == "public":
        return ok(name, text)
    env = os.environ if environ is None else environ
    url = env.get("HVT_PROXY_URL") or (
        f"http://{i.node0_ip}:{i.litellm_port}" if i.node0_ip else ""
    )
    if url and not url.startswith("http://"):
        return fail(
            name,
            f"the proxy URL {url!r} cannot be the sandboxes' allowlist (egress control relays "
            "plain http://<address>:<port>)",
            "set HVT_PROXY_URL=http://<address>:<port>, or harbor_agent.sandbox_network: public",
        )
    if h.backend != "kubernetes" and not h.runtime_image:
        return fail(
            name,
            "the sandboxes' egress relay runs from the agent-runtime image, and "
            "harbor_agent.runtime_image is empty",
            "set harbor_agent.runtime_image (make image builds verl-swe-rl/agent-runtime), or "
            "harbor_agent.sandbox_network: public",
        )
    return ok(name, text if url else text + "; proxy address detected at launch")


def check_fleet(ctx: Context) -> Iterator[Check]:
    """Each host of harbor_agent.docker_hosts, as its own check (`backend.docker[<host>]`)."""
    h = ctx.cfg.inputs.harbor_agent
    for host in h.docker_hosts or []:
        name = f"backend.docker[{host.docker_host}]"
        if host.docker_host.startswith("unix://"):
            yield from check_local_docker(name, host.docker_host)
        else:
            certs = Path(host.docker_cert_path) if host.docker_cert_path else _default_certs()
            yield from check_remote_docker(
                name, host.docker_host, certs, h.allow_insecure_test_network
            )


def _describe_info(info: dict[str, Any]) -> str:
    return (
        f"server {info.get('ServerVersion', '?')}, {info.get('OperatingSystem', '?')}, "
        f"{info.get('Containers', 0)} container(s)"
    )


def check_local_docker(name: str, host: str) -> Iterator[Check]:
    socket = Path(host.removeprefix("unix://")) if host.startswith("unix://") else None
    if socket is not None and not socket.exists():
        yield fail(
            name,
            f"{socket} does not exist: no Docker daemon here",
            "start Docker (systemctl start docker) or mount the socket into the trainer",
        )
        return
    try:
        client = docker.DockerClient(base_url=host, timeout=TIMEOUT_S)
        info = client.info()
    except DockerException as exc:
        remedy = "check the daemon (systemctl status docker)"
        if "Permission denied" in str(exc):
            remedy = f"add uid {os.getuid()} to the socket's group (docker) or run as root"
        yield fail(name, f"{host}: {_short(exc)}", remedy)
        return
    yield ok(name, f"{host}: {_describe_info(info)}")


def _default_certs() -> Path:
    return Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")


def cert_dir_for_config(cfg: RunConfig) -> Path:
    configured = cfg.inputs.harbor_agent.docker_cert_path
    return Path(configured) if configured else _default_certs()


def _classify_tls_error(exc: BaseException) -> tuple[str, str]:
    text = str(exc)
    low = text.lower()
    if "certificate verify failed" in low:
        return (
            "the daemon's certificate is not signed by our ca.pem (or lacks this host name "
            "in its SANs)",
            "re-issue the server certificate (make provision, role "
            "docker_tls) or fetch the matching ca.pem",
        )
    if any(
        s in low
        for s in (
            "unknown ca",
            "bad certificate",
            "certificate required",
            "handshake failure",
            "certificate_required",
            "tlsv13 alert",
        )
    ):
        return (
            "the daemon refused our client certificate",
            "use a client certificate issued by the daemon's CA (make provision puts it in "
            "harbor_agent.docker_cert_path)",
        )
    if "connection refused" in low:
        return (
            "connection refused: no daemon listening there",
            "start dockerd with --tlsverify on 2376, or fix harbor_agent.docker_host",
        )
    if "timed out" in low or "timeout" in low:
        return (
            f"no answer within {TIMEOUT_S} s",
            "check the firewall: 2376 must be open to this host (make provision, role docker_tls)",
        )
    if "wrong version number" in low or "record layer failure" in low:
        return (
            "the port does not speak TLS (a plain daemon?)",
            "enable --tlsverify on the daemon; never expose a plain daemon",
        )
    return (_short(exc), "check harbor_agent.docker_host and the certificates")


def check_remote_docker(name: str, host: str, certs: Path, allow_insecure: bool) -> Iterator[Check]:
    tls = f"{name}.tls"
    if allow_insecure and host.endswith(":2375"):
        yield warn(
            tls,
            f"{host} is a plain, unauthenticated daemon",
            "allowed by allow_insecure_test_network; use TLS on 2376 anywhere else",
        )
        try:
            info = connect(host, None, timeout=TIMEOUT_S).info()
        except DockerException as exc:
            yield fail(name, f"{host}: {_short(exc)}", "start the test daemon")
            return
        yield ok(name, f"{host}: {_describe_info(info)}")
        return
    missing = [f for f in CERT_FILES if not (certs / f).is_file()]
    if missing:
        yield fail(
            tls,
            f"missing {', '.join(missing)} in {certs}",
            "run `make provision` (role docker_tls issues them) or set "
            "harbor_agent.docker_cert_path to the directory holding ca.pem, cert.pem, "
            "key.pem",
        )
        return
    key_mode = stat.S_IMODE((certs / "key.pem").stat().st_mode)
    if key_mode & 0o077:
        yield warn(
            tls,
            f"{certs / 'key.pem'} is mode {key_mode:o}",
            f"chmod 600 {certs / 'key.pem'}",
        )
    else:
        yield ok(tls, f"client certificate in {certs}")
    try:
        client = connect(host, certs, timeout=TIMEOUT_S)
        info = client.info()
    except Exception as exc:
        detail, remedy = _classify_tls_error(exc)
        yield fail(name, f"{host}: {detail}", remedy)
        return
    yield ok(name, f"{host} over mutual TLS: {_describe_info(info)}")


def check_kubernetes(ctx: Context) -> Iterator[Check]:
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    k = ctx.cfg.inputs.k8s
    kubeconfig = k.kubeconfig or os.environ.get("KUBECONFIG") or ""
    try:
        if kubeconfig:
            if not Path(kubeconfig).is_file():
                yield fail(
                    "backend.kubernetes",
                    f"kubeconfig {kubeconfig} does not exist",
                    "run `make provision` (role k8s_sandbox writes it) or fix "
                    "runtime_info.input.k8s.kubeconfig",
                )
                return
            api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        else:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
    except (ConfigException, OSError, TypeError) as exc:
        yield fail(
            "backend.kubernetes",
            f"no usable kubeconfig: {_short(exc)}",
            "set runtime_info.input.k8s.kubeconfig (make provision writes one)",
        )
        return
    try:
        version = client.VersionApi(api_client).get_code(_request_timeout=TIMEOUT_S)
    except Exception as exc:
        yield fail(
            "backend.kubernetes",
            f"API unreachable: {_short(exc)}",
            "check the kubeconfig's server address and the network",
        )
        return
    yield ok("backend.kubernetes", f"API reachable, server {version.git_version}")
    authz = client.AuthorizationV1Api(api_client)
    denied = []
    for resource, sub, verb in K8S_VERBS:
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=k.namespace, resource=resource, subresource=sub or None, verb=verb
                )
            )
        )
        result = authz.create_self_subject_access_review(review, _request_timeout=TIMEOUT_S)
        if result.status is None or not result.status.allowed:
            denied.append(f"{verb} {resource}{'/' + sub if sub else ''}")
    if denied:
        yield fail(
            "backend.kubernetes.rbac",
            f"in namespace {k.namespace} not allowed: " + ", ".join(denied),
            "grant them with `make provision` (role k8s_sandbox) or use its kubeconfig",
        )
    else:
        yield ok(
            "backend.kubernetes.rbac",
            f"pods create/get/list/watch/delete, pods/exec, pods/log in {k.namespace}",
        )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
