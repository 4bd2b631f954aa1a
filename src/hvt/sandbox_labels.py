"""The labels every sandbox carries, and what they say: shared by the code that makes
sandboxes (harbor_patch.labels) and the code that finds and removes them (hvt clean, hvt
launch's orphan reaping). Nothing of ours is imported here.

`harbor-run=<pod_name_prefix>` selects a run's sandboxes; `harbor-owner-host` and
`harbor-owner-pid` name the process that made one, so a sandbox whose maker is gone on this
host is known to be an orphan. Values are valid as both Docker labels and Kubernetes label
values (<= 63 characters, alphanumeric at both ends).
"""

from __future__ import annotations

import re
import socket

RUN_LABEL = "harbor-run"
APP_LABEL = "app"
APP_VALUE = "harbor-sandbox"
OWNER_HOST_LABEL = "harbor-owner-host"
OWNER_PID_LABEL = "harbor-owner-pid"
SESSION_LABEL = "harbor-session"


def label_value(text: str, limit: int = 63) -> str:
    """`text` as a Kubernetes label value: [A-Za-z0-9._-], <= 63, alphanumeric ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:limit]
    return value.strip("-._") or "x"


def this_host() -> str:
    """This host as the `harbor-owner-host` label says it."""
    return label_value(socket.gethostname())
