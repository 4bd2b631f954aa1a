"""`hvt clean --pods` on the Docker backend removes only this run's labelled sandboxes: their
containers and their networks (what a trainer killed mid `compose up` leaves)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import docker
import pytest
import yaml
from typer.testing import CliRunner

from hvt.cli import app
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
