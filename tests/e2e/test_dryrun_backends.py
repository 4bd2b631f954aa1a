"""`hvt dryrun` against real Docker daemons: the local socket and a TLS-only daemon."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hvt.cli import app
from tests.conftest import filled_config
from tests.helpers.prerequisites import require_images
from tests.helpers.tls_dockerd import DOCKERD_IMAGE, TlsDaemon, tls_dockerd

pytestmark = pytest.mark.docker
runner = CliRunner()
REMOTE = "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Any:
    require_images(DOCKERD_IMAGE)
    with tls_dockerd(tmp_path_factory.mktemp("tlsd")) as daemon:
        yield daemon


def _dryrun(tmp_path: Path, **overrides: Any) -> dict[str, dict[str, str]]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(filled_config(**overrides)))
    result = runner.invoke(app, ["dryrun", "--config", str(path), "--json"])
    report = json.loads(result.output)
    assert result.exit_code == (0 if report["ok"] else 1)
    return {c["name"]: c for c in report["checks"]}


def _remote(daemon: TlsDaemon, certs: Path) -> dict[str, Any]:
    return {
        "runtime_info.input.harbor_agent.docker_host": daemon.host,
        "runtime_info.input.harbor_agent.environment_import_path": REMOTE,
        "runtime_info.input.harbor_agent.docker_cert_path": str(certs),
    }


def test_local_socket_is_reached(tmp_path: Path, docker_engine: None) -> None:
    checks = _dryrun(tmp_path)
    assert checks["backend.docker"]["status"] == "ok"
    assert "unix:///var/run/docker.sock" in checks["backend.docker"]["detail"]
    assert checks["backend.kubernetes"]["status"] == "skip"


def test_missing_socket_fails_with_remedy(tmp_path: Path) -> None:
    checks = _dryrun(
        tmp_path, **{"runtime_info.input.harbor_agent.docker_host": f"unix://{tmp_path}/no.sock"}
    )
    assert checks["backend.docker"]["status"] == "fail"
    assert "start Docker" in checks["backend.docker"]["remedy"]


def test_tls_daemon_with_issued_cert_passes(tmp_path: Path, tls_daemon: TlsDaemon) -> None:
    checks = _dryrun(tmp_path, **_remote(tls_daemon, tls_daemon.good_client))
    assert checks["backend.docker.tls"]["status"] == "ok"
    assert checks["backend.docker"]["status"] == "ok", checks["backend.docker"]
    assert "over mutual TLS" in checks["backend.docker"]["detail"]


def test_tls_daemon_without_cert_fails(tmp_path: Path, tls_daemon: TlsDaemon) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    checks = _dryrun(tmp_path, **_remote(tls_daemon, empty))
    check = checks["backend.docker.tls"]
    assert check["status"] == "fail"
    assert "missing ca.pem, cert.pem, key.pem" in check["detail"]
    assert "make provision" in check["remedy"]


@pytest.mark.parametrize("which", ["foreign_client", "self_signed_client"])
def test_tls_daemon_refuses_other_client_certs(
    tmp_path: Path, tls_daemon: TlsDaemon, which: str
) -> None:
    checks = _dryrun(tmp_path, **_remote(tls_daemon, getattr(tls_daemon, which)))
    check = checks["backend.docker"]
    assert check["status"] == "fail"
    assert "refused our client certificate" in check["detail"], check
    assert "issued by the daemon's CA" in check["remedy"]


def test_server_not_signed_by_our_ca_fails(tmp_path: Path, tls_daemon: TlsDaemon) -> None:
    checks = _dryrun(tmp_path, **_remote(tls_daemon, tls_daemon.wrong_ca_client))
    check = checks["backend.docker"]
    assert check["status"] == "fail"
    assert "not signed by our ca.pem" in check["detail"], check


def test_loose_key_permissions_warn(tmp_path: Path, tls_daemon: TlsDaemon) -> None:
    certs = tmp_path / "certs"
    shutil.copytree(tls_daemon.good_client, certs)
    (certs / "key.pem").chmod(0o644)
    checks = _dryrun(tmp_path, **_remote(tls_daemon, certs))
    assert checks["backend.docker.tls"]["status"] == "warn"
    assert "chmod 600" in checks["backend.docker.tls"]["remedy"]
    assert checks["backend.docker"]["status"] == "ok"


def test_nothing_listening_fails(tmp_path: Path, tls_daemon: TlsDaemon) -> None:
    from tests.helpers.tls_dockerd import free_port

    overrides = _remote(tls_daemon, tls_daemon.good_client)
    overrides["runtime_info.input.harbor_agent.docker_host"] = f"tcp://127.0.0.1:{free_port()}"
    checks = _dryrun(tmp_path, **overrides)
    assert checks["backend.docker"]["status"] == "fail"
    assert "connection refused" in checks["backend.docker"]["detail"]


def test_a_fleet_is_checked_host_by_host(tmp_path: Path, tls_daemon: TlsDaemon) -> None:
    """harbor_agent.docker_hosts: the local socket and the TLS daemon pass, each under its own
    name; a third host that is not there fails under its name, and only it."""
    gone = f"unix://{tmp_path}/gone.sock"
    fleet = [
        {"docker_host": "unix:///var/run/docker.sock", "max_concurrent_trials": 4},
        {
            "docker_host": tls_daemon.host,
            "docker_cert_path": str(tls_daemon.good_client),
            "max_concurrent_trials": 8,
        },
        {"docker_host": gone, "max_concurrent_trials": 2},
    ]
    checks = _dryrun(
        tmp_path,
        **{
            "runtime_info.input.harbor_agent.environment_import_path": REMOTE,
            "runtime_info.input.harbor_agent.docker_hosts": fleet,
        },
    )
    local = checks["backend.docker[unix:///var/run/docker.sock]"]
    remote = checks[f"backend.docker[{tls_daemon.host}]"]
    assert local["status"] == "ok", local
    assert remote["status"] == "ok" and "over mutual TLS" in remote["detail"], remote
    assert checks[f"backend.docker[{tls_daemon.host}].tls"]["status"] == "ok"
    missing = checks[f"backend.docker[{gone}]"]
    assert missing["status"] == "fail" and "start Docker" in missing["remedy"], missing
    assert "backend.docker" not in checks
