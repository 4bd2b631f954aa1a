"""Shared fixtures (a filled-in copy of the shipped config; the session prerequisites of
tests/helpers/prerequisites.py) and the CI rule: under CI=true a skip is a failure, except in
tests marked @pytest.mark.optin (a GPU host, a Kubernetes cluster)."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest_plugins = ["tests.helpers.prerequisites", "pytester"]

CI_SKIP = "skipped under CI=true"
ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = ROOT / "config" / "config.yaml"

FILLED = {
    "runtime_info.input.model.model_path": "/models/tiny",
    "runtime_info.input.data.data_dir": "/data/indexes",
    "runtime_info.input.data.train_index": "/data/indexes/train.parquet",
    "runtime_info.input.data.val_index": "/data/indexes/val.parquet",
}


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def del_path(data: dict[str, Any], dotted: str) -> None:
    node: Any = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]


def filled_config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SHIPPED_CONFIG.read_text())
    for dotted, value in {**FILLED, **overrides}.items():
        set_path(data, dotted, value)
    return data


@pytest.fixture
def filled_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(filled_config(), sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bundle work directory of the test's own: runs, state and Ray temp land here."""
    wd = tmp_path / "bundle"
    wd.mkdir()
    monkeypatch.setenv("HVT_WORKDIR", str(wd))
    monkeypatch.setenv("HVT_RAY_TEMP_DIR", str(tmp_path / "ray-hvt-test"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return wd


# -- the CI rule: no silent skips ---------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, line, reason = longrepr
        return f"{str(reason).removeprefix('Skipped: ')} ({path}:{line})"
    return str(longrepr)


def _fail_the_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{CI_SKIP}: {_skip_reason(report)}; only @pytest.mark.optin tests may skip in CI: build "
        "the prerequisite in a session fixture (tests/helpers/prerequisites.py) or fix the test bed"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")  # xfail is not a skip
        and in_ci()
        and item.get_closest_marker("optin") is None
    ):
        _fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A module that skips itself at import (pytest.importorskip, allow_module_level) fails too."""
    report = yield
    if report.skipped and in_ci():
        _fail_the_skip(report)
    return report
