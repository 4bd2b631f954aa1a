"""CPU mode for verl 0.9.1's real trainer: `main_ppo` without a GPU.

Loaded only when CPU mode is asked for: `hvt launch --cpu` sets, for the trainer and every Ray
worker, `VERL_USE_EXTERNAL_MODULES=verl_patch.cpu.enable` (verl imports it in every process
it starts, `verl/__init__.py` 49-76) and `VERL_PLATFORM=cpu`
(`plugin/platform/platform_manager.py` ~111). On a host where CUDA is usable `enable` refuses:
CPU mode never runs on a GPU host.

`enable.py` registers the `cpu` platform (`platform.py`) and applies the patches in
`patches.py`, each checked against verl's code first; the patches register the CPU rollout
replica `hvt_cpu` (`replica.py`, serving with `server.py`). The Hydra overrides that go with
it are `hvt.run.verl_command.CPU_OVERRIDES`, the environment `hvt.run.verl_command.CPU_ENV`.
"""

from __future__ import annotations

ROLLOUT_NAME = "hvt_cpu"  # actor_rollout_ref.rollout.name in CPU mode
