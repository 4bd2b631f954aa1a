"""The pins of config/repos.yaml: where each editable source tree comes from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class ReposConfigError(Exception):
    """config/repos.yaml is missing or wrong; the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GitPin(_Strict):
    url: str
    ref: str = Field(description="the release tag the commit carries")
    commit: str | None = Field(
        default=None, description="full 40-hex commit; checked against what `ref` resolves to"
    )

    @field_validator("commit")
    @classmethod
    def _full_sha(cls, value: str | None) -> str | None:
        if value is not None and not _SHA1.match(value):
            raise ValueError("must be a full 40-character lowercase hex commit id")
        return value


class PypiPin(_Strict):
    """The released package that carries the same code as the git pin."""

    name: str
    version: str
    kind: Literal["sdist", "wheel"] = Field(
        description="sdist: unpack as is; wheel: unpack into src/ with a generated pyproject.toml"
    )
    filename: str
    sha256: str
    index_url: str = "https://pypi.org/simple"

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be the 64-character lowercase hex sha256 of the file")
        return value


class RepoPin(_Strict):
    git: GitPin
    pypi: PypiPin
    patches: list[str] = Field(
        default_factory=list, description="patch files (relative to the repo root), in order"
    )


class ReposSpec(_Strict):
    repos: dict[str, RepoPin]

    @field_validator("repos")
    @classmethod
    def _names(cls, value: dict[str, RepoPin]) -> dict[str, RepoPin]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"repo name {name!r} must be a plain directory name")
        return value


def load_spec(path: Path) -> ReposSpec:
    """Read and validate the pins; errors name the key path and the fix."""
    if not path.is_file():
        raise ReposConfigError(
            f"{path}: not found (fix: run from the bundle's root or pass --config)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ReposConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return ReposSpec.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            lines.append(f"  {where}: {err['msg']}")
        raise ReposConfigError(f"{path}: invalid pins:\n" + "\n".join(lines)) from exc
