"""The few places where verl 0.9.1 assumes an accelerator, patched for CPU mode.

Each patch names the verl file and line it covers and fingerprints the function around that
line (a hash of its code lines: insensitive to moved lines, indentation, blank and comment
lines, sensitive to any change of code). `problems()` compares the installed verl with the
fingerprints without importing it; `apply()` refuses to run when one differs, naming the
patch, so a verl upgrade cannot turn a patch silently into a no-op or into a wrong one. After
an upgrade: read the function again, adjust the patch, then record the new fingerprint
(`python -m verl_patch.cpu.patches --print`).

Everything else CPU mode needs is a setting, not a patch (see `hvt.run.verl_command.CPU_OVERRIDES`
and `verl_patch.cpu.ENV`): FSDP2 instead of FSDP1 (`transformer_impl.py` 441-444 pass
`device_id` and `sync_module_states`), sdpa attention and no remove-padding for the actor, no
torch.compile, no gradient checkpointing, `VERL_ENGINE_DEVICE=cuda` for the engine registry
(`workers/engine/base.py` 405; the FSDP engines are registered for cuda and npu only,
`transformer_impl.py` 1143, 1594), and the `cpu` platform (`verl_patch.cpu.platform`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Patch:
    name: str
    file: str  # relative to the verl package directory
    line: int  # the line the patch is about, in verl 0.9.1
    needle: str  # text that line holds
    target: str  # the function around it: "func" or "Class.method"
    fingerprint: str  # sha256 of the target's tokens, first 16 hex digits
    why: str


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="gloo-process-group",
        file="utils/distributed.py",
        line=89,
        needle='backend = backend or f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"',
        target="initialize_global_process_group_ray",
        fingerprint="c6da4a17851b106c",
        why="on CPU the default backend reads 'cpu:gloo,cpu:gloo': torch refuses the "
        "duplicate device type; CPU mode passes plain 'gloo'",
    ),
    Patch(
        name="offload-without-pinned-memory",
        file="workers/engine/fsdp/transformer_impl.py",
        line=462,
        needle="offload_policy = CPUOffloadPolicy(pin_memory=True)",
        target="FSDPEngine._build_fsdp_module",
        fingerprint="e1b5b49e5071d4d3",
        why="pinned memory needs an accelerator ('Cannot access accelerator device'): the "
        "reference model's FSDP2 offload policy is built with pin_memory=False",
    ),
    Patch(
        name="critic-sdpa-attention",
        file="utils/model.py",
        line=649,
        needle='attn_implementation="flash_attention_2",',
        target="load_valuehead_model",
        fingerprint="ccf7a466e13c5d7a",
        why="the critic's value-head loader hard-codes flash_attention_2 (lines 649, 674), "
        "which needs CUDA: CPU mode loads the value model with sdpa",
    ),
    Patch(
        name="rollout-adapter-registry",
        file="workers/rollout/base.py",
        line=89,
        needle="_ROLLOUT_REGISTRY = {",
        target="get_rollout_class",
        fingerprint="d8d87c96f00c2358",
        why="each FSDP worker looks its rollout adapter up in this map by rollout.name "
        "(engine_workers.py 667); CPU mode adds ('hvt_cpu', 'async')",
    ),
    Patch(
        name="rollout-replica-registry",
        file="workers/rollout/replica.py",
        line=318,
        needle="def register(cls, name: str, loader: Callable[[], type[RolloutReplica]]) -> None:",
        target="RolloutReplicaRegistry",
        fingerprint="a0d00486cd2b7bf1",
        why="the trainer builds rollout replicas by rollout.name (llm_server.py 393); CPU "
        "mode registers 'hvt_cpu'",
    ),
)


def verl_root() -> Path:
    """The installed verl package directory, found without importing verl."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("verl is not installed in this Python (CPU mode patches verl 0.9.1)")
    return Path(next(iter(spec.submodule_search_locations)))


def _find(tree: ast.Module, target: str) -> ast.AST | None:
    scope: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in target.split("."):
        node = next(
            (
                n
                for n in scope
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and n.name == part
            ),
            None,
        )
        if node is None:
            return None
        scope = node.body
    return node


def fingerprint(root: Path, patch: Patch) -> str | None:
    """The target's fingerprint in the verl tree at `root`, or None when it is gone."""
    path = root / patch.file
    if not path.is_file():
        return None
    text = path.read_text()
    node = _find(ast.parse(text), patch.target)
    if node is None:
        return None
    segment = ast.get_source_segment(text, node) or ""
    # its lines without indentation, blank lines and comment lines: the same on every Python
    lines = (line.strip() for line in segment.splitlines())
    code = "\n".join(line for line in lines if line and not line.startswith("#"))
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def problems(root: Path | None = None) -> list[str]:
    """One line per patch whose verl code changed; empty when every patch still fits."""
    root = root or verl_root()
    found: list[str] = []
    for patch in PATCHES:
        where = f"verl/{patch.file}:{patch.line}"
        print_ = fingerprint(root, patch)
        if print_ is None:
            found.append(f"patch {patch.name}: {patch.target} is gone from {where}")
            continue
        if print_ != patch.fingerprint:
            found.append(
                f"patch {patch.name}: {patch.target} ({where}) changed (fingerprint "
                f"{print_}, patched {patch.fingerprint}): re-read it, adjust the patch, record "
                "the new fingerprint"
            )
            continue
        lines = (root / patch.file).read_text().splitlines()
        if len(lines) < patch.line or patch.needle not in lines[patch.line - 1]:
            found.append(f"patch {patch.name}: {where} no longer reads {patch.needle!r}")
    return found


class PatchDrift(RuntimeError):
    """verl's code under a patch changed: CPU mode refuses to run on guesses."""


# ---- the patches themselves (applied in every process verl starts, CPU mode only) ----------


def _gloo_process_group() -> None:
    import verl.utils.distributed as dist

    original: Callable[..., Any] = dist.initialize_global_process_group_ray

    def initialize_global_process_group_ray(
        timeout_second: int | None = None, backend: str | None = None
    ) -> Any:
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    dist.initialize_global_process_group_ray = initialize_global_process_group_ray
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None:  # imported before us: rebind its copy of the name too
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray  # type: ignore[attr-defined]


def _offload_without_pinned_memory() -> None:
    import verl.workers.engine.fsdp.transformer_impl as impl

    policy_cls = impl.CPUOffloadPolicy
    if policy_cls is None:  # torch without FSDP2: verl's own assert reports it
        return

    def cpu_offload_policy(*args: Any, **kwargs: Any) -> Any:
        kwargs["pin_memory"] = False
        return policy_cls(*args, **kwargs)

    impl.CPUOffloadPolicy = cpu_offload_policy


def _critic_sdpa_attention() -> None:
    import verl.utils.model as model_utils

    original: Callable[..., Any] = model_utils.load_valuehead_model

    def load_valuehead_model(
        local_path: str, torch_dtype: Any, model_config: Any, trust_remote_code: bool
    ) -> Any:
        from transformers import AutoModelForTokenClassification

        try:
            return AutoModelForTokenClassification.from_pretrained(
                pretrained_model_name_or_path=local_path,
                torch_dtype=torch_dtype,
                config=model_config,
                attn_implementation="sdpa",
                trust_remote_code=trust_remote_code,
            )
        except (ValueError, OSError):  # no token-classification head: verl's trl fallback
            return original(local_path, torch_dtype, model_config, trust_remote_code)

    model_utils.load_valuehead_model = load_valuehead_model


def _rollout_registries() -> None:
    from verl.workers.rollout import base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from verl_patch.cpu import ROLLOUT_NAME

    base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "verl_patch.cpu.replica.CpuServerAdapter"

    def load() -> type:
        from verl_patch.cpu.replica import CpuReplica

        return CpuReplica

    RolloutReplicaRegistry.register(ROLLOUT_NAME, load)


APPLY: dict[str, Callable[[], None]] = {
    "gloo-process-group": _gloo_process_group,
    "offload-without-pinned-memory": _offload_without_pinned_memory,
    "critic-sdpa-attention": _critic_sdpa_attention,
    "rollout-adapter-registry": _rollout_registries,
    "rollout-replica-registry": lambda: None,  # registered together with the adapter
}


def apply() -> None:
    found = problems()
    if found:
        raise PatchDrift("CPU mode refused: " + "; ".join(found))
    for patch in PATCHES:
        APPLY[patch.name]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check CPU-mode patches against installed verl")
    parser.add_argument("--print", action="store_true", help="print the installed fingerprints")
    parser.add_argument("--root", type=Path, default=None, help="a verl package directory")
    args = parser.parse_args(argv)
    root = args.root or verl_root()
    if args.print:
        for patch in PATCHES:
            print(f"{patch.name}: {fingerprint(root, patch)}")
        return 0
    found = problems(root)
    for line in found:
        print(line)
    print(f"{len(PATCHES) - len(found)}/{len(PATCHES)} CPU-mode patches fit verl at {root}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
