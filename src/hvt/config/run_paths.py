"""Where a run keeps its files. One place, so dryrun, launch and clean agree."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hvt.config.bundle import bundle_root
from hvt.config.model import RunConfig


def repos_dir() -> Path:
    """repos/ holding harbor, verl (and, in the image, this bundle itself)."""
    env = os.environ.get("HVT_REPOS_DIR")
    if env:
        return Path(env)
    root = bundle_root()
    return root.parent if root.parent.name == "repos" else root / "repos"


@dataclass(frozen=True)
class RunPaths:
    workdir: Path
    project: str
    exp: str
    trials_override: str = ""

    @classmethod
    def from_config(cls, cfg: RunConfig, exp: str | None = None) -> RunPaths:
        workdir = Path(os.environ.get("HVT_WORKDIR") or bundle_root())
        e = cfg.inputs.experiment
        return cls(workdir, e.project_name, exp or e.exp_name, e.trials_dir)

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.workdir / "checkpoints"

    @property
    def artifacts(self) -> Path:
        return self.workdir / "artifacts"

    @property
    def trials_root(self) -> Path:
        """Every project's trials; the proxy's trajectory logger is confined to this tree."""
        return self.workdir / "harbor_trials"

    @property
    def project_trials(self) -> Path:
        if self.trials_override:
            return Path(self.trials_override)
        return self.trials_root / self.project

    @property
    def state(self) -> Path:
        """Pid files and generated configs of the processes this bundle starts."""
        return self.workdir / "run"

    @property
    def ray_temp(self) -> Path:
        """This bundle's own Ray temp dir (short: Ray's unix socket paths are length-limited)."""
        env = os.environ.get("HVT_RAY_TEMP_DIR")
        if env:
            return Path(env)
        digest = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:8]
        return Path(tempfile.gettempdir()) / f"ray-hvt-{digest}"

    @property
    def wandb(self) -> Path:
        return self.workdir / "wandb"
