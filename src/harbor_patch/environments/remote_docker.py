"""Harbor sandboxes on a remote Docker daemon (tcp:// with mutual TLS), or any daemon whose
disk is not this machine's.

`harbor_patch.environments.remote_docker:RemoteDockerEnvironment` is Harbor's DockerEnvironment
(the docker CLI and docker compose, run as subprocesses) with four changes:

* every docker / docker compose command carries `--host/--tlsverify/--tlscacert/...` for the
  daemon from the kwargs `docker_host`, `docker_cert_path` (else DOCKER_HOST, DOCKER_TLS_VERIFY,
  DOCKER_CERT_PATH); plain tcp is refused unless `allow_insecure=True` (test networks only);
* nothing is bind-mounted from this machine: the environment reports `mounted=False`, so Harbor
  copies the agent and verifier logs back with `docker compose cp` after each phase;
* the agent runtime image is staged once per daemon into a named volume (agent_runtime.py) and
  mounted read-only into `main` at `agent_runtime_mount_path`;
* every container and the project network carry `harbor-run=<pod_name_prefix>` and owner
  labels (compose_overlay.py). CPU and memory limits are Harbor's (`override_cpus`,
  `override_memory_mb`, else the task's), applied as compose `cpus` / `mem_limit`;
* `main` is tagged by content (`hvt-env/<task>:<digest>`, env_image.py). When the daemon
  already has that image and `force_build` is false, the trial starts from it and builds
  nothing (`image_source` "warm"); otherwise it builds and tags it ("built") and keeps it
  when the sandbox is deleted (no `--rmi local` then), so later trials start from it. Tasks
  that name their own `docker_image` keep Harbor's path. `build_image()` does only the build
  (or pull): `hvt sandbox warm`.

Environment kwargs (TrialConfig.environment.kwargs): docker_host, docker_cert_path,
docker_tls_verify, allow_insecure, agent_runtime_image, agent_runtime_mount_path,
agent_runtime_image_subpath, pod_name_prefix, runtime_staging_timeout_sec.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any, ClassVar, Literal, override

from harbor.environments.capabilities import EnvironmentCapabilities
from harbor.environments.docker.docker import DockerEnvironment
from harbor.environments.docker.runtime import ContainerRuntime
from harbor.models.task.config import EnvironmentConfig

from harbor_patch import labels as sandbox_labels
from harbor_patch.environments import agent_runtime, compose_overlay, env_image
from harbor_patch.environments.docker_daemon import DaemonConfigError, DockerDaemon

OVERLAY_NAME = "docker-compose-hvt.json"
ImageSource = Literal["warm", "built", "present", "pulled", "task"]


class RemoteDockerEnvironment(DockerEnvironment):  # type: ignore[misc]
    task_env_config: EnvironmentConfig  # Harbor's attribute, replaced by a copy for a warm start
    _daemon: ClassVar[DockerDaemon | None] = None
    _bound: ClassVar[dict[tuple[type, DockerDaemon], type]] = {}
    # Harbor serializes the builds of one environment with class-level asyncio locks. Here they
    # are per daemon (each bound subclass has its own map: a fleet builds on its hosts side by
    # side) and per event loop (an asyncio lock belongs to the loop it first waited in).
    _build_locks: ClassVar[
        weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]]
    ] = weakref.WeakKeyDictionary()

    def __init__(
        self,
        *args: Any,
        docker_host: str | None = None,
        docker_cert_path: str | None = None,
        docker_tls_verify: bool | None = None,
        allow_insecure: bool = False,
        agent_runtime_image: str | None = None,
        agent_runtime_mount_path: str = agent_runtime.DEFAULT_MOUNT_PATH,
        agent_runtime_image_subpath: str = agent_runtime.DEFAULT_IMAGE_SUBPATH,
        pod_name_prefix: str | None = None,
        runtime_staging_timeout_sec: float = 900.0,
        **kwargs: Any,
    ) -> None:
        try:
            daemon = DockerDaemon.resolve(
                docker_host, docker_cert_path, docker_tls_verify, allow_insecure
            )
        except DaemonConfigError as exc:
            raise ValueError(str(exc)) from None
        # The docker CLI flags live on the class (Harbor calls the engine through classmethods),
        # so each daemon gets its own subclass; isinstance checks and names are unchanged.
        self.__class__ = type(self)._for_daemon(daemon)
        self._runtime_image = agent_runtime_image or None
        self._runtime_mount_path = agent_runtime_mount_path
        self._runtime_subpath = agent_runtime_image_subpath
        self._staging_timeout = runtime_staging_timeout_sec
        self._run_prefix = sandbox_labels.resolve_prefix(pod_name_prefix)
        self._overlay_dir: tempfile.TemporaryDirectory[str] | None = None
        self._overlay_path: Path | None = None
        self.staged_runtime: agent_runtime.StagedRuntime | None = None
        self.main_image: str | None = None  # the image `main` ran (start) or got (build_image)
        self.image_source: ImageSource | None = None
        kwargs.pop("auto_mounting", None)  # nothing here can be bind-mounted from this host
        super().__init__(*args, **kwargs)

    @classmethod
    def _for_daemon(cls, daemon: DockerDaemon) -> type:
        if cls._daemon is not None:  # already bound
            return cls
        key = (cls, daemon)
        if key not in cls._bound:
            flags = daemon.cli_flags()
            runtime = ContainerRuntime(
                engine=("docker", *flags), compose=("docker", *flags, "compose")
            )

            def _runtime(_cls: type) -> ContainerRuntime:
                return runtime

            cls._bound[key] = type(
                cls.__name__,
                (cls,),
                {
                    "_daemon": daemon,
                    "_build_locks": weakref.WeakKeyDictionary(),
                    "runtime": classmethod(_runtime),
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                },
            )
        return cls._bound[key]

    @property
    def _image_build_locks(self) -> dict[str, asyncio.Lock]:
        return type(self)._build_locks.setdefault(asyncio.get_running_loop(), {})

    @property
    def daemon(self) -> DockerDaemon:
        assert self._daemon is not None
        return self._daemon

    @classmethod
    @override
    def preflight(cls) -> None:
        if not shutil.which("docker"):
            raise SystemExit("the docker CLI is not on PATH (the trainer image ships it)")
        try:
            daemon = cls._daemon or DockerDaemon.resolve()
        except DaemonConfigError as exc:
            raise SystemExit(str(exc)) from None
        result = subprocess.run(
            ["docker", *daemon.cli_flags(), "compose", "version"],
            capture_output=True,
            timeout=20,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit("docker compose v2 is missing (install the compose CLI plugin)")
        result = subprocess.run(
            ["docker", *daemon.cli_flags(), "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(
                f"cannot reach the Docker daemon {daemon.display}: "
                f"{result.stderr.decode(errors='replace').strip()[:500]}"
            )

    @property
    @override
    def capabilities(self) -> EnvironmentCapabilities:
        # No bind mounts of this machine's paths and no SSH stream (its port would be remote).
        return super().capabilities.model_copy(update={"mounted": False, "stream": False})

    @property
    @override
    def _docker_compose_paths(self) -> list[Path]:
        paths: list[Path] = super()._docker_compose_paths
        if self._overlay_path is not None:
            paths.append(self._overlay_path)
        return paths

    @property
    def content_image_tag(self) -> str:
        """`hvt-env/<task>:<digest>` of this environment and the run's extra compose files."""
        return env_image.image_tag(
            self.environment_name, self.environment_id, self.extra_docker_compose_paths
        )

    async def _image_size(self, image: str) -> int | None:
        return await env_image.image_size(type(self).runtime().engine, image)

    async def _choose_main_image(self, force_build: bool) -> str | None:
        """The content tag for `main`, switched to Harbor's prebuilt path when the daemon has it
        and no build is forced. None for a task that names its own image."""
        if self.task_env_config.docker_image:
            self.main_image, self.image_source = self.task_env_config.docker_image, "task"
            return None
        tag = self.content_image_tag
        self.main_image, self.image_source = tag, "built"
        self._env_vars.main_image_name = tag  # Harbor checks the built image's OS by this name
        if force_build:
            return tag
        try:
            size = await self._image_size(tag)
        except RuntimeError as exc:  # a slow daemon: build as before, which also tags it
            self.logger.warning(f"{exc}; building {tag}")
            size = None
        if size is not None:
            # Harbor's prebuilt path (`image:` instead of `build:`); a copy, so the task's
            # environment config is not changed for anything else that holds it
            self.task_env_config = self.task_env_config.model_copy(update={"docker_image": tag})
            self._env_vars.prebuilt_image_name = tag
            self.image_source = "warm"
            self.logger.info(f"starting from the warmed image {tag} (no build)")
        return tag

    def _write_overlay(self, main_image: str | None, runtime_volume: str | None = None) -> None:
        spec = compose_overlay.overlay(
            sandbox_labels.sandbox_labels(self._run_prefix, self.session_id),
            compose_overlay.service_names(self._user_compose_paths()),
            runtime_volume=runtime_volume,
            runtime_mount_path=self._runtime_mount_path,
            main_image=main_image,
        )
        self._overlay_dir = tempfile.TemporaryDirectory(prefix="hvt-compose-")
        self._overlay_path = compose_overlay.write(
            Path(self._overlay_dir.name) / OVERLAY_NAME, spec
        )

    def _remove_overlay(self) -> None:
        if self._overlay_dir is not None:
            self._overlay_dir.cleanup()
            self._overlay_dir = None
            self._overlay_path = None

    @override
    async def start(self, force_build: bool) -> None:
        volume = None
        if self._runtime_image:
            self.staged_runtime = await asyncio.to_thread(
                agent_runtime.ensure_runtime_volume,
                self.daemon,
                self._runtime_image,
                self._runtime_subpath,
                timeout_sec=self._staging_timeout,
                progress=self.logger.info,
            )
            volume = self.staged_runtime.volume
        self._write_overlay(await self._choose_main_image(force_build), volume)
        await super().start(force_build)

    async def build_image(self, rebuild: bool = False) -> int:
        """Only the image(s) a trial of this task would build or pull, on this daemon; starts
        nothing. Sets `main_image` and `image_source` ("present": already there, "built",
        "pulled"); returns the size of `main`'s image in bytes. `rebuild` builds even when the
        tag is there (BuildKit's cache still applies)."""
        if self.task_env_config.docker_image:  # the task's own image: pull it if missing
            image = self.task_env_config.docker_image
            self.main_image, self.image_source = image, "present"
            size = await self._image_size(image)
            if size is None:
                await self._run_engine(["pull", image], f"pull {image}")
                self.image_source = "pulled"
                size = await self._image_size(image)
            if size is None:
                raise RuntimeError(f"{image} is not on {self.daemon.display} after the pull")
            return size
        tag = self.content_image_tag
        self.main_image, self.image_source = tag, "present"
        size = None if rebuild else await self._image_size(tag)
        if size is not None:
            return size
        # the compose files Harbor's start() writes before its build, then only the build
        self._mounts_compose_path = self._write_mounts_compose_file()
        self._env_compose_path = self._write_env_compose_file()
        self._write_egress_control_services_compose_file()
        self._write_overlay(tag)
        try:
            if self._enable_egress_control:
                await self._ensure_egress_control_sidecar_image_built()
            self._resources_compose_path = await self._write_resources_compose_file()
            lock = self._image_build_locks.setdefault(self.environment_name, asyncio.Lock())
            async with lock:
                await self._run_docker_compose_command(["build"])
        finally:
            self._cleanup_mounts_compose_file()
            self._cleanup_resources_compose_file()
            self._cleanup_env_compose_file()
            self._cleanup_egress_control_services_compose_file()
            self._remove_overlay()
        self.image_source = "built"
        size = await self._image_size(tag)
        if size is None:
            raise RuntimeError(f"the build of {self.environment_name} did not tag {tag}")
        return size

    async def _run_engine(self, args: list[str], what: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *type(self).runtime().engine, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(
                f"docker {what} on {self.daemon.display} failed: "
                f"{output.decode(errors='replace').strip()[-1500:]}"
            )

    @override
    async def _run_docker_compose_command(
        self, command: list[str], *args: Any, **kwargs: Any
    ) -> Any:
        # Harbor ends a deleted sandbox with `down --rmi local`, and compose counts an image it
        # built as local even with an `image:` name: the content-tagged image would go with the
        # sandbox, and the next trial of the task would build it again.
        if command[:1] == ["down"] and "--rmi" in command and self.image_source == "built":
            at = command.index("--rmi")
            command = command[:at] + command[at + 2 :]
        return await super()._run_docker_compose_command(command, *args, **kwargs)

    @override
    async def stop(self, delete: bool) -> None:
        try:
            await super().stop(delete)
        finally:
            self._remove_overlay()
