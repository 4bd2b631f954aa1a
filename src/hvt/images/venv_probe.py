"""Runs *inside* the venv under test (python -c, stdlib only) and prints one JSON object.

Input: a JSON argument {"modules": [...], "imports": [...]}. Output:
  distributions: {name: {"version", "direct_url"}}  every installed distribution
  modules:       {module: {"origin", "locations", "error"}}  where each resolves (not imported)
  docker:        {"file", "client_ok", "error", "dist_files"}  what `from docker import ...` gets
  imports:       {module: {"ok", "seconds", "version", "file", "error"}}
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import sys
import time
from typing import Any


def _distributions() -> dict[str, dict[str, Any]]:
    # in sys.path order; the first copy of a name is the one `import` and pip see (an editable
    # setuptools tree also carries its own *.egg-info further down sys.path)
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        key = re.sub(r"[-_.]+", "-", name or "").lower()
        if not name or key in seen:
            continue
        seen.add(key)
        raw = dist.read_text("direct_url.json")
        out[name] = {
            "version": dist.version,
            "direct_url": json.loads(raw) if raw else None,
            "path": str(getattr(dist, "_path", "")),
        }
    return out


def _where(module: str) -> dict[str, Any]:
    try:
        spec = importlib.util.find_spec(module)
    except Exception as exc:  # a broken parent package, a bad .pth finder
        return {"origin": None, "locations": [], "error": f"{type(exc).__name__}: {exc}"}
    if spec is None:
        return {"origin": None, "locations": [], "error": "not found on sys.path"}
    return {
        "origin": spec.origin if spec.has_location else None,
        "locations": list(spec.submodule_search_locations or []),
        "error": None,
    }


def _docker() -> dict[str, Any]:
    out: dict[str, Any] = {"file": None, "client_ok": False, "error": None, "dist_files": []}
    try:
        dist = importlib.metadata.distribution("docker")
        out["dist_files"] = [
            str(dist.locate_file(f)) for f in (dist.files or []) if str(f) == "docker/__init__.py"
        ]
    except importlib.metadata.PackageNotFoundError:
        out["error"] = "the docker distribution is not installed"
    try:
        import docker

        out["file"] = getattr(docker, "__file__", None) or str(list(docker.__path__))
        from docker import DockerClient  # noqa: F401

        out["client_ok"] = True
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _import(module: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        mod = importlib.import_module(module)
    except BaseException as exc:  # SystemExit or a native abort surfaces as a failure, not a crash
        return {"ok": False, "seconds": time.monotonic() - started, "error": repr(exc)[:500]}
    return {
        "ok": True,
        "seconds": round(time.monotonic() - started, 2),
        "version": str(getattr(mod, "__version__", "")),
        "file": getattr(mod, "__file__", None),
        "error": None,
    }


def main() -> None:
    args = json.loads(sys.argv[1])
    report = {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "distributions": _distributions(),
        "modules": {m: _where(m) for m in args["modules"]},
        "docker": _docker(),
    }
    report["imports"] = {m: _import(m) for m in args["imports"]}
    sys.stdout.flush()
    print("\n@@HVT-PROBE@@" + json.dumps(report))


if __name__ == "__main__":
    main()
