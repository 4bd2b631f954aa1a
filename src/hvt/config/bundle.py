"""Where the bundle lives: the checkout (or /workspace/repos/harbor-verl-train in the image)."""

from __future__ import annotations

import os
from pathlib import Path


def bundle_root() -> Path:
    """HVT_HOME if set, else the source tree this package was installed (editable) from."""
    env = os.environ.get("HVT_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "config" / "config.yaml").is_file() and (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


def default_config_path() -> Path:
    env = os.environ.get("HVT_CONFIG")
    if env:
        return Path(env)
    local = Path.cwd() / "config" / "config.yaml"
    if local.is_file():
        return local
    return bundle_root() / "config" / "config.yaml"
