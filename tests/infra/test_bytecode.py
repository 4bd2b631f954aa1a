"""Both Python images carry their bytecode: a process of the runtime user compiles nothing.

The runtime user cannot write to /opt/venv, so a module without a build-time .pyc is compiled
from source by every process that imports it (torch, ray, transformers and verl together took
40 s of CPU per process). The build writes unchecked-hash .pyc (PEP 552), which also keeps two
builds identical (docs/images.md).
"""

from __future__ import annotations

import json

import pytest

from tests.infra.conftest import run

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# every module imported from /opt/venv has a .pyc made by the build, and it is hash-based
PROBE = """
import importlib.util, json, sys
import {imports}
missing, timestamped, checked = [], [], 0
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if not path.startswith("/opt/venv/") or not path.endswith(".py"):
        continue
    try:
        header = open(importlib.util.cache_from_source(path), "rb").read(8)
    except OSError:
        missing.append(name)
        continue
    checked += 1
    if int.from_bytes(header[4:8], "little") != 1:  # flags 1: hash-based, unchecked
        timestamped.append(name)
print(json.dumps({{"checked": checked, "missing": missing, "timestamped": timestamped}}))
"""


@pytest.mark.parametrize(
    ("target", "imports"),
    [
        ("trainer", "torch, transformers, ray, verl.trainer.main_ppo, harbor"),
        ("proxy", "litellm.proxy.proxy_server"),
    ],
)
def test_every_imported_module_has_build_time_bytecode(
    images: dict[str, str], target: str, imports: str
) -> None:
    probe = PROBE.format(imports=imports)
    out = run(images[target], "-c", probe, entrypoint="/opt/venv/bin/python")
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["checked"] > 500, found  # the probe really walked the heavy imports
    assert not found["missing"], f"{target}: no build-time .pyc for {found['missing'][:20]}"
    assert not found["timestamped"], f"{target}: timestamp .pyc for {found['timestamped'][:20]}"
