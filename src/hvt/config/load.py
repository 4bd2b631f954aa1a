"""Read config.yaml, validate it completely, and report every problem with its key path.

`load(path)` returns a typed `RunConfig` or raises `ConfigError` carrying all problems:
YAML syntax (line and column), raw scans (markers, placeholders, secrets), types and ranges,
then the rules across keys.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from hvt.config import rules as config_rules
from hvt.config import scan as config_scan
from hvt.config.model import RunConfig
from hvt.config.problems import ConfigError, Problem
from hvt.deep_merge import merge

# Hints for keys whose format is not obvious from the error alone.
FORMAT_HINTS = {
    "docker_host": 'use "" (local socket), unix:///var/run/docker.sock or tcp://<host>:2376',
    "namespace": "use a lowercase DNS label such as rl-sandboxes",
    "pod_name_prefix": "use a lowercase DNS label of at most 40 characters",
    "environment_import_path": "write module.path:ClassName",
    "project_name": "letters, digits, '.', '_' and '-'",
    "exp_name": 'letters, digits, ".", "_" and "-", or "" for an automatic name',
    "host_path": "use an absolute path",
    "mount_path": "use an absolute path",
    "runtime_mount_path": "use an absolute path",
}

TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _line_index(text: str) -> dict[str, int]:
    """Map dotted key paths to the 1-based line where each key is written."""
    index: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: yaml.Node | None, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = f"{path}.{key.value}" if path else str(key.value)
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = f"{path}.{i}"
                index[child] = item.start_mark.line + 1
                walk(item, child)

    walk(root, "")
    return index


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields live at `loc` (for did-you-mean suggestions)."""
    current: Any = RunConfig
    skip_key = False
    for part in loc:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        skip_key = get_origin(field.annotation) is dict
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Optional[X], list[X], dict[str, X] -> X."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin in (list, dict):
        return _unwrap(get_args(annotation)[-1])
    return annotation


def _known_keys(parent: tuple[str | int, ...]) -> list[str]:
    model = _model_at(parent)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem_from_error(err: ErrorDetails) -> Problem:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    kind = err["type"]
    key = str(loc[-1]) if loc else ""
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        fix = f"did you mean '{close[0]}'?" if close else "remove it"
        if known and not close:
            fix += f"; known keys here: {', '.join(known)}"
        return Problem(path, "unknown key", fix)
    if kind == "missing":
        return Problem(
            path,
            "required key is missing",
            "add it; the shipped config/config.yaml has every key with its default",
        )
    if kind in TYPE_WORDS:
        fix = f"write {TYPE_WORDS[kind]}"
        if kind.startswith("float") and isinstance(value, str):
            fix += " (YAML reads 1e-6 as text: write 1.0e-6)"
        elif kind.startswith(("int", "float", "bool")) and isinstance(value, str):
            fix += " without quotes"
        return Problem(path, f"expected {TYPE_WORDS[kind]}, got {_describe(value)}", fix)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(iter(ctx.values()))
        word = {
            "greater_than": ">",
            "greater_than_equal": ">=",
            "less_than": "<",
            "less_than_equal": "<=",
        }[kind]
        rng = _range_text(loc)
        return Problem(
            path,
            f"{_describe(value)} is out of range (must be {word} {bound})",
            f"use a value {rng}" if rng else f"use a value {word} {bound}",
        )
    if kind == "literal_error":
        return Problem(
            path, f"{_describe(value)} is not allowed", f"use one of {ctx.get('expected', '')}"
        )
    if kind == "string_pattern_mismatch":
        return Problem(
            path,
            f"{_describe(value)} has the wrong format",
            FORMAT_HINTS.get(key, f"must match {ctx.get('pattern', '')}"),
        )
    if kind in ("string_too_short", "string_too_long"):
        return Problem(
            path,
            f"{_describe(value)} has the wrong length",
            FORMAT_HINTS.get(key, err["msg"].lower()),
        )
    if kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
        what, _, fix = message.partition(" -- ")
        return Problem(path, what, fix)
    return Problem(path, err["msg"], FORMAT_HINTS.get(key, "see config/config.yaml"))


def _range_text(loc: tuple[str | int, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    field = model.model_fields.get(str(loc[-1]))
    if field is None:
        return ""
    low = high = None
    lo_word = hi_word = ""
    for meta in field.metadata:
        for attr, word in (("gt", "above"), ("ge", "from")):
            if getattr(meta, attr, None) is not None:
                low, lo_word = getattr(meta, attr), word
        for attr, word in (("lt", "below"), ("le", "up to")):
            if getattr(meta, attr, None) is not None:
                high, hi_word = getattr(meta, attr), word
    if low is not None and high is not None:
        return f"{lo_word} {low} {hi_word} {high}"
    return ""


def parse(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(
            source,
            [
                Problem(
                    "(yaml)",
                    f"does not parse at {where}: {exc.problem}",
                    "fix the YAML syntax there (indentation, a missing ':' or an unclosed quote)",
                    mark.line + 1 if mark else None,
                )
            ],
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            source, [Problem("(yaml)", f"does not parse: {exc}", "fix the YAML")]
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            [
                Problem(
                    "(top level)", "is not a mapping", "the file needs meta_info: and runtime_info:"
                )
            ],
        )
    return data


def validate(
    data: dict[str, Any],
    text: str = "",
    config_file: Path | None = None,
) -> tuple[RunConfig | None, list[Problem]]:
    """Every problem in the file, and the typed config when the types are right (else None)."""
    lines = _line_index(text) if text else {}
    problems = config_scan.scan(data)
    flagged = config_scan.flagged_paths(problems)
    cfg: RunConfig | None = None
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problem = _problem_from_error(err)
            if problem.path not in flagged:
                problems.append(problem)
                flagged.add(problem.path)
    if cfg is not None:
        problems += config_rules.check(cfg, config_file)
    problems = [
        Problem(p.path, p.message, p.fix, p.line or _nearest_line(lines, p.path)) for p in problems
    ]
    return cfg, problems


def _nearest_line(lines: dict[str, int], path: str) -> int | None:
    parts = path.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line is not None:
            return line
        parts.pop()
    return None


EXTENDS = "extends"


def resolve_extends(
    data: dict[str, Any], path: Path, seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """`extends: <file>` (relative to this file) makes this file an overlay of that profile."""
    parent = data.get(EXTENDS)
    if parent is None:
        return data
    source = str(path)
    if not isinstance(parent, str) or not parent:
        raise ConfigError(
            source,
            [
                Problem(
                    EXTENDS, f"expected a file name, got {parent!r}", "write extends: config.yaml"
                )
            ],
        )
    base_path = (path.parent / parent).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(
            source,
            [
                Problem(
                    EXTENDS,
                    f"{parent} extends itself in a cycle",
                    "point extends at a profile without extends",
                )
            ],
        )
    if not base_path.is_file():
        raise ConfigError(
            source,
            [
                Problem(
                    EXTENDS,
                    f"{base_path} does not exist",
                    "fix the file name (relative to this file)",
                )
            ],
        )
    base = parse(base_path.read_text(), str(base_path))
    base = resolve_extends(base, base_path, (*seen, path.resolve()))
    overlay = {k: v for k, v in data.items() if k != EXTENDS}
    return merge(base, overlay)


def read(path: Path) -> tuple[dict[str, Any], str]:
    """The file's data (with `extends` resolved) and its own text (for line numbers)."""
    text = path.read_text()
    return resolve_extends(parse(text, str(path)), path), text


def check(path: Path) -> tuple[RunConfig | None, list[Problem]]:
    """Every problem of a config file (missing, unparsable, invalid); never raises."""
    if not path.is_file():
        return None, [
            Problem(
                "(file)",
                f"{path} does not exist",
                "pass --config <file> or run from the bundle root",
            )
        ]
    try:
        data, text = read(path)
    except ConfigError as exc:
        return None, exc.problems
    return validate(data, text, path)


def load(path: Path) -> RunConfig:
    """The typed config, or ConfigError with every problem."""
    cfg, problems = check(path)
    if cfg is None or problems:
        raise ConfigError(str(path), problems)
    return cfg


def load_or_say(path: Path, say: Callable[[str], None]) -> RunConfig | None:
    """The typed config; or, with a problem, None after saying each one (`<key>: <what>
    (<fix>)`): what a command that cannot start without its config does."""
    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            say(problem.render())
        return None
