"""A problem found in the config: where, what is wrong, how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    fix: str
    line: int | None = None

    def render(self) -> str:
        """`<key.path>: <what is wrong> (<how to fix>)`, the one-line form users grep for."""
        text = f"{self.path}: {self.message}"
        if self.fix:
            text += f" ({self.fix})"
        return text


class ConfigError(Exception):
    """The config file cannot be used; carries every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)")
