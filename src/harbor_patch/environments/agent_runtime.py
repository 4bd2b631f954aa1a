"""Stage the agent runtime (Node.js + claude-code) once per Docker daemon, atomically.

The agent-runtime image carries a self-contained tree (default
/opt/custom-agent-runtime/claude-code). Task containers get it as a read-only named volume,
so the sandbox never installs anything and needs no internet for the agent.

Per daemon and per image content (the image ID), the volume `hvt-agent-runtime-<id12>` is
filled once:

1. the image is found on the daemon, else pulled, else streamed there from this machine's
   daemon (`docker save | docker load` without a temporary file);
2. a stager container named `<volume>-stager` copies the tree into the volume. The container
   name is the lock: the daemon refuses a second container of that name (409), so concurrent
   trials, worker processes or trainer hosts never stage twice; losers wait for the winner;
3. only after a clean copy is the marker volume `<volume>-ready` created, and only then is
   the stager (the lock) removed. Readers look for the marker (one API call), never for a
   half-filled volume. A stager left behind by a crashed process (exited or never started
   for a minute, no marker) is removed and the staging redone.

A new image (new ID) gets a new volume; old ones stay until removed by the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harbor_patch.environments.docker_daemon import DockerDaemon, local_daemon

DEFAULT_MOUNT_PATH = "/opt/custom-agent-runtime/claude-code"
DEFAULT_IMAGE_SUBPATH = "opt/custom-agent-runtime/claude-code"
VOLUME_PREFIX = "hvt-agent-runtime-"
READY_SUFFIX = "-ready"
STAGER_SUFFIX = "-stager"
MARKER_LABEL = "hvt.agent-runtime"
STAGE_DIR = "/hvt-stage"
STALE_SEC = 60.0  # a stager exited (or never started) this long ago lost its owner

log = logging.getLogger(__name__)


class RuntimeStagingError(RuntimeError):
    """The runtime could not be staged; the message names the image, the daemon and a fix."""


@dataclass(frozen=True)
class StagedRuntime:
    volume: str
    image: str
    image_id: str
    staged_here: bool  # this call did the copy (False: it was already there)


def volume_name(image_id: str) -> str:
    digest = image_id.split(":", 1)[-1]
    return f"{VOLUME_PREFIX}{digest[:12]}"


def stage_script(source: str) -> str:
    """Shell run in the stager: empty the volume, copy the tree with tar, check it."""
    src = "/" + source.strip("/")
    return (
        "set -eu; "
        f'test -d "{src}" || '
        f'{{ echo "agent runtime tree {src} is not in the image" >&2; exit 3; }}; '
        f"find {STAGE_DIR} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +; "
        f'tar -C "{src}" -cf - . | tar -C {STAGE_DIR} -xpf -; '
        f"test -e {STAGE_DIR}/bin/claude || echo 'warning: no bin/claude in the runtime tree' >&2; "
        f"du -sk {STAGE_DIR} | cut -f1"
    )


_cache: dict[tuple[DockerDaemon, str], StagedRuntime] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple[DockerDaemon, str], threading.Lock] = {}


def ensure_runtime_volume(
    daemon: DockerDaemon,
    image: str,
    image_subpath: str = DEFAULT_IMAGE_SUBPATH,
    *,
    timeout_sec: float = 900.0,
    poll_sec: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> StagedRuntime:
    """The staged runtime volume for `image` on `daemon` (blocking; cached per process)."""
    key = (daemon, image)  # the credentials are part of the key: other certs, other answer
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:  # one stager per process per daemon+image; other trials here wait
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        staged = _Stager(daemon, image, image_subpath, timeout_sec, poll_sec, progress).run()
        with _cache_lock:
            _cache[key] = staged
        return staged


def forget_cached() -> None:
    """Drop the per-process cache (tests; or after an operator removed the volumes)."""
    with _cache_lock:
        _cache.clear()


class _Stager:
    def __init__(
        self,
        daemon: DockerDaemon,
        image: str,
        image_subpath: str,
        timeout_sec: float,
        poll_sec: float,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.daemon = daemon
        self.image = image
        self.subpath = image_subpath
        self.deadline = time.monotonic() + timeout_sec
        self.timeout_sec = timeout_sec
        self.poll_sec = poll_sec
        self.say = progress or log.info

    def run(self) -> StagedRuntime:
        import docker.errors

        self.client: Any = None
        try:
            self.client = self.daemon.client()
            image_id = self._image_id()
            volume = volume_name(image_id)
            labels = {MARKER_LABEL: "1", f"{MARKER_LABEL}.image": self.image[:200]}
            ready = volume + READY_SUFFIX
            staged_here = False
            last_note = 0.0
            while not self._exists_volume(ready):
                if time.monotonic() > self.deadline:
                    raise RuntimeStagingError(
                        f"staging {self.image} into {volume} on {self.daemon.display} did not "
                        f"finish within {self.timeout_sec:.0f}s; look at the container "
                        f"{volume}{STAGER_SUFFIX} there (docker logs), remove it, and retry"
                    )
                outcome = self._try_stage(image_id, volume, ready, labels)
                if outcome is not None:
                    staged_here = outcome
                    break
                now = time.monotonic()
                if now - last_note > 10:
                    self.say(f"waiting for another process staging {volume} on {self.daemon.host}")
                    last_note = now
                time.sleep(self.poll_sec)
            return StagedRuntime(volume, self.image, image_id, staged_here)
        except docker.errors.DockerException as exc:
            raise RuntimeStagingError(
                f"staging the agent runtime {self.image} on {self.daemon.display} failed: "
                f"{exc}{_tls_hint(str(exc))}"
            ) from exc
        finally:
            if self.client is not None:
                self.client.close()

    # -- image ---------------------------------------------------------------------------

    def _image_id(self) -> str:
        import docker.errors

        try:
            return str(self.client.images.get(self.image).id)
        except docker.errors.ImageNotFound:
            pass
        try:
            self.say(f"pulling {self.image} on {self.daemon.host}")
            return str(self.client.images.pull(self.image).id)
        except docker.errors.DockerException as pull_error:
            pulled = pull_error
        source = local_daemon()
        if source is None or source.host == self.daemon.host:
            raise RuntimeStagingError(
                f"agent runtime image {self.image} is not on {self.daemon.display} and cannot "
                f"be pulled there ({pulled}); build it (make image) and load it there "
                f"(docker save {self.image} | docker --host {self.daemon.host} ... load)"
            )
        return self._transfer(source)

    def _transfer(self, source: DockerDaemon) -> str:
        import docker.errors

        local = source.client(timeout=600)
        try:
            try:
                local.images.get(self.image)
            except docker.errors.ImageNotFound:
                raise RuntimeStagingError(
                    f"agent runtime image {self.image} is neither on {self.daemon.display}, nor "
                    "pullable there, nor on this machine; build it with `make image` "
                    "(or set harbor_agent.runtime_image to an image the daemon can pull)"
                ) from None
            self.say(f"copying {self.image} from this machine to {self.daemon.host}")
            started = time.monotonic()
            stream = local.api.get_image(self.image, chunk_size=1 << 20)
            self.client.api.load_image(_Progress(stream, self.say))
            image_id = str(self.client.images.get(self.image).id)
            self.say(f"{self.image} copied in {time.monotonic() - started:.1f}s")
            return image_id
        finally:
            local.close()

    # -- staging -------------------------------------------------------------------------

    def _exists_volume(self, name: str) -> bool:
        import docker.errors

        try:
            self.client.volumes.get(name)
            return True
        except docker.errors.NotFound:
            return False

    def _try_stage(
        self, image_id: str, volume: str, ready: str, labels: dict[str, str]
    ) -> bool | None:
        """Holding the stager name, stage the volume and create the marker, in that order.

        True: this call staged it. False: it turned out ready once the lock was ours.
        None: someone else holds the lock (a stager of that name exists): wait and retry.
        The marker is created before the stager is removed, so nobody can take the lock
        between a finished copy and its marker and copy again under a reader's feet."""
        import docker.errors

        name = volume + STAGER_SUFFIX
        try:
            container = self.client.containers.create(
                image_id,
                entrypoint=["/bin/sh", "-c", stage_script(self.subpath)],
                command=[],
                name=name,
                user="0",
                network_disabled=True,
                labels=labels,
                volumes={volume: {"bind": STAGE_DIR, "mode": "rw"}},
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                self._reap_stale(name, ready)
                return None
            raise
        try:
            if self._exists_volume(ready):  # finished while we were getting the lock
                return False
            self.say(f"staging {self.image} into volume {volume} on {self.daemon.host}")
            started = time.monotonic()
            container.start()
            remaining = max(30.0, self.deadline - time.monotonic())
            result: dict[str, Any] = container.wait(timeout=remaining)
            output = container.logs(stdout=True, stderr=True).decode(errors="replace").strip()
            if int(result.get("StatusCode", 1)) != 0:
                raise RuntimeStagingError(
                    f"staging {self.image} into {volume} on {self.daemon.host} failed "
                    f"(exit {result.get('StatusCode')}): {output[-2000:]}"
                )
            self.client.volumes.create(ready, labels=labels)
            size_kb = output.splitlines()[-1] if output else "?"
            self.say(f"staged {volume} ({size_kb} KiB) in {time.monotonic() - started:.1f}s")
            return True
        finally:
            _remove_quietly(container)

    def _reap_stale(self, name: str, ready: str) -> None:
        """Remove a stager whose owner died: exited (or never started) long ago, no marker."""
        import docker.errors

        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        state = container.attrs.get("State", {})
        status = state.get("Status")
        if status in ("exited", "dead"):
            age = _age_sec(str(state.get("FinishedAt", "")))
        elif status == "created":
            age = _age_sec(str(container.attrs.get("Created", "")))
        else:
            return  # running: its owner is copying
        if age > STALE_SEC and not self._exists_volume(ready):
            self.say(f"removing stale stager {name} ({status} {age:.0f}s) on {self.daemon.host}")
            _remove_quietly(container)


def _tls_hint(message: str) -> str:
    low = message.lower()
    if "unknown ca" in low or "certificate required" in low or "bad certificate" in low:
        return (
            " (the daemon rejected this client's certificate: docker_cert_path must hold a "
            "cert.pem/key.pem issued by the daemon's CA; re-issue them with make provision)"
        )
    if "certificate verify failed" in low:
        return (
            " (the daemon's certificate is not signed by docker_cert_path/ca.pem, or lacks this "
            "host name; fetch the matching ca.pem or re-issue the server certificate)"
        )
    if "connection refused" in low or "timed out" in low:
        return " (is the daemon up and port 2376 reachable from the trainer?)"
    return ""


def _remove_quietly(container: Any) -> None:
    """Remove; a container already gone, or being removed by someone else, is fine."""
    import docker.errors

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise


def _age_sec(created_iso: str) -> float:
    from datetime import UTC, datetime

    try:
        text = created_iso.rstrip("Z")
        if "." in text:  # Docker prints nanoseconds; datetime takes microseconds
            head, frac = text.split(".", 1)
            text = f"{head}.{frac[:6]}"
        created = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - created).total_seconds()


class _Progress:
    """Iterate image tar chunks, reporting every 100 MiB (a 1 GB image takes a while)."""

    def __init__(self, chunks: Any, say: Callable[[str], None]) -> None:
        self.chunks = chunks
        self.say = say
        self.total = 0
        self.next_note = 100 << 20

    def __iter__(self) -> Any:
        for chunk in self.chunks:
            self.total += len(chunk)
            if self.total >= self.next_note:
                self.say(f"  ... {self.total >> 20} MiB sent")
                self.next_note += 100 << 20
            yield chunk
