"""Algorithm presets: config/algorithms/<name>.yaml (ppo, grpo, gspo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hvt.config.bundle import bundle_root


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    adv_estimator: str
    policy_loss_mode: str
    loss_agg_mode: str
    needs_critic: bool
    verl_overrides: dict[str, Any] = field(default_factory=dict)


def presets_dir(config_file: Path | None = None) -> Path:
    """Presets next to the config file win; else the bundle's config/algorithms."""
    if config_file is not None:
        local = config_file.resolve().parent / "algorithms"
        if local.is_dir():
            return local
    return bundle_root() / "config" / "algorithms"


def available(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load(name: str, directory: Path) -> Preset:
    path = directory / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    algo = raw["algorithm"]
    return Preset(
        name=name,
        description=str(raw.get("description", "")),
        adv_estimator=str(algo["adv_estimator"]),
        policy_loss_mode=str(algo["policy_loss_mode"]),
        loss_agg_mode=str(algo["loss_agg_mode"]),
        needs_critic=bool(raw.get("needs_critic", False)),
        verl_overrides=dict(raw.get("verl_overrides") or {}),
    )
