"""verl's platform for a machine without an accelerator: device `cpu`, gloo, logical GPUs.

verl 0.9.1 registers only nvidia, huawei and amd platforms
(`verl/plugin/platform/platform_manager.py` 191-193) and falls back to nvidia, so on a CPU host
`get_device_name()` is `cuda` and `get_device_id()` raises. This platform is registered under
the name `cpu` and chosen with `VERL_PLATFORM=cpu` (`platform_manager.py` ~111): device `cpu`,
collectives on gloo, and Ray's `GPU` resource, which `hvt launch --cpu` advertises as logical
GPUs (`ray start --num-gpus`) so verl's resource pools (`single_controller/ray/base.py`
146-148) place one worker per logical GPU.

`torch.cpu` lacks most of the memory and RNG calls verl makes on `get_torch_device()` every
step (`workers/engine_workers.py` 219-220, `utils/memory_utils.py` 47-62, the FSDP utils'
`empty_cache`): `CpuDeviceModule` answers them (no-ops, zeros, the host's RNG).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


def _zero(*_args: Any, **_kwargs: Any) -> int:
    return 0


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _mem_get_info(*_args: Any, **_kwargs: Any) -> tuple[int, int]:
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    free = os.sysconf("SC_AVPHYS_PAGES") * size
    return free, pages * size


class CpuDeviceModule(ModuleType):
    """`torch.cpu` plus what verl calls on a device module that `torch.cpu` lacks."""

    def __init__(self) -> None:
        super().__init__("torch_cpu_for_verl")
        self.__dict__.update(
            empty_cache=_nothing,
            ipc_collect=_nothing,
            reset_peak_memory_stats=_nothing,
            set_per_process_memory_fraction=_nothing,
            memory_allocated=_zero,
            memory_reserved=_zero,
            max_memory_allocated=_zero,
            max_memory_reserved=_zero,
            mem_get_info=_mem_get_info,
            get_rng_state=lambda *_a, **_k: torch.get_rng_state(),
            set_rng_state=lambda state, *_a, **_k: torch.set_rng_state(state),
            manual_seed=lambda seed: torch.manual_seed(seed),
            manual_seed_all=lambda seed: torch.manual_seed(seed),
            is_available=lambda: True,
            device_count=lambda: 1,
            current_device=_zero,
            set_device=_nothing,
            get_device_name=lambda *_a: "cpu",
            memory=SimpleNamespace(_set_allocator_settings=_nothing),
        )

    def __getattr__(self, name: str) -> Any:  # synchronize, Stream, current_stream, Event, ...
        return getattr(torch.cpu, name)


DEVICE_MODULE = CpuDeviceModule()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):  # type: ignore[misc]
    """Selected only by VERL_PLATFORM=cpu: never auto-detected, so a GPU host never gets it."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # auto-detection must never pick it; VERL_PLATFORM=cpu does

    def current_device(self) -> Any:
        # verl uses the id only as a device: `.to(get_device_id())`, `device=get_device_id()`
        # (the FSDP engine's weight export, DataProto moves); 0 would mean cuda:0
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for its (logical) GPU resource

    @contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
