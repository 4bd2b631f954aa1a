"""The content tag of a task's sandbox image (what `hvt sandbox warm` builds and a trial starts
from), the compose overlay that names it, the warm summary, and which configs can be warmed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harbor_patch.environments import compose_overlay, env_image
from hvt.run import tasks_index
from hvt.sandbox.warm import REMOTE_DOCKER, Summary, Warmed, WarmError, require_warmable
from verl_patch.rollout_settings import STOCK_DOCKER, RolloutSettings

TASKS = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"


def test_the_tag_follows_the_environment_and_the_build_inputs(tmp_path: Path) -> None:
    args = tmp_path / "base.json"
    args.write_text('{"services": {"main": {"build": {"args": {"BASE_IMAGE": "a"}}}}}')
    tag = env_image.image_tag("Fix Greeting", "e" * 32, [args])
    assert tag.startswith("hvt-env/fix-greeting:") and len(tag.split(":")[1]) == 20
    assert env_image.image_tag("Fix Greeting", "e" * 32, [args]) == tag  # stable
    assert env_image.image_tag("Fix Greeting", "f" * 32, [args]) != tag  # task content
    assert env_image.image_tag("Fix Greeting", "e" * 32, []) != tag  # no BASE_IMAGE override
    args.write_text('{"services": {"main": {"build": {"args": {"BASE_IMAGE": "b"}}}}}')
    assert env_image.image_tag("Fix Greeting", "e" * 32, [args]) != tag  # another base


def test_a_tasks_image_changes_with_its_environment_and_not_with_its_tests(tmp_path: Path) -> None:
    task = tmp_path / "write-answer"
    shutil.copytree(TASKS / "write-answer", task)
    before = env_image.task_image(task)
    assert before.startswith("hvt-env/write-answer:")
    (task / "tests" / "extra.txt").write_text("the verifier is not in the image")
    assert env_image.task_image(task) == before
    (task / "environment" / "extra.txt").write_text("build context")
    assert env_image.task_image(task) != before


def test_a_task_that_names_its_own_image_keeps_it(tmp_path: Path) -> None:
    task = tmp_path / "prebuilt"
    shutil.copytree(TASKS / "write-answer", task)
    toml = (task / "task.toml").read_text()
    toml = toml.replace("[environment]", '[environment]\ndocker_image = "registry.example/swe:1"')
    (task / "task.toml").write_text(toml)
    assert env_image.task_image(task) == "registry.example/swe:1"


def test_the_overlay_names_mains_image_only_when_given() -> None:
    labels = {"harbor-run": "r"}
    spec = compose_overlay.overlay(labels, ["main", "db"], main_image="hvt-env/t:abc")
    assert spec["services"]["main"]["image"] == "hvt-env/t:abc"
    assert "image" not in spec["services"]["db"]
    assert "image" not in compose_overlay.overlay(labels)["services"]["main"]


def test_the_summary_counts_images_per_host_and_their_size() -> None:
    def w(task: str, host: str, source: str, size: int = 10**9) -> Warmed:
        failed = source == "failed"
        return Warmed(task, host, None if failed else f"hvt-env/{task}:x", source,
                      0 if failed else size, 1.0, "boom" if failed else None)  # fmt: skip

    s = Summary.of(
        [w("a", "h1", "built"), w("a", "h2", "present"), w("b", "h1", "failed")], seconds=3.0
    )
    assert (s.images, s.built, s.present, s.pulled, s.failed) == (2, 1, 1, 0, 1)
    assert s.gigabytes == pytest.approx(2.0)


def test_only_the_remote_docker_environment_can_be_warmed(tmp_path: Path) -> None:
    base = RolloutSettings(trials_dir=tmp_path, model_name="m")
    require_warmable(RolloutSettings(tmp_path, "m", env_import_path=REMOTE_DOCKER))
    with pytest.raises(WarmError, match=r"harbor_agent\.environment_import_path") as stock:
        require_warmable(RolloutSettings(tmp_path, "m", env_import_path=STOCK_DOCKER))
    assert REMOTE_DOCKER in str(stock.value)  # the fix
    k8s = "harbor_patch.environments.kubernetes:KubernetesEnvironment"
    with pytest.raises(WarmError, match="Kubernetes"):
        require_warmable(RolloutSettings(tmp_path, "m", env_import_path=k8s))
    assert base.env_import_path == STOCK_DOCKER


def test_the_index_gives_back_its_task_paths(tmp_path: Path) -> None:
    entries = tasks_index.discover(TASKS)
    index = tasks_index.write_parquet(tasks_index.rows(entries), tmp_path / "train.parquet")
    assert tasks_index.read_task_paths(index) == [e.path for e in entries]
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(tasks_index.TaskIndexError, match="not a tasks index"):
        tasks_index.read_task_paths(tmp_path / "bad.parquet")
