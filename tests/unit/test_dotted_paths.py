"""Every dotted path that another program loads from a file of ours resolves.

LiteLLM imports the trajectory callback and `custom_auth` from the config `hvt litellm-config`
writes; verl the agent loop's `_target_`; Harbor the agent and environment import paths;
pip the console script; `python -m` its module. These strings live in config files, compose
files, docs and string constants, where no import checks them: a module renamed without them
fails here, with the file that still names the old path.

Each is resolved with importlib and getattr. A module that cannot be imported here because a
third-party package is missing (litellm and fastapi live in the proxy's venv, verl in the
trainer image) is read instead: its file must define the name at the top level.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from hvt.proxy import litellm_config
from hvt.proxy.discovery import Replica

ROOT = Path(__file__).resolve().parents[2]
OURS = ("hvt", "verl_patch", "harbor_patch")
# hvt.x.y, hvt.x:y; not a label (hvt.agent-runtime), a schema (hvt.trajectory/1), a file name
# (docker-compose-hvt.json) or a path (/srv/hvt/data)
PATH = r"((?:hvt|verl_patch|harbor_patch)(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?)"
DOTTED = re.compile(rf"(?<![\w.\-/]){PATH}(?![\w\-/])")
FULL = re.compile(rf"^{PATH}$")
TEXT_FILES = (
    "pyproject.toml",
    "Makefile",
    "Dockerfile",
    "README.md",
    "compose*.yaml",
    "config/**/*.yaml",
    "src/verl_patch/config/*.yaml",
    "src/harbor_patch/**/*.yaml",
    "entrypoint/*.sh",
    "docs/*.md",
)
PY_FILES = ("src/**/*.py", "scripts/*.py")
# what must be found at all, so that a collector that silently finds nothing fails too
LOADED_BY_OTHERS = {
    "hvt.cli:app",  # pip: the console script
    litellm_config.CALLBACK,  # LiteLLM: litellm_settings.callbacks
    litellm_config.CUSTOM_AUTH,  # LiteLLM: general_settings.custom_auth
    "verl_patch.agent_loop.HarborAgentLoop",  # verl: the agent loop's _target_
    "harbor_patch.agents.image_mounted_claude_code:ClaudeCode",  # Harbor: agent_import_path
    "harbor_patch.environments.remote_docker:RemoteDockerEnvironment",  # environment_import_path
}


def collect() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pattern in TEXT_FILES:
        for path in sorted(ROOT.glob(pattern)):
            for m in DOTTED.finditer(path.read_text()):
                found.setdefault(m.group(1), set()).add(str(path.relative_to(ROOT)))
    for pattern in PY_FILES:
        for path in sorted(ROOT.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and FULL.match(node.value)
                ):
                    found.setdefault(node.value, set()).add(str(path.relative_to(ROOT)))
    return found


FOUND = collect()


def _top_level_names(path: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
    return names


def split(dotted: str) -> tuple[str, list[str]]:
    """module, attributes: `a.b:C` -> (a.b, [C]); `a.b.C.d` -> the longest module prefix."""
    if ":" in dotted:
        module, attr = dotted.split(":")
        return module, [attr]
    parts = dotted.split(".")
    i = 1
    while i < len(parts):
        spec = importlib.util.find_spec(".".join(parts[:i]))
        assert spec is not None, f"no module {'.'.join(parts[:i])}"
        if spec.submodule_search_locations is None:  # a module: the rest are attributes
            break
        if importlib.util.find_spec(".".join(parts[: i + 1])) is None:
            break  # an attribute of a package
        i += 1
    return ".".join(parts[:i]), parts[i:]


# modules that act when imported: verl imports verl_patch.cpu.enable to switch CPU mode on, and
# it refuses outside CPU mode; such a module is read, not imported
ACTS_ON_IMPORT = {"verl_patch.cpu.enable"}


def resolve(dotted: str) -> None:
    module, attrs = split(dotted)
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    if module in ACTS_ON_IMPORT:
        missing_names = set(attrs[:1]) - _top_level_names(spec.origin)
        assert not missing_names, f"{module} defines no {', '.join(missing_names)}"
        return
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:  # a third-party package this venv does not have
        missing = (exc.name or "").split(".")[0]
        if not missing or missing in OURS:
            raise
        assert not attrs or attrs[0] in _top_level_names(spec.origin), f"no {attrs[0]} in {module}"
        return
    for attr in attrs:
        obj = getattr(obj, attr)


def test_the_paths_other_programs_load_are_all_found() -> None:
    missing = LOADED_BY_OTHERS - set(FOUND)
    assert not missing, f"not found in any config, doc or constant: {sorted(missing)}"


@pytest.mark.parametrize("dotted", sorted(FOUND))
def test_dotted_path_resolves(dotted: str) -> None:
    try:
        resolve(dotted)
    except (ImportError, AttributeError, AssertionError) as exc:
        where = ", ".join(sorted(FOUND[dotted]))
        pytest.fail(f"{dotted} (named in {where}) does not resolve: {exc}")


def test_the_litellm_config_names_loadable_callbacks() -> None:
    cfg = litellm_config.build([Replica(0, "10.0.0.5", 8000)], litellm_config.ProxySettings("m"))
    for dotted in [*cfg["litellm_settings"]["callbacks"], cfg["general_settings"]["custom_auth"]]:
        resolve(dotted)
