"""A secret from the environment: the value itself (VAR) or a file holding it (VAR_FILE, e.g.
a compose secret under /run/secrets). One reader for the LiteLLM master key and the proxy
signing secret; each caller names its variables, its error type and its remedies."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def read_secret(
    env: Mapping[str, str],
    var: str,
    file_var: str,
    *,
    error: type[ValueError],
    mount_hint: str,
    missing: str,
    min_length: int,
    what: str,
) -> str:
    """The secret, stripped. Raises `error` naming the variable or file to fix: an unreadable
    or empty file (`mount_hint` says what to mount), both set and different, neither set
    (`missing`), or shorter than `min_length`."""
    direct = env.get(var, "").strip()
    file_name = env.get(file_var, "")
    from_file = ""
    if file_name:
        try:
            from_file = Path(file_name).read_text().strip()
        except OSError as exc:
            raise error(
                f"{file_var}={file_name} cannot be read: {exc.strerror} ({mount_hint})"
            ) from None
        if not from_file:
            raise error(f"{file_var}={file_name} is empty (write the {what} into it)")
    if direct and from_file and direct != from_file:
        raise error(f"{var} and {file_var} are both set and differ; set only one")
    key = direct or from_file
    if not key:
        raise error(missing)
    if len(key) < min_length:
        raise error(f"the {what} is {len(key)} characters long; use at least {min_length}")
    return key
