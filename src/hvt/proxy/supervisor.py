"""Run LiteLLM for the bundle: wait for its config, start it, restart it when the config changes.

`hvt proxy` (the proxy container's entrypoint) waits with progress until the config written by
`hvt litellm-config` exists and lists at least one model, then starts
`litellm --config <file> --port 8002 --num_workers N` (N: hvt.proxy.workers) as a child in its
own process group. It polls the file; when the content changes (and still parses) it stops
LiteLLM (SIGTERM to the group, SIGKILL after a grace period, so spawned workers go too) and
starts it again. A LiteLLM that exits by
itself is restarted with backoff; five crashes in a row end the supervisor with an error.

The master key comes from LITELLM_MASTER_KEY or the file named by LITELLM_MASTER_KEY_FILE
(compose secrets); without one the proxy refuses to start. It reaches LiteLLM only through its
environment, never argv or the config file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hvt.proxy import master_key
from hvt.proxy.master_key import MASTER_KEY_ENV, MASTER_KEY_FILE_ENV
from hvt.trajectory import credentials
from hvt.trajectory import paths as trajectory_paths

STOP_GRACE_S = 10.0
MAX_CRASHES = 5
# With 2+ workers uvicorn pings each one every 0.5 s and kills (and respawns) one that has not
# answered within this time. Its default, 5 s, is shorter than a spawned worker's start on a busy
# host (the ping is answered only once the worker's code has been imported): the workers were
# killed and respawned forever and LiteLLM never served. A hung worker is found later instead.
WORKER_HEALTHCHECK_S = 120


class ProxyError(RuntimeError):
    """The proxy cannot start; the message names the culprit and the fix."""


def signing_key_or_none(env: Mapping[str, str]) -> str | None:
    """The trial-credential secret; None when none is configured, an error when one is
    configured but unusable (unreadable file, too short)."""
    if not (env.get(credentials.SIGNING_KEY_ENV) or env.get(credentials.SIGNING_KEY_FILE_ENV)):
        return None
    try:
        return credentials.signing_key(env).decode()
    except credentials.SigningKeyError as exc:
        raise ProxyError(str(exc)) from None


def resolve_master_key(env: Mapping[str, str]) -> str:
    try:
        return master_key.resolve(env)
    except master_key.MasterKeyError as exc:
        raise ProxyError(str(exc)) from None


def check_config(path: Path, served_model_name: str | None = None) -> tuple[str, int]:
    """(sha256 of the content, number of deployments); ProxyError if unusable.

    With `served_model_name`, a file that does not serve that name (left over from a run with
    another model) is unusable too.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProxyError(f"{path}: {exc.strerror}") from None
    try:
        parsed = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ProxyError(f"{path}: not valid YAML: {exc}") from None
    models = parsed.get("model_list") if isinstance(parsed, dict) else None
    if not isinstance(models, list) or not models:
        raise ProxyError(f"{path}: model_list is missing or empty (run `hvt litellm-config`)")
    if served_model_name is not None:
        names = {m.get("model_name") for m in models if isinstance(m, dict)}
        if served_model_name not in names:
            raise ProxyError(
                f"{path} serves {sorted(map(str, names))} but model.served_model_name is "
                f"{served_model_name!r}: a file from another run? `hvt litellm-config` rewrites it"
            )
    return hashlib.sha256(data).hexdigest(), len(models)


def check_no_shadowing(config: Path) -> None:
    """LiteLLM loads `a.b.c` callbacks from files beside the config first: refuse a shadow."""
    shadow = config.parent / "hvt"
    if shadow.exists():
        raise ProxyError(
            f"{shadow} exists beside the LiteLLM config and would shadow the installed hvt "
            "callbacks; remove it"
        )


def wait_for_config(
    path: Path,
    timeout_s: float,
    poll_s: float,
    say: Callable[[str], None],
    stop: threading.Event,
    progress_every_s: float = 30.0,
    served_model_name: str | None = None,
) -> tuple[str, int]:
    start = time.monotonic()
    last_note = -progress_every_s
    last_error = ""
    while not stop.is_set():
        if path.exists():
            try:
                return check_config(path, served_model_name)
            except ProxyError as exc:
                last_error = str(exc)
        elapsed = time.monotonic() - start
        if timeout_s and elapsed >= timeout_s:
            raise ProxyError(
                f"no usable LiteLLM config at {path} after {elapsed:.0f} s"
                + (f" ({last_error})" if last_error else "")
                + "; is `hvt litellm-config` running in the trainer and writing to the shared "
                "volume?"
            )
        if elapsed - last_note >= progress_every_s:
            state = last_error or "not there yet"
            say(f"waiting for the LiteLLM config {path}: {state} ({elapsed:.0f} s)")
            last_note = elapsed
        stop.wait(poll_s)
    raise ProxyError("stopped while waiting for the LiteLLM config")


def litellm_executable() -> str:
    beside = Path(sys.executable).parent / "litellm"
    if beside.exists():
        return str(beside)
    found = shutil.which("litellm")
    if not found:
        raise ProxyError("the `litellm` command is not installed in this environment")
    return found


@dataclass
class ProxyOptions:
    config: Path
    host: str = "0.0.0.0"
    port: int = 8002
    trials_root: Path | None = None
    wait_timeout_s: float = 0.0
    poll_s: float = 1.0
    workers: int = 1
    served_model_name: str | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    extra_args: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        options: ProxyOptions,
        env: Mapping[str, str] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.options = options
        self.say = say
        self.stop_event = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._rejected = ""
        base = dict(os.environ if env is None else env)
        key = resolve_master_key(base)
        root = options.trials_root or (
            Path(base[trajectory_paths.ROOT_ENV]) if base.get(trajectory_paths.ROOT_ENV) else None
        )
        if root is None:
            raise ProxyError(
                f"no trials root: set {trajectory_paths.ROOT_ENV} or --trials-root to the "
                "directory holding <step>/<trial>/ (the shared trials volume)"
            )
        if not root.is_dir():
            raise ProxyError(f"trials root {root} is not a directory (mount the trials volume)")
        for name in (options.ssl_certfile, options.ssl_keyfile):
            if name is not None and not name.is_file():
                raise ProxyError(f"TLS file {name} does not exist")
        if (options.ssl_certfile is None) != (options.ssl_keyfile is None):
            raise ProxyError("give both --ssl-certfile and --ssl-keyfile, or neither")
        base.pop(MASTER_KEY_FILE_ENV, None)
        signing = signing_key_or_none(base)
        base.pop(credentials.SIGNING_KEY_FILE_ENV, None)
        if signing is None:
            say(
                "hvt proxy: no signing secret for trial credentials "
                f"({credentials.SIGNING_KEY_FILE_ENV}): only the master key is admitted, every "
                "sandbox's call will be refused (make secrets creates secrets/proxy_signing_key)"
            )
        else:
            base[credentials.SIGNING_KEY_ENV] = signing
        base.update(
            {
                MASTER_KEY_ENV: key,
                trajectory_paths.ROOT_ENV: str(root),
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no cost-map fetch from GitHub
                "LITELLM_MODE": "PRODUCTION",  # no .env loading
                "DISABLE_ADMIN_UI": "True",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env = base

    # --- child process --------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [
            litellm_executable(),
            "--config",
            str(self.options.config),
            "--host",
            self.options.host,
            "--port",
            str(self.options.port),
            "--num_workers",
            str(self.options.workers),
        ]
        if self.options.workers > 1:
            cmd += ["--timeout_worker_healthcheck", str(WORKER_HEALTHCHECK_S)]
        if self.options.ssl_certfile and self.options.ssl_keyfile:
            cmd += [
                "--ssl_certfile_path",
                str(self.options.ssl_certfile),
                "--ssl_keyfile_path",
                str(self.options.ssl_keyfile),
            ]
        return cmd + self.options.extra_args

    def start_child(self) -> None:
        self.child = subprocess.Popen(self.command(), env=self.env, start_new_session=True)
        self.say(
            f"started LiteLLM (pid {self.child.pid}) on {self.options.host}:{self.options.port}"
        )

    def stop_child(self) -> None:
        child = self.child
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.say(f"LiteLLM (pid {child.pid}) ignored SIGTERM for {STOP_GRACE_S:.0f} s")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # spawned workers left in the group
        child.wait()
        self.child = None

    def wait_ready(self, timeout_s: float = 120.0) -> bool:
        scheme = "https" if self.options.ssl_certfile else "http"
        host = "127.0.0.1" if self.options.host in ("0.0.0.0", "::", "") else self.options.host
        url = f"{scheme}://{host}:{self.options.port}/health/liveliness"
        start = time.monotonic()
        while not self.stop_event.is_set() and time.monotonic() - start < timeout_s:
            if self.child is None or self.child.poll() is not None:
                return False
            try:
                import ssl

                ctx = ssl._create_unverified_context() if scheme == "https" else None
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            self.stop_event.wait(0.5)
        return False

    # --- main loop --------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def run(self) -> int:
        opts = self.options
        check_no_shadowing(opts.config)
        digest, count = wait_for_config(
            opts.config,
            opts.wait_timeout_s,
            max(opts.poll_s, 1.0),
            self.say,
            self.stop_event,
            served_model_name=opts.served_model_name,
        )
        crashes: list[float] = []
        self.say(f"LiteLLM config {opts.config}: {count} deployments")
        self.start_child()
        ready_reported = False
        try:
            while not self.stop_event.is_set():
                if not ready_reported and self.wait_ready():
                    self.say(f"LiteLLM ready: http(s)://{opts.host}:{opts.port}/health/readiness")
                    ready_reported = True
                self.stop_event.wait(opts.poll_s)
                if self.stop_event.is_set():
                    break
                assert self.child is not None
                code = self.child.poll()
                if code is not None:
                    now = time.monotonic()
                    crashes = [t for t in crashes if now - t < 300] + [now]
                    if len(crashes) >= MAX_CRASHES:
                        self.say(f"LiteLLM exited {len(crashes)} times in 5 min (last code {code})")
                        return 1
                    delay = min(30.0, 2.0 ** len(crashes))
                    self.say(f"LiteLLM exited with code {code}; restarting in {delay:.0f} s")
                    self.child = None
                    if self.stop_event.wait(delay):
                        break
                    self.start_child()
                    ready_reported = False
                    continue
                new = self._changed_config(digest)
                if new is not None:
                    digest, count = new
                    self.say(f"LiteLLM config changed ({count} deployments): restarting LiteLLM")
                    self.stop_child()
                    self.start_child()
                    self.restarts += 1
                    ready_reported = False
        finally:
            self.stop_child()
        return 0

    def _changed_config(self, digest: str) -> tuple[str, int] | None:
        try:
            content = self.options.config.read_bytes()
        except OSError:
            return None  # mid-rename or briefly gone: keep the running proxy
        current = hashlib.sha256(content).hexdigest()
        if current in (digest, self._rejected):
            return None
        try:
            return check_config(self.options.config, self.options.served_model_name)
        except ProxyError as exc:
            self._rejected = current
            self.say(f"ignoring the changed config: {exc}; LiteLLM keeps the previous one")
            return None
