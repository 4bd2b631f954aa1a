"""Switch CPU mode on in this process (imported by verl through VERL_USE_EXTERNAL_MODULES).

Refuses, naming the fix, without VERL_PLATFORM=cpu or on a host where CUDA is usable: CPU mode
never runs on a GPU host. Then registers the `cpu` platform and applies the patches (each
checked against the installed verl first: `verl_patch.cpu.patches`).
"""

from __future__ import annotations

import os


class CpuModeRefused(ImportError):
    """CPU mode asked for where it must not run (an ImportError: verl reports it as such)."""


def enable() -> None:
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
        raise CpuModeRefused(
            "verl_patch.cpu.enable was loaded without VERL_PLATFORM=cpu: `hvt launch --cpu` "
            "sets both; otherwise unset VERL_USE_EXTERNAL_MODULES"
        )
    import torch

    if torch.cuda.is_available():
        raise CpuModeRefused(
            "CPU mode refused on a host with a usable GPU: launch without --cpu (vLLM "
            "replicas and FSDP on the GPUs)"
        )
    from verl_patch.cpu import patches, platform  # noqa: F401  (platform registers itself)

    patches.apply()


enable()
