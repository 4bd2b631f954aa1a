"""`hvt clean --pods` on the Docker backend removes only this run's labelled sandboxes: their
containers and their networks (what a trainer killed mid `compose up` leaves)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
import yaml
from typer.testing import CliRunner

from hvt import sandbox_labels
from hvt.cli import app
from hvt.config.load import load
from hvt.run import clean
from tests.conftest import filled_config
from tests.helpers.prerequisites import require_images

pytestmark = pytest.mark.docker
IMAGE = "local/debian:bookworm"


@pytest.fixture
def client(docker_engine: None) -> docker.DockerClient:
    require_images(IMAGE)
    return docker.from_env(timeout=120)


def test_pods_removes_only_labelled_sandboxes(
    tmp_path: Path, client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HVT_WORKDIR", str(tmp_path))
    prefix = f"hvt-test-{uuid.uuid4().hex[:8]}"
    mine = [
        client.containers.run(IMAGE, "sleep 300", detach=True, labels={"harbor-run": prefix})
        for _ in range(2)
    ]
    other = client.containers.run(
        IMAGE, "sleep 300", detach=True, labels={"harbor-run": f"{prefix}-other"}
    )
    unlabelled = client.containers.run(IMAGE, "sleep 300", detach=True)
    network = client.networks.create(f"{prefix}_default", labels={"harbor-run": prefix})
    network.connect(mine[0])
    other_network = client.networks.create(f"{prefix}-other", labels={"harbor-run": "x" + prefix})
    try:
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                filled_config(**{"runtime_info.input.harbor_agent.pod_name_prefix": prefix})
            )
        )
        argv = ["clean", "--config", str(config), "--pods"]
        local = "unix:///var/run/docker.sock"
        dry = CliRunner().invoke(app, [*argv, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        said = " ".join(dry.output.split())
        assert (
            f"would remove 2 sandbox container(s) and 1 network(s) labelled harbor-run={prefix} "
            f"on {local}" in said
        ), said
        assert f"{prefix}_default" in said
        assert len(client.containers.list(all=True, filters={"label": f"harbor-run={prefix}"})) == 2
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        removed = f"removed 2 sandbox container(s) and 1 network(s) labelled harbor-run={prefix}"
        assert removed in said, said
        again = CliRunner().invoke(app, [*argv, "--dry-run"])
        said = " ".join(again.output.split())
        assert f"no sandbox container or network labelled harbor-run={prefix} on {local}" in said
        ids = {c.id for c in client.containers.list(all=True)}
        assert not any(c.id in ids for c in mine)
        assert other.id in ids and unlabelled.id in ids
        networks = {n.id for n in client.networks.list()}
        assert network.id not in networks and other_network.id in networks
    finally:
        for c in [*mine, other, unlabelled]:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        for n in (network, other_network):
            with contextlib.suppress(docker.errors.NotFound):
                n.remove()


def test_launch_reaps_only_sandboxes_whose_maker_on_this_host_is_gone(
    tmp_path: Path, client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `hvt launch` does before and after training: a trainer stopped mid-step kills its
    trials before Harbor takes their sandboxes down; their makers are gone, so they go. A live
    maker's sandboxes and another host's stay (they may be another run's with this prefix)."""
    monkeypatch.setenv("HVT_WORKDIR", str(tmp_path))
    prefix = f"hvt-test-{uuid.uuid4().hex[:8]}"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    here = sandbox_labels.this_host()

    def owned(host: str, pid: str) -> dict[str, str]:
        return {
            "harbor-run": prefix,
            sandbox_labels.OWNER_HOST_LABEL: host,
            sandbox_labels.OWNER_PID_LABEL: pid,
        }

    orphan = client.containers.create(IMAGE, "sleep 300", labels=owned(here, gone))
    orphan_net = client.networks.create(f"{prefix}-orphan", labels=owned(here, gone))
    alive = client.containers.create(IMAGE, "sleep 300", labels=owned(here, str(os.getpid())))
    elsewhere = client.containers.create(IMAGE, "sleep 300", labels=owned("another-host", gone))
    elsewhere_net = client.networks.create(f"{prefix}-else", labels=owned("another-host", gone))
    try:
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                filled_config(**{"runtime_info.input.harbor_agent.pod_name_prefix": prefix})
            )
        )
        said: list[str] = []
        assert clean.reap_orphans(load(config), said.append) == 2
        assert said == [
            f"removed 1 sandbox container(s) and 1 network(s) labelled harbor-run={prefix} on "
            "unix:///var/run/docker.sock: their trial processes are gone"
        ], said
        ids = {c.id for c in client.containers.list(all=True)}
        assert orphan.id not in ids and {alive.id, elsewhere.id} <= ids
        networks = {n.id for n in client.networks.list()}
        assert orphan_net.id not in networks and elsewhere_net.id in networks
        assert clean.reap_orphans(load(config), said.append) == 0  # nothing more to take
    finally:
        for c in (orphan, alive, elsewhere):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        for n in (orphan_net, elsewhere_net):
            with contextlib.suppress(docker.errors.NotFound):
                n.remove()
