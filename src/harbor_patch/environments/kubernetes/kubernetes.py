"""Harbor sandboxes as Kubernetes pods (the kubernetes python client; no kubectl, no cluster
build: tasks run their prebuilt image, task.toml `[environment].docker_image`).

Environment kwargs (TrialConfig.environment.kwargs): namespace, kubeconfig_path, context,
pod_startup_timeout_sec, active_deadline_seconds, agent_runtime_image,
agent_runtime_mount_path, agent_runtime_image_subpath, pod_name_prefix, host_path_mounts,
image_pull_secrets, service_account, node_selector, tolerations, memory_limit_factor,
proxy_url (else HVT_PROXY_URL; needed when a network policy is not public).

Network policies (Harbor's `no-network`, `allowlist` of the proxy's host, `public`, switched
per phase): the pod carries the label `hvt-egress=none|proxy|public`, and the NetworkPolicies
of the k8s_sandbox role (a default deny for sandbox pods, egress to the proxy's address and
port for `proxy`, everything for `public`) enforce it; a phase switch patches the label.

Commands run through the pod exec API (`bash -c`); files move as base64 tar streams, so no
tool beyond bash, tar and base64 is needed in the image. The pod spec is `pod_spec.build_pod`;
deletion on exit and on signals is `sandbox_reaper`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shlex
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, override

from harbor.environments.base import BaseEnvironment, ExecResult
from harbor.environments.capabilities import (
    EnvironmentCapabilities,
    EnvironmentResourceCapabilities,
)
from harbor.models.task.config import NetworkPolicy

from harbor_patch import labels as sandbox_labels
from harbor_patch.environments import pod_spec, sandbox_egress, sandbox_reaper
from harbor_patch.environments.agent_runtime import DEFAULT_IMAGE_SUBPATH, DEFAULT_MOUNT_PATH

STDIN_CHUNK = 1 << 20
BAD_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImageNeverPull",
}


class PodStartError(RuntimeError):
    pass


def api_client(kubeconfig_path: str | None = None, context: str | None = None) -> Any:
    """kwarg, else KUBECONFIG, else ~/.kube/config, else the in-cluster service account."""
    from kubernetes import client, config

    path = kubeconfig_path or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube/config")
    if Path(path).is_file():
        return config.new_client_from_config(config_file=path, context=context)  # type: ignore[no-untyped-call]
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    raise ValueError(
        f"no kubeconfig at {path} and not inside a cluster: set runtime_info.input.k8s.kubeconfig "
        "(or KUBECONFIG) to the sandbox namespace's kubeconfig (make provision writes one)"
    )


class KubernetesEnvironment(BaseEnvironment):  # type: ignore[misc]
    def __init__(
        self,
        *args: Any,
        namespace: str = "rl-sandboxes",
        kubeconfig_path: str | None = None,
        context: str | None = None,
        pod_startup_timeout_sec: float = 1200,
        active_deadline_seconds: int = 6000,
        agent_runtime_image: str | None = None,
        agent_runtime_mount_path: str = DEFAULT_MOUNT_PATH,
        agent_runtime_image_subpath: str = DEFAULT_IMAGE_SUBPATH,
        pod_name_prefix: str | None = None,
        host_path_mounts: Sequence[Mapping[str, Any]] | None = None,
        image_pull_secrets: Sequence[str] = (),
        service_account: str | None = None,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
        memory_limit_factor: float = 1.0,
        proxy_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.namespace = namespace
        url = (proxy_url or os.environ.get("HVT_PROXY_URL") or "").strip()
        try:
            self._proxy = sandbox_egress.ProxyEndpoint.from_url(url) if url else None
        except sandbox_egress.EgressConfigError as exc:
            raise ValueError(str(exc)) from None
        self._kubeconfig = kubeconfig_path
        self._context = context
        self._startup_timeout = pod_startup_timeout_sec
        self._deadline = active_deadline_seconds
        self._runtime_image = agent_runtime_image or None
        self._runtime_mount_path = agent_runtime_mount_path
        self._runtime_subpath = agent_runtime_image_subpath
        self._prefix = sandbox_labels.resolve_prefix(pod_name_prefix)
        self._host_paths = [pod_spec.HostPathMount.parse(m) for m in host_path_mounts or []]
        self._pull_secrets = tuple(image_pull_secrets)
        self._service_account = service_account
        self._node_selector = dict(node_selector or {})
        self._tolerations = list(tolerations)
        self._memory_factor = memory_limit_factor
        self._core: Any = None
        self.pod_name = ""
        kwargs.pop("auto_mounting", None)
        kwargs.pop("stream", None)
        super().__init__(*args, **kwargs)
        self.pod_name = pod_spec.pod_name(self._prefix, self.session_id)

    @staticmethod
    @override
    def type() -> str:
        return "kubernetes"

    @property
    @override
    def capabilities(self) -> EnvironmentCapabilities:
        return EnvironmentCapabilities(
            mounted=False, docker_compose=False, **sandbox_egress.EGRESS_CAPABILITIES
        )

    @override
    def validate_network_policy_support(self, network_policy: NetworkPolicy | None = None) -> None:
        super().validate_network_policy_support(network_policy)
        policy = network_policy or self.network_policy
        sandbox_egress.refuse_unenforceable(
            policy.network_mode.value, policy.allowed_hosts, self._proxy, type(self).__name__
        )

    @override
    async def _apply_network_policy(self, network_policy: NetworkPolicy) -> None:
        label = sandbox_egress.policy_label(network_policy.network_mode.value)
        patch = {"metadata": {"labels": {sandbox_egress.EGRESS_LABEL: label}}}
        core = await asyncio.to_thread(self._api)
        await asyncio.to_thread(
            core.patch_namespaced_pod, self.pod_name, self.namespace, patch, _request_timeout=30
        )
        self.logger.info("sandbox network: %s (pod label %s)", network_policy.network_mode, label)

    @classmethod
    @override
    def resource_capabilities(cls) -> EnvironmentResourceCapabilities:
        return EnvironmentResourceCapabilities(
            cpu_limit=True, memory_limit=True, fractional_cpus=True
        )

    @classmethod
    @override
    def preflight(cls) -> None:
        try:
            from kubernetes import client

            client.VersionApi(api_client()).get_code(_request_timeout=15)
        except Exception as exc:
            raise SystemExit(f"cannot reach the Kubernetes API: {exc}") from None

    @override
    def _validate_definition(self) -> None:
        if not self.task_env_config.docker_image:
            raise ValueError(
                f"task {self.environment_name}: the kubernetes backend runs prebuilt images; "
                "build and push the task image and set [environment].docker_image in its "
                "task.toml (or use a Docker backend, which builds environment/Dockerfile)"
            )

    # -- pod lifecycle ---------------------------------------------------------------------

    def settings(self) -> pod_spec.PodSettings:
        return pod_spec.PodSettings(
            name=self.pod_name,
            namespace=self.namespace,
            image=str(self.task_env_config.docker_image),
            labels={
                **sandbox_labels.sandbox_labels(self._prefix, self.session_id),
                sandbox_egress.EGRESS_LABEL: sandbox_egress.policy_label(
                    self.network_policy.network_mode.value
                ),
            },
            active_deadline_seconds=self._deadline,
            cpus=self._effective_cpus,
            memory_mb=self._effective_memory_mb,
            memory_limit_factor=self._memory_factor,
            env=self._startup_env(),
            workdir=self.task_env_config.workdir,
            runtime_image=self._runtime_image,
            runtime_mount_path=self._runtime_mount_path,
            runtime_image_subpath=self._runtime_subpath,
            host_path_mounts=self._host_paths,
            image_pull_secrets=self._pull_secrets,
            service_account=self._service_account,
            node_selector=self._node_selector,
            tolerations=self._tolerations,
        )

    def _api(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(api_client(self._kubeconfig, self._context))
        return self._core

    def _delete_now(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._api().delete_namespaced_pod(
                self.pod_name, self.namespace, grace_period_seconds=0, _request_timeout=30
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    @property
    def _reaper_key(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    @override
    async def start(self, force_build: bool) -> None:
        pod = pod_spec.build_pod(self.settings())
        core = await asyncio.to_thread(self._api)
        await asyncio.to_thread(
            core.create_namespaced_pod, self.namespace, pod, _request_timeout=60
        )
        sandbox_reaper.register(self._reaper_key, self._delete_now)
        await self._wait_running()
        await self.ensure_dirs(self._mount_targets(writable_only=True))
        await self._upload_environment_dir_after_start()

    async def _wait_running(self) -> None:
        started = time.monotonic()
        last_note = started
        while True:
            pod = await asyncio.to_thread(
                self._api().read_namespaced_pod, self.pod_name, self.namespace, _request_timeout=30
            )
            phase = pod.status.phase if pod.status else None
            statuses = (pod.status.container_statuses or []) if pod.status else []
            if phase == "Running" and statuses and all(s.ready for s in statuses):
                return
            for status in statuses:
                waiting = status.state.waiting if status.state else None
                if waiting and waiting.reason in BAD_WAITING:
                    raise PodStartError(
                        f"pod {self.namespace}/{self.pod_name}: {waiting.reason}: "
                        f"{waiting.message or ''} (image {self.task_env_config.docker_image})"
                    )
            if phase in ("Failed", "Succeeded"):
                raise PodStartError(f"pod {self.namespace}/{self.pod_name} ended: {phase}")
            now = time.monotonic()
            if now - started > self._startup_timeout:
                raise PodStartError(
                    f"pod {self.namespace}/{self.pod_name} not running after "
                    f"{self._startup_timeout:.0f}s (phase {phase}); see `kubectl describe pod`"
                )
            if now - last_note > 15:
                self.logger.info(
                    "waiting for pod %s (%s, %.0fs)", self.pod_name, phase, now - started
                )
                last_note = now
            await asyncio.sleep(1)

    @override
    async def stop(self, delete: bool) -> None:
        try:
            if delete and self.pod_name:
                await asyncio.to_thread(self._delete_now)
        finally:
            sandbox_reaper.unregister(self._reaper_key)

    # -- commands and files ----------------------------------------------------------------

    def _exec_blocking(
        self,
        argv: list[str],
        stdin: str | None,
        timeout_sec: float | None,
        cancelled: threading.Event,
    ) -> ExecResult:
        from kubernetes.stream import stream

        resp = stream(
            self._api().connect_get_namespaced_pod_exec,
            self.pod_name,
            self.namespace,
            container=pod_spec.MAIN,
            command=argv,
            stdin=stdin is not None,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
        )
        out: list[str] = []
        err: list[str] = []
        deadline = time.monotonic() + timeout_sec if timeout_sec else None
        try:
            for start in range(0, len(stdin or ""), STDIN_CHUNK):
                resp.write_stdin((stdin or "")[start : start + STDIN_CHUNK])
            while resp.is_open():
                resp.update(timeout=1)
                if resp.peek_stdout():
                    out.append(resp.read_stdout())
                if resp.peek_stderr():
                    err.append(resp.read_stderr())
                if cancelled.is_set():
                    raise RuntimeError("command cancelled")
                if deadline is not None and time.monotonic() > deadline:
                    raise RuntimeError(f"Command timed out after {timeout_sec} seconds")
            resp.update(timeout=0)  # what arrived with the close
            out.append(resp.read_stdout() if resp.peek_stdout() else "")
            err.append(resp.read_stderr() if resp.peek_stderr() else "")
            code = resp.returncode
        finally:
            resp.close()
        return ExecResult(
            stdout="".join(out) or None,
            stderr="".join(err) or None,
            return_code=int(code) if code is not None else 1,
        )

    async def _run_exec(
        self, argv: list[str], stdin: str | None = None, timeout_sec: float | None = None
    ) -> ExecResult:
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self._exec_blocking, argv, stdin, timeout_sec, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @staticmethod
    def command_argv(
        command: str,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | int | None = None,
    ) -> list[str]:
        script = "".join(f"export {k}={shlex.quote(str(v))}; " for k, v in (env or {}).items())
        if cwd:
            script += f"cd {shlex.quote(cwd)} && "
        script += command
        if user is None or str(user) in ("root", "0"):
            return ["bash", "-c", script]
        who = str(user)
        who = f"$(getent passwd {who} | cut -d: -f1)" if who.isdigit() else shlex.quote(who)
        return ["bash", "-c", f"exec su -s /bin/bash {who} -c {shlex.quote(script)}"]

    @override
    async def exec(
        self,
        command: str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_sec: int | None = None,
        user: str | int | None = None,
    ) -> ExecResult:
        argv = self.command_argv(
            command,
            cwd or self.task_env_config.workdir,
            self._merge_env(env),
            self._resolve_user(user),
        )
        return await self._run_exec(argv, timeout_sec=timeout_sec)

    async def _put_tar(self, payload: bytes, target_dir: str) -> None:
        data = base64.b64encode(payload).decode()
        script = (
            f"mkdir -p {shlex.quote(target_dir)} && head -c {len(data)} | base64 -d | "
            f"tar xf - -C {shlex.quote(target_dir)}"
        )
        result = await self._run_exec(["bash", "-c", script], stdin=data, timeout_sec=600)
        if result.return_code != 0:
            raise RuntimeError(f"upload into {target_dir} failed: {result.stderr or result.stdout}")

    async def _get_tar(self, directory: str, member: str = ".") -> tarfile.TarFile:
        script = f"tar cf - -C {shlex.quote(directory)} {shlex.quote(member)} | base64 -w0"
        result = await self._run_exec(["bash", "-c", script], timeout_sec=600)
        if result.return_code != 0:
            raise RuntimeError(f"download of {directory}/{member} failed: {result.stderr}")
        raw = base64.b64decode((result.stdout or "").strip())
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")

    @override
    async def upload_file(self, source_path: Path | str, target_path: str) -> None:
        buffer = io.BytesIO()
        target = Path(target_path)
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(source_path), arcname=target.name)
        await self._put_tar(buffer.getvalue(), str(target.parent))

    @override
    async def upload_dir(self, source_dir: Path | str, target_dir: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted(Path(source_dir).rglob("*")):
                tar.add(str(path), arcname=str(path.relative_to(source_dir)), recursive=False)
        await self._put_tar(buffer.getvalue(), target_dir)

    @override
    async def download_file(self, source_path: str, target_path: Path | str) -> None:
        source = Path(source_path)
        with await self._get_tar(str(source.parent), source.name) as tar:
            member = tar.getmember(source.name)
            handle = tar.extractfile(member)
            if handle is None:
                raise RuntimeError(f"{source_path} is not a regular file")
            Path(target_path).parent.mkdir(parents=True, exist_ok=True)
            Path(target_path).write_bytes(handle.read())

    @override
    async def download_dir(self, source_dir: str, target_dir: Path | str) -> None:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        with await self._get_tar(source_dir) as tar:
            tar.extractall(target_dir, filter="data")
