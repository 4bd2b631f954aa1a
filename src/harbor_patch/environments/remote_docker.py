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
* Harbor's network policies (`no-network`, `allowlist` of the proxy's host, `public`) are
  enforced, and switched per phase, by our egress relay on an internal compose network
  (sandbox_egress.py, which also says why Harbor's own egress sidecar is not used). The
  relay runs from the agent-runtime image; claude-code reaches the proxy through it
  (`sandbox_proxy_url`). A sandbox whose policies are all `public` gets none of it;
* `main` is tagged by content (`hvt-env/<task>:<digest>`, env_image.py). When the daemon
  already has that image and `force_build` is false, the trial starts from it and builds
  nothing (`image_source` "warm"); otherwise it builds and tags it ("built") and keeps it
  when the sandbox is deleted (no `--rmi local` then), so later trials start from it. Tasks
  that name their own `docker_image` keep Harbor's path. `build_image()` does only the build
  (or pull): `hvt sandbox warm`.

Environment kwargs (TrialConfig.environment.kwargs): docker_host, docker_cert_path,
docker_tls_verify, allow_insecure, agent_runtime_image, agent_runtime_mount_path,
agent_runtime_image_subpath, pod_name_prefix, runtime_staging_timeout_sec, proxy_url (else
HVT_PROXY_URL; needed when a policy is not public), egress_relay_image (default: the agent
runtime image; it needs python3).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any, ClassVar, Literal, override

from harbor.environments.capabilities import EnvironmentCapabilities
from harbor.environments.docker.docker import DockerEnvironment
from harbor.environments.docker.runtime import ContainerRuntime
from harbor.models.task.config import EnvironmentConfig, NetworkMode, NetworkPolicy

from harbor_patch import labels as sandbox_labels
from harbor_patch.environments import (
    agent_runtime,
    compose_overlay,
    env_image,
    sandbox_egress,
)
from harbor_patch.environments.docker_daemon import DaemonConfigError, DockerDaemon
from hvt import deep_merge

OVERLAY_NAME = "docker-compose-hvt.json"
PROXY_URL_ENV = "HVT_PROXY_URL"
PULL_TIMEOUT_SEC = 1800.0  # a 1-3 GB SWE task image through a slow mirror
INSPECT_TIMEOUT_SEC = 60.0
ImageSource = Literal["warm", "built", "present", "pulled", "task"]


class EngineCommandFailed(RuntimeError):
    """A docker command that ran and exited non-zero (not one that timed out)."""


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
        proxy_url: str | None = None,
        egress_relay_image: str | None = None,
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
        # Egress control is on when any policy Harbor may ask for is not public. Set before
        # Harbor's __init__, which validates those policies against our capabilities.
        policies: list[NetworkPolicy] = [
            kwargs.get("network_policy") or NetworkPolicy(network_mode=NetworkMode.PUBLIC),
            *(kwargs.get("phase_network_policies") or ()),
        ]
        self._egress = any(p.network_mode != NetworkMode.PUBLIC for p in policies)
        self._relay_image = egress_relay_image or self._runtime_image
        self._proxy: sandbox_egress.ProxyEndpoint | None = None
        if self._egress:
            url = (proxy_url or os.environ.get(PROXY_URL_ENV) or "").strip()
            if not url:
                raise ValueError(
                    "a sandbox network policy other than public needs the proxy's URL: set "
                    f"{PROXY_URL_ENV} or the environment kwarg proxy_url, or set "
                    "runtime_info.input.harbor_agent.sandbox_network: public"
                )
            try:
                self._proxy = sandbox_egress.ProxyEndpoint.from_url(url)
            except sandbox_egress.EgressConfigError as exc:
                raise ValueError(str(exc)) from None
            if not self._relay_image:
                raise ValueError(
                    "egress control runs its relay from the agent-runtime image, and none is "
                    "set: set runtime_info.input.harbor_agent.runtime_image (or the environment "
                    "kwarg egress_relay_image: an image on the sandbox daemon with python3)"
                )
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

    @staticmethod
    @override
    def _requires_egress_control(**_: Any) -> bool:
        # Harbor's sidecar (gogost/gost from Docker Hub, an alpine kernel probe) is never
        # started: our relay enforces the policies (sandbox_egress.py says why).
        return False

    @property
    @override
    def capabilities(self) -> EnvironmentCapabilities:
        # No bind mounts of this machine's paths and no SSH stream (its port would be remote).
        return super().capabilities.model_copy(
            update={"mounted": False, "stream": False, **sandbox_egress.EGRESS_CAPABILITIES}
        )

    @override
    def validate_network_policy_support(self, network_policy: NetworkPolicy | None = None) -> None:
        super().validate_network_policy_support(network_policy)
        policy = network_policy or self.network_policy
        sandbox_egress.refuse_unenforceable(
            policy.network_mode.value, policy.allowed_hosts, self._proxy, type(self).__name__
        )

    @property
    def sandbox_proxy_url(self) -> str | None:
        """The proxy's URL as seen from inside this sandbox (the relay) when egress
        control is on; None when the sandbox reaches the proxy directly."""
        return sandbox_egress.relay_url() if self._egress else None

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
        """The image's size in bytes on this daemon, or None when it does not have it (a daemon
        that does not answer raises, from `_engine`)."""
        try:
            text = await self._engine(
                ["image", "inspect", "--format", "{{.Size}}", image], INSPECT_TIMEOUT_SEC
            )
        except EngineCommandFailed:
            return None
        return int(text.strip()) if text.strip().isdigit() else 0

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

    def _write_overlay(
        self, main_image: str | None, runtime_volume: str | None = None, egress: bool = False
    ) -> None:
        labels = sandbox_labels.sandbox_labels(self._run_prefix, self.session_id)
        spec = compose_overlay.overlay(
            labels,
            compose_overlay.service_names(self._user_compose_paths()),
            runtime_volume=runtime_volume,
            runtime_mount_path=self._runtime_mount_path,
            main_image=main_image,
        )
        if egress:
            spec = deep_merge.merge(spec, self._egress_overlay(labels))
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
        self._write_overlay(await self._choose_main_image(force_build), volume, self._egress)
        await super().start(force_build)
        if self._egress:
            await self._enforce(self.network_policy)

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
                await self._engine(["pull", image], timeout_sec=PULL_TIMEOUT_SEC)
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

    # -- egress control --------------------------------------------------------------------

    def _egress_overlay(self, labels: dict[str, str]) -> dict[str, Any]:
        assert self._proxy is not None and self._relay_image is not None
        own = sandbox_egress.services_with_own_networking(self._user_compose_paths())
        if own:
            raise ValueError(
                f"task services {', '.join(own)} choose their own networks, which would bypass "
                "the sandbox's egress control; remove `networks`/`network_mode` from the "
                "task's docker-compose.yaml, or set runtime_info.input.harbor_agent."
                "sandbox_network: public"
            )
        return sandbox_egress.overlay(
            labels,
            self._proxy,
            self._relay_image,
            sandbox_egress.egress_network_name(self.session_id),
        )

    @override
    async def _apply_network_policy(self, network_policy: NetworkPolicy) -> None:
        if not self._egress:
            if network_policy.network_mode == NetworkMode.PUBLIC:
                return
            raise ValueError(
                "this sandbox started without egress control (all its policies were public), "
                f"so it cannot switch to network_mode={network_policy.network_mode.value!r}"
            )
        await self._enforce(network_policy)

    async def _enforce(self, policy: NetworkPolicy) -> None:
        """Make the sandbox match `policy`: narrowing steps first, widening steps last."""
        mode = policy.network_mode
        outside = sandbox_egress.egress_network_name(self.session_id)
        services = compose_overlay.service_names(self._user_compose_paths())
        containers = await self._container_ids(services)
        if mode != NetworkMode.PUBLIC:
            for container in containers:
                if outside in await self._networks_of(container):
                    await self._engine(["network", "disconnect", "--force", outside, container])
        relay_action = "stop" if mode == NetworkMode.NO_NETWORK else "start"
        await self._run_docker_compose_command([relay_action, sandbox_egress.RELAY_SERVICE])
        if mode == NetworkMode.PUBLIC:
            for container in containers:
                if outside not in await self._networks_of(container):
                    await self._engine(["network", "connect", outside, container])
        self.logger.info("sandbox network: %s", mode.value)

    async def _container_ids(self, services: list[str]) -> list[str]:
        result = await self._run_docker_compose_command(["ps", "--all", "-q", *services])
        return [line.strip() for line in (result.stdout or "").splitlines() if line.strip()]

    async def _networks_of(self, container: str) -> set[str]:
        text = await self._engine(
            ["container", "inspect", "--format", "{{json .NetworkSettings.Networks}}", container]
        )
        networks = json.loads(text or "{}") or {}
        return set(networks)

    async def _engine(self, args: list[str], timeout_sec: float = 60.0) -> str:
        process = await asyncio.create_subprocess_exec(
            *self._engine_cmd(*args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout_sec)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"docker {' '.join(args[:3])} timed out after {timeout_sec}s"
            ) from None
        if process.returncode != 0:
            raise EngineCommandFailed(
                f"docker {' '.join(args[:3])} failed: {err.decode(errors='replace').strip()}"
            )
        return out.decode()

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
