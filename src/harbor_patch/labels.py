"""Labels every sandbox carries, so `hvt clean --pods` and operators can find them.

`harbor-run=<pod_name_prefix>` is the selector `hvt clean --pods` uses (it refuses an empty
prefix). The owner labels say which host and process made a sandbox. Values are valid as
both Docker labels and Kubernetes label values (<= 63 characters, alphanumeric at both ends).
"""

from __future__ import annotations

import os
import re
import socket

RUN_LABEL = "harbor-run"
APP_LABEL = "app"
APP_VALUE = "harbor-sandbox"
OWNER_HOST_LABEL = "harbor-owner-host"
OWNER_PID_LABEL = "harbor-owner-pid"
SESSION_LABEL = "harbor-session"
PREFIX_ENV = ("HVT_POD_NAME_PREFIX", "HARBOR_POD_NAME_PREFIX")
DEFAULT_PREFIX = "harbor-sandbox"
_PREFIX_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def label_value(text: str, limit: int = 63) -> str:
    """`text` as a Kubernetes label value: [A-Za-z0-9._-], <= 63, alphanumeric ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:limit]
    return value.strip("-._") or "x"


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
        OWNER_HOST_LABEL: label_value(socket.gethostname()),
        OWNER_PID_LABEL: str(os.getpid()),
    }
    if session_id:
        labels[SESSION_LABEL] = label_value(session_id)
    return labels
