"""One deep merge for the two places that overlay mappings: config profiles (`extends:`,
hvt.config.load) and compose overlays of a sandbox (harbor_patch.environments.compose_overlay).
Nothing of ours is imported here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`overlay` merged into a copy of `base`: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
