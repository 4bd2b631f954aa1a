"""The labels a new sandbox gets (names and values: hvt.sandbox_labels), so `hvt clean --pods`,
`hvt launch`'s orphan reaping and operators can find it.

`harbor-run=<pod_name_prefix>` is the selector `hvt clean --pods` uses (it refuses an empty
prefix). The owner labels say which host and process made a sandbox.
"""

from __future__ import annotations

import os
import re

from hvt.sandbox_labels import (
    APP_LABEL,
    APP_VALUE,
    OWNER_HOST_LABEL,
    OWNER_PID_LABEL,
    RUN_LABEL,
    SESSION_LABEL,
    label_value,
    this_host,
)

__all__ = [
    "APP_LABEL",
    "APP_VALUE",
    "OWNER_HOST_LABEL",
    "OWNER_PID_LABEL",
    "RUN_LABEL",
    "SESSION_LABEL",
    "label_value",
    "resolve_prefix",
    "sandbox_labels",
]

PREFIX_ENV = ("HVT_POD_NAME_PREFIX", "HARBOR_POD_NAME_PREFIX")
DEFAULT_PREFIX = "harbor-sandbox"
_PREFIX_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def resolve_prefix(prefix: str | None) -> str:
    """The run prefix from the argument, else the environment; a DNS label, never empty."""
    value = prefix
    if not value:
        value = next((os.environ[k] for k in PREFIX_ENV if os.environ.get(k)), DEFAULT_PREFIX)
    if not _PREFIX_RE.match(value) or len(value) > 40:
        raise ValueError(
            f"pod_name_prefix {value!r} is not a DNS label of at most 40 characters "
            "(lowercase letters, digits, '-'); set runtime_info.input.harbor_agent.pod_name_prefix"
        )
    return value


def sandbox_labels(prefix: str, session_id: str | None = None) -> dict[str, str]:
    labels = {
        APP_LABEL: APP_VALUE,
        RUN_LABEL: prefix,
        OWNER_HOST_LABEL: this_host(),
        OWNER_PID_LABEL: str(os.getpid()),
    }
    if session_id:
        labels[SESSION_LABEL] = label_value(session_id)
    return labels
