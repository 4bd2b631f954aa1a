"""Shared fixtures: a filled-in copy of the shipped config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

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
