"""Preflight checks of the code and inputs a run reads: repos, the venv, input paths, the model."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hvt.config.bundle import bundle_root
from hvt.config.run_paths import repos_dir
from hvt.config.scan import HUMAN_MARKER
from hvt.preflight.check import Check, Context, fail, ok, skip, warn

DEFAULT_VENV = Path("/opt/venv")
EDITABLE_MODULES = ("harbor", "verl", "verl_patch", "harbor_patch")

# Run inside the venv under test: where each module resolves, without importing it, and whether
# `docker` is the real SDK (verl ships a top-level docker/ folder that can shadow it).
_PROBE = r"""
import importlib.util, json, sys
mods = sys.argv[1].split(",")
out = {}
for m in mods:
    try:
        spec = importlib.util.find_spec(m)
    except Exception as exc:
        out[m] = {"error": repr(exc)}
        continue
    if spec is None:
        out[m] = {"error": "not installed"}
    else:
        locs = list(spec.submodule_search_locations or [])
        out[m] = {"origin": spec.origin, "locations": locs}
try:
    from docker import DockerClient  # noqa: F401
    import docker
    out["docker_sdk"] = {"origin": docker.__file__, "version": getattr(docker, "__version__", "")}
except Exception as exc:
    out["docker_sdk"] = {"error": repr(exc)}
print(json.dumps(out))
"""


def check_repos(ctx: Context) -> Iterator[Check]:
    from hvt.repos import trees as repos
    from hvt.repos.spec import ReposConfigError

    try:
        reports = repos.inspect_all(bundle_root(), repos_dir())
    except ReposConfigError as exc:
        yield fail("repos.pins", str(exc), "restore config/repos.yaml from the bundle")
        return
    for r in reports:
        name = f"repos.{r.name}"
        if r.state is repos.State.UP_TO_DATE:
            yield ok(name, f"at its pin: {r.detail} ({r.source})")
        elif r.state is repos.State.DIRTY:
            yield warn(name, r.detail, r.fix)
        else:
            yield fail(name, r.detail, r.fix)


def _venv_python(ctx: Context) -> Path | None:
    configured = ctx.cfg.inputs.environment.venv_path
    if configured:
        return Path(configured) / "bin" / "python"
    if (DEFAULT_VENV / "bin" / "python").exists():
        return DEFAULT_VENV / "bin" / "python"
    return None


def check_venv(ctx: Context) -> Iterator[Check]:
    python = _venv_python(ctx)
    custom = bool(ctx.cfg.inputs.environment.venv_path)
    if python is None:
        yield skip(
            "venv.editable",
            f"no trainer venv on this machine ({DEFAULT_VENV} absent); "
            "run the preflight in the trainer image: "
            "docker compose run --rm trainer hvt dryrun",
        )
        yield skip("venv.docker_sdk", "no trainer venv on this machine")
        return
    if not python.exists():
        yield fail(
            "venv.editable",
            f"{python} does not exist",
            'fix runtime_info.input.environment.venv_path or set it to ""',
        )
        return
    probe = subprocess.run(
        [str(python), "-c", _PROBE, ",".join(EDITABLE_MODULES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        yield fail(
            "venv.editable",
            f"{python} failed: {probe.stderr.strip()[-300:]}",
            "rebuild the image (make image) or the venv",
        )
        return
    found = json.loads(probe.stdout)
    root = repos_dir().resolve()
    bad: list[str] = []
    for module in EDITABLE_MODULES:
        info = found.get(module, {})
        if "error" in info:
            bad.append(f"{module}: {info['error']}")
            continue
        where = [*info.get("locations", []), info.get("origin") or ""]
        resolved = [Path(w).resolve() for w in where if w]
        if not any(root in p.parents or p == root for p in resolved):
            bad.append(f"{module} -> {resolved[0] if resolved else '?'}")
    if bad:
        remedy = (
            f"a custom venv must hold harbor, verl, verl_patch, harbor_patch editable from {root}"
            if custom
            else "rebuild the image (make image) and re-run make repos"
        )
        yield fail("venv.editable", f"outside {root}: " + "; ".join(bad), remedy)
    else:
        yield ok("venv.editable", f"{', '.join(EDITABLE_MODULES)} resolve under {root}")
    sdk = found.get("docker_sdk", {})
    origin = str(sdk.get("origin", ""))
    if "error" in sdk or "site-packages" not in origin:
        yield fail(
            "venv.docker_sdk",
            f"`from docker import DockerClient` -> {sdk}",
            f"uv pip install --python {python} docker; make sure no docker/ folder "
            "(such as verl's) is on sys.path ahead of site-packages",
        )
    else:
        yield ok("venv.docker_sdk", f"docker SDK {sdk.get('version', '')} at {origin}")


def input_path(ctx: Context, value: str) -> Path:
    path = Path(value)
    if not path.is_absolute() and ctx.cfg.inputs.data.data_dir:
        path = Path(ctx.cfg.inputs.data.data_dir) / path
    return path


def check_inputs(ctx: Context) -> Iterator[Check]:
    i = ctx.cfg.inputs
    model = Path(i.model.model_path)
    if i.model.model_path == HUMAN_MARKER:
        yield skip("inputs.model_path", "not filled in yet (see config.valid)")
    elif (model / "config.json").is_file():
        yield ok("inputs.model_path", str(model))
    elif model.is_dir():
        yield fail(
            "inputs.model_path",
            f"{model} has no config.json",
            "point model.model_path at a Hugging Face model directory",
        )
    else:
        yield fail(
            "inputs.model_path",
            f"{model} does not exist",
            "fix runtime_info.input.model.model_path (mount it into the trainer)",
        )
    for key in ("train_index", "val_index"):
        path = input_path(ctx, getattr(i.data, key))
        if HUMAN_MARKER in (getattr(i.data, key), i.data.data_dir):
            yield skip(f"inputs.{key}", "not filled in yet (see config.valid)")
        elif path.is_file() and path.stat().st_size > 0:
            yield ok(f"inputs.{key}", str(path))
        else:
            state = "is empty" if path.is_file() else "does not exist"
            yield fail(
                f"inputs.{key}",
                f"{path} {state}",
                f"fix runtime_info.input.data.{key}; build it with "
                "`hvt tasks index <tasks_dir> -o <file>.parquet`",
            )
    src = i.experiment.trajectory_logger_src
    if not src:
        yield ok("inputs.trajectory_logger", "bundled hvt.trajectory.logger")
    elif Path(src).is_file():
        yield ok("inputs.trajectory_logger", src)
    else:
        yield fail(
            "inputs.trajectory_logger",
            f"{src} does not exist",
            'set experiment.trajectory_logger_src: "" to use the bundled logger',
        )


def check_model_heads(ctx: Context) -> Iterator[Check]:
    config_json = Path(ctx.cfg.inputs.model.model_path) / "config.json"
    tp = ctx.cfg.inputs.vllm.gen_tp
    if not config_json.is_file():
        yield skip("model.kv_heads", f"{config_json} not readable (see inputs.model_path)")
        return
    data = json.loads(config_json.read_text())
    text_cfg = data.get("text_config") or {}
    heads = (
        data.get("num_key_value_heads")
        or text_cfg.get("num_key_value_heads")
        or data.get("num_attention_heads")
        or text_cfg.get("num_attention_heads")
    )
    if not isinstance(heads, int):
        yield warn(
            "model.kv_heads",
            f"{config_json} names no num_key_value_heads",
            "check by hand that vllm.gen_tp divides the model's KV heads",
        )
    elif heads % tp:
        valid = [d for d in range(1, heads + 1) if heads % d == 0]
        yield fail(
            "model.kv_heads",
            f"vllm.gen_tp={tp} does not divide num_key_value_heads={heads}: the first "
            "forward pass would crash with 'CUDA error: an illegal memory access'",
            f"set runtime_info.input.vllm.gen_tp to one of {valid}",
        )
    else:
        yield ok("model.kv_heads", f"vllm.gen_tp={tp} divides num_key_value_heads={heads}")
