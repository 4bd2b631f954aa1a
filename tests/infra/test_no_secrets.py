"""No secret and no machine-specific CA file in any layer or in the image config.

The build reaches PyPI/npm/Debian through this machine's CA bundle, passed as the BuildKit secret
`build_ca`. Every layer of every image (`docker save`) is scanned for that bundle and for the
certificates only this machine trusts; the image config and history must not mention them.

Each layer is read where the engine keeps it: on overlay2, its directory in the data root (the
layer store maps the layer's content hash, its `diff_id`, to that directory); elsewhere, or when
that is not readable, the layer's tar in `docker save`, whose hash is computed from the bytes
read. A layer's verdict is kept by that content hash, per scanner and per set of markers (this
file's text, this machine's bundle and extra certificates), under $HVT_LAYER_SCAN_CACHE (default
~/.cache/hvt/layer-scan): identical content needs no second look, so a rebuilt image costs only
its new layers. A new machine has no verdicts and reads everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from tests.infra.conftest import STAND_IN, inspect

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
SECRET_WORDS = ("PRIVATE KEY", "build_ca", "/run/secrets", "ANTHROPIC_API_KEY=", "WANDB_API_KEY=")


def _machine_markers() -> tuple[str, set[bytes]]:
    """sha256 of the host bundle, and one distinctive line of each cert the base lacks."""
    if not HOST_CA.is_file():
        pytest.skip(f"{HOST_CA} does not exist on this machine: nothing machine-specific to find")
    host = HOST_CA.read_bytes()
    base = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "cat",
            STAND_IN,
            "/etc/ssl/certs/ca-certificates.crt",
        ],
        capture_output=True,
    ).stdout
    extra = set(_PEM.findall(host)) - set(_PEM.findall(base))
    # the 3rd base64 line of a cert is unique to it and long enough to never occur by chance
    markers = {pem.splitlines()[3] for pem in extra if len(pem.splitlines()) > 4}
    return hashlib.sha256(host).hexdigest(), markers


# A CA bundle or a PEM is a text file of at most a few MB: bigger files (torch's .so, vllm's
# kernels) are skipped unread, which keeps the scan of the 11 GB trainer to about a minute.
MAX_SCANNED = 8 << 20


def _check_file(name: str, read: Callable[[], bytes], size: int, bundle_sha: str,
                markers: set[bytes]) -> list[str]:  # fmt: skip
    found = []
    if "build_ca" in name or name.startswith("run/secrets"):
        found.append(f"{name}: a build secret path")
    if size == 0 or size > MAX_SCANNED:
        return found
    content = read()
    if hashlib.sha256(content).hexdigest() == bundle_sha:
        found.append(f"{name}: this machine's CA bundle")
    elif b"BEGIN CERTIFICATE" in content and any(m in content for m in markers):
        found.append(f"{name}: a certificate only this machine trusts")
    return found


def _scan_layer(stream: IO[bytes], bundle_sha: str, markers: set[bytes]) -> list[str]:
    found = []
    with tarfile.open(fileobj=stream, mode="r|*") as layer:
        for member in layer:
            if not member.isfile():
                found += _check_file(member.name, bytes, 0, bundle_sha, markers)
                continue
            data = layer.extractfile(member)
            if data is not None:
                found += _check_file(member.name, data.read, member.size, bundle_sha, markers)
    return found


def _scan_dir(root: Path, bundle_sha: str, markers: set[bytes]) -> list[str]:
    """A layer as overlay2 stores it: its files (whiteouts are device nodes, not read)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in [*filenames, *dirnames]:
            path = base / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            found += _check_file(rel, path.read_bytes, size, bundle_sha, markers)
    return found


def _layer_dirs(diff_ids: list[str]) -> dict[str, Path]:
    """diff_id -> the layer's directory, from overlay2's layer store; {} where the engine keeps
    layers otherwise (another driver, the containerd store) or the data root is not readable."""
    info = json.loads(
        subprocess.run(
            ["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, check=True
        ).stdout
    )
    root = Path(info.get("DockerRootDir") or "/var/lib/docker")
    layerdb = root / "image" / "overlay2" / "layerdb" / "sha256"
    if info.get("Driver") != "overlay2" or not os.access(layerdb, os.R_OK | os.X_OK):
        return {}
    dirs: dict[str, Path] = {}
    chain = ""
    for diff_id in diff_ids:
        # the OCI chain id: the first layer's diff_id, then sha256("<parent chain> <diff_id>")
        chain = (
            diff_id
            if not chain
            else "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        )
        meta = layerdb / chain.removeprefix("sha256:")
        try:
            if (meta / "diff").read_text().strip() != diff_id:
                return {}
            directory = root / "overlay2" / (meta / "cache-id").read_text().strip() / "diff"
        except OSError:
            return {}
        if not directory.is_dir():
            return {}
        dirs[diff_id] = directory
    return dirs


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.sha.hexdigest()


def _verdicts(bundle_sha: str, markers: set[bytes]) -> Path:
    key = hashlib.sha256(Path(__file__).read_bytes() + bundle_sha.encode())
    for marker in sorted(markers):
        key.update(marker)
    root = os.environ.get("HVT_LAYER_SCAN_CACHE") or Path.home() / ".cache" / "hvt" / "layer-scan"
    return Path(root) / key.hexdigest()[:24]


def _scan_image(
    image: str, bundle_sha: str, markers: set[bytes], use_save: bool = False
) -> tuple[list[str], int]:
    """Scan every layer of the image without a clean verdict: its directory (overlay2), else
    its tar in `docker save` streamed as it passes (no copy on disk). Returns the hits and
    the number of layers read."""
    diff_ids = inspect(image)["RootFS"]["Layers"]
    layers = set(diff_ids)
    verdicts = _verdicts(bundle_sha, markers)
    clean = {f"sha256:{p.name}" for p in verdicts.glob("*")} & layers

    def record(diff_id: str, hits: list[str]) -> None:
        if not hits and diff_id in layers:
            verdicts.mkdir(parents=True, exist_ok=True)
            (verdicts / diff_id.removeprefix("sha256:")).touch()

    if clean == layers:
        return [], 0
    dirs = {} if use_save else _layer_dirs(diff_ids)
    if dirs:
        found: list[str] = []
        for diff_id in sorted(layers - clean):
            hits = _scan_dir(dirs[diff_id], bundle_sha, markers)
            found += [f"{diff_id} {hit}" for hit in hits]
            record(diff_id, hits)
        return found, len(layers - clean)
    proc = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    found = []
    scanned = 0
    with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
        for member in outer:
            if not member.isfile():
                continue
            if member.name.startswith("blobs/sha256/") and (
                "sha256:" + member.name.rsplit("/", 1)[-1] in clean
            ):
                continue  # this content was scanned clean before (checked by its hash below)
            inner = outer.extractfile(member)
            if inner is None:
                continue
            if member.name.endswith((".tar", "/layer.tar")) or member.name.startswith("blobs/"):
                stream = _Hashing(inner)
                try:
                    hits = _scan_layer(stream, bundle_sha, markers)  # type: ignore[arg-type]
                except tarfile.ReadError:
                    continue  # a config or manifest blob, not a layer
                digest = stream.drain()
                scanned += digest in layers
                found += [f"{member.name} {hit}" for hit in hits]
                record(digest, hits)
    assert proc.wait() == 0
    return found, scanned


@pytest.mark.parametrize("target", ["agent-runtime", "proxy", "trainer"])
def test_no_machine_ca_or_secret_in_any_layer(images: dict[str, str], target: str) -> None:
    bundle_sha, markers = _machine_markers()
    found, _read = _scan_image(images[target], bundle_sha, markers)
    assert not found, "\n".join(found[:20])


def test_the_scan_finds_a_planted_bundle_in_a_new_layer(
    images: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan can fail: an image with this machine's bundle in a layer of its own is caught,
    also when every other layer has a clean verdict."""
    bundle_sha, markers = _machine_markers()
    monkeypatch.setenv("HVT_LAYER_SCAN_CACHE", str(tmp_path / "verdicts"))
    base = images["agent-runtime"]
    assert _scan_image(base, bundle_sha, markers)[0] == []  # verdicts for every base layer
    assert _scan_image(base, bundle_sha, markers)[1] == 0  # nothing read twice
    tag = f"hvt-test/planted-ca:{os.getpid()}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nCOPY bundle.pem /usr/share/doc/bundle.pem\n"
    )
    (tmp_path / "bundle.pem").write_bytes(HOST_CA.read_bytes())
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True,
                   capture_output=True)  # fmt: skip
    try:
        # both ways of reading a layer: its directory (overlay2, when readable) and docker save
        results = [_scan_image(tag, bundle_sha, markers, use_save=s) for s in (False, True)]
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
    for found, read in results:
        assert read == 1  # only the new layer was read
        assert any("usr/share/doc/bundle.pem: this machine's CA bundle" in h for h in found)


@pytest.mark.parametrize("target", ["agent-runtime", "proxy", "trainer"])
def test_image_config_and_history_carry_no_secret(images: dict[str, str], target: str) -> None:
    config = inspect(images[target])["Config"]
    text = "\n".join(config.get("Env") or []) + "\n" + str(config.get("Labels") or "")
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", images[target]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for word in SECRET_WORDS:
        assert word not in text, f"{word} in the image config of {target}"
    assert "PRIVATE KEY" not in history and "BEGIN CERTIFICATE" not in history
    assert "ca-certificates.crt" not in history, f"a COPY of a CA bundle in {target}'s history"
    for env in config.get("Env") or []:
        name, _, value = env.partition("=")
        if name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS"):
            pytest.fail(f"{target} sets {name}={value}: the build CA leaks into the runtime")
