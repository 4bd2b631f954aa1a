"""The layout of src/: every module of hvt is in one part, and imports run one way only.

docs/architecture.md draws the parts; MAY_IMPORT below is the same picture as data. Imports are
read from the source (ast), lazy ones inside functions included; an import from one part into
another that MAY_IMPORT does not allow fails here with the file, the line and the import.
A new arrow is a decision: change MAY_IMPORT, docs/architecture.md and the part's __init__.py
docstring together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGES = ("hvt", "verl_patch", "harbor_patch")

# hvt/ holds one folder per part; at its top only the package, the command line and the leaves.
PARTS = (
    "config",
    "repos",
    "images",
    "trajectory",
    "proxy",
    "preflight",
    "run",
    "sandbox",
    "kuberay",
    "smoke",
    "commands",
)
TOP = {
    "hvt": "root",
    "hvt.cli": "cli",
    "hvt.ownership": "leaf",
    "hvt.docker_remote": "leaf",
    "hvt.secret_env": "leaf",
    "hvt.sandbox_labels": "leaf",
    "hvt.deep_merge": "leaf",
    "hvt.ray_nodes": "leaf",
}

LEAF = {"leaf"}
ALL_PARTS = {
    "config",
    "repos",
    "images",
    "trajectory",
    "proxy",
    "preflight",
    "run",
    "sandbox",
    "kuberay",
    "smoke",
}
# part -> the parts it may import (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    "root": set(),
    "leaf": set(),  # ownership, docker_remote, secret_env, sandbox_labels, deep_merge, ray_nodes
    "config": LEAF,  # nothing of ours but the leaves
    "repos": {"config"} | LEAF,
    "images": {"config"} | LEAF,
    "trajectory": {"config"} | LEAF,
    "proxy": {"config", "trajectory"} | LEAF,
    "preflight": {"config", "repos"} | LEAF,
    "run": {"config", "preflight", "proxy", "repos"} | LEAF,
    # Harbor trials as the agent loop runs them, from the operator's side (hvt sandbox)
    "sandbox": {"config", "preflight", "run"} | LEAF | {"verl_patch", "harbor_patch"},
    # the run on Kubernetes: the config as KubeRay objects (launch's attach setting from run)
    "kuberay": {"config", "run"} | LEAF,
    "smoke": ALL_PARTS - {"smoke"} | LEAF | {"verl_patch", "harbor_patch"},
    "commands": ALL_PARTS | LEAF | {"root"},  # the command line: the only importer of smoke
    "cli": {"commands", "root"},
    # the code that runs inside verl and inside Harbor
    "verl_patch": {"config", "trajectory", "harbor_patch"} | LEAF,
    "harbor_patch": {"proxy", "trajectory"} | LEAF,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str | None:
    """The part a module of ours belongs to; None for a module that is on no part."""
    top = module.split(".")[0]
    if top in ("verl_patch", "harbor_patch"):
        return top
    if module in TOP:
        return TOP[module]
    pieces = module.split(".")
    if len(pieces) >= 2 and pieces[1] in PARTS:
        return pieces[1]
    return None


def sources() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((SRC / pkg).rglob("*.py"))}


def imports(path: Path, module: str, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module of ours) for every import in the file, `from a import b` as a.b when a.b
    is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in known else target


def violations(
    graph: Mapping[str, list[tuple[int, str]]], where: Mapping[str, str] | None = None
) -> list[str]:
    """Every import that runs against MAY_IMPORT, as `file:line: a (part) imports b (part)`."""
    found = []
    for module, targets in sorted(graph.items()):
        src = part_of(module)
        for line, target in targets:
            dst = part_of(target)
            if src is None or dst is None or src == dst:
                continue
            if dst not in MAY_IMPORT[src]:
                at = (where or {}).get(module, module)
                found.append(f"{at}:{line}: {module} ({src}) imports {target} ({dst})")
    return found


def graph() -> tuple[dict[str, list[tuple[int, str]]], dict[str, str]]:
    files = sources()
    known = set(files)
    return (
        {m: list(imports(p, m, known)) for m, p in files.items()},
        {m: str(p.relative_to(SRC.parent)) for m, p in files.items()},
    )


def test_every_module_of_hvt_is_in_a_part() -> None:
    stray = [m for m in sources() if m.startswith("hvt") and part_of(m) is None]
    assert not stray, (
        f"{stray}: on no part; move each into its part's folder (docs/architecture.md), or add a "
        "leaf to TOP here and in the docs"
    )


def test_imports_run_one_way() -> None:
    found = violations(*graph())
    assert not found, "imports against the layout (docs/architecture.md):\n" + "\n".join(found)


def test_nothing_but_the_command_line_imports_smoke() -> None:
    g, where = graph()
    found = [
        f"{where[m]}:{line}: {m} imports {t}"
        for m, targets in g.items()
        for line, t in targets
        if part_of(t) == "smoke" and part_of(m) not in ("smoke", "commands", "cli")
    ]
    assert not found, "\n".join(found)


def test_config_imports_nothing_of_ours_but_the_leaves() -> None:
    g, where = graph()
    found = [
        f"{where[m]}:{line}: {m} imports {t}"
        for m, targets in g.items()
        if part_of(m) == "config"
        for line, t in targets
        if part_of(t) not in ("config", "leaf")
    ]
    assert not found, "\n".join(found)


def test_the_check_sees_an_import_going_the_wrong_way() -> None:
    planted = {
        "hvt.config.model": [(1, "hvt.run.launch")],
        "hvt.run.launch": [(2, "hvt.smoke.step"), (3, "hvt.config.model")],
        "hvt.trajectory.logger": [(4, "hvt.proxy.auth")],
        "harbor_patch.labels": [(5, "verl_patch.agent_loop")],
        "hvt.commands.run": [(6, "hvt.smoke.step")],
    }
    assert violations(planted) == [
        "harbor_patch.labels:5: harbor_patch.labels (harbor_patch) imports "
        "verl_patch.agent_loop (verl_patch)",
        "hvt.config.model:1: hvt.config.model (config) imports hvt.run.launch (run)",
        "hvt.run.launch:2: hvt.run.launch (run) imports hvt.smoke.step (smoke)",
        "hvt.trajectory.logger:4: hvt.trajectory.logger (trajectory) imports "
        "hvt.proxy.auth (proxy)",
    ]


def test_each_part_says_what_it_is_and_re_exports_nothing() -> None:
    for part in PARTS:
        init = SRC / "hvt" / part / "__init__.py"
        assert init.is_file(), f"{init} is missing"
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        assert "import" in doc.lower(), f"{init}: the docstring says what the part may import"
        assert len(tree.body) == 1, f"{init}: a docstring only (no re-exports)"
