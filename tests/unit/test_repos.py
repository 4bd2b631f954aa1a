"""hvt repos: pinned trees from git or from a PyPI release, idempotent, never overwritten.

A real HTTP index on 127.0.0.1 stands in for PyPI and a real git repository (file://) for the
upstream; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from hvt.cli import app
from hvt.repos.fetch import MARKER, tree_manifest
from hvt.repos.spec import ReposConfigError, load_spec
from hvt.repos.trees import Source, State, sync_repos

PATCH = """\
--- a/demo/core.py
+++ b/demo/core.py
@@ -1 +1,2 @@
 VALUE = 1
+PATCHED = True
"""


def _sdist(version: str) -> bytes:
    buf = io.BytesIO()
    files = {
        f"demo-{version}/pyproject.toml": f'[project]\nname = "demo"\nversion = "{version}"\n',
        f"demo-{version}/demo/__init__.py": "",
        f"demo-{version}/demo/core.py": "VALUE = 1\n",
    }
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wheel() -> bytes:
    buf = io.BytesIO()
    meta = (
        "Metadata-Version: 2.4\nName: wheelonly\nVersion: 2.0.0\nSummary: only a wheel\n"
        "Requires-Python: >=3.12\nRequires-Dist: packaging>=20\nProvides-Extra: k8s\n"
        'Requires-Dist: kubernetes>=30; extra == "k8s"\n'
    )
    with zipfile.ZipFile(buf, "w") as whl:
        whl.writestr("wheelonly/__init__.py", "NAME = 'wheelonly'\n")
        whl.writestr("wheelonly/cli.py", "def main() -> None:\n    print('hi')\n")
        whl.writestr("wheelonly-2.0.0.dist-info/METADATA", meta)
        whl.writestr(
            "wheelonly-2.0.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        whl.writestr(
            "wheelonly-2.0.0.dist-info/entry_points.txt",
            "[console_scripts]\nwheelonly = wheelonly.cli:main\n",
        )
        whl.writestr("wheelonly-2.0.0.dist-info/RECORD", "")
    return buf.getvalue()


class _Index(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        if self.path.startswith("/simple/"):
            project = self.path.split("/")[2]
            listing = [
                {"filename": n, "url": f"http://{self.headers['Host']}/files/{n}"}
                for n in self.files
                if n.startswith(project)
            ]
            body = json.dumps({"files": listing}).encode()
        elif self.path.startswith("/files/") and self.path[7:] in self.files:
            body = self.files[self.path[7:]]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def index() -> Iterator[str]:
    _Index.files = {
        "demo-1.0.tar.gz": _sdist("1.0"),
        "demo-1.1.tar.gz": _sdist("1.1"),
        "wheelonly-2.0.0-py3-none-any.whl": _wheel(),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()


def _sha(name: str) -> str:
    return hashlib.sha256(_Index.files[name]).hexdigest()


def _write_spec(bundle: Path, index: str, **overrides: object) -> Path:
    demo: dict[str, object] = {
        "git": {"url": "file:///nonexistent/demo.git", "ref": "v1.0"},
        "pypi": {
            "name": "demo",
            "version": "1.0",
            "kind": "sdist",
            "filename": "demo-1.0.tar.gz",
            "sha256": _sha("demo-1.0.tar.gz"),
            "index_url": index,
        },
        "patches": [],
    }
    demo.update(overrides)
    path = bundle / "config" / "repos.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"repos": {"demo": demo}}))
    return path


def _sync(bundle: Path, config: Path, source: Source = Source.AUTO) -> list[State]:
    reports = sync_repos(config, bundle / "repos", bundle, source, lambda _m: None)
    return [r.state for r in reports]


def test_pypi_fallback_builds_then_is_a_no_op(tmp_path: Path, index: str) -> None:
    config = _write_spec(tmp_path, index)
    assert _sync(tmp_path, config) == [State.BUILT]
    tree = tmp_path / "repos" / "demo"
    assert (tree / "demo" / "core.py").read_text() == "VALUE = 1\n"
    marker = json.loads((tree / MARKER).read_text())
    assert marker["source"] == "pypi"
    assert marker["files"] == tree_manifest(tree)
    before = (tree / MARKER).stat().st_mtime_ns
    assert _sync(tmp_path, config) == [State.UP_TO_DATE]
    assert (tree / MARKER).stat().st_mtime_ns == before


def test_dirty_tree_is_reported_and_kept(tmp_path: Path, index: str) -> None:
    config = _write_spec(tmp_path, index)
    _sync(tmp_path, config)
    core = tmp_path / "repos" / "demo" / "demo" / "core.py"
    core.write_text("VALUE = 2  # my edit\n")
    reports = sync_repos(config, tmp_path / "repos", tmp_path, Source.AUTO, lambda _m: None)
    assert reports[0].state is State.DIRTY
    assert reports[0].changed == ["demo/core.py"]
    assert "patch under patches/demo/" in reports[0].fix
    assert core.read_text() == "VALUE = 2  # my edit\n"
    result = CliRunner().invoke(
        app, ["repos", "--config", str(config), "--root", str(tmp_path / "repos"), "--strict"]
    )
    assert result.exit_code == 1


def test_drifted_pin_is_an_error_and_the_tree_stays(tmp_path: Path, index: str) -> None:
    _sync(tmp_path, _write_spec(tmp_path, index))
    newer = _write_spec(
        tmp_path,
        index,
        pypi={
            "name": "demo",
            "version": "1.1",
            "kind": "sdist",
            "filename": "demo-1.1.tar.gz",
            "sha256": _sha("demo-1.1.tar.gz"),
            "index_url": index,
        },
    )
    reports = sync_repos(newer, tmp_path / "repos", tmp_path, Source.AUTO, lambda _m: None)
    assert reports[0].state is State.DRIFTED
    assert "mv repos/demo repos/demo.old" in reports[0].fix
    assert 'version = "1.0"' in (tmp_path / "repos/demo/pyproject.toml").read_text()
    result = CliRunner().invoke(
        app, ["repos", "--config", str(newer), "--root", str(tmp_path / "repos")]
    )
    assert result.exit_code == 1


def test_unmanaged_directory_is_not_touched(tmp_path: Path, index: str) -> None:
    config = _write_spec(tmp_path, index)
    (tmp_path / "repos" / "demo").mkdir(parents=True)
    (tmp_path / "repos" / "demo" / "mine.txt").write_text("keep")
    assert _sync(tmp_path, config) == [State.UNMANAGED]
    assert (tmp_path / "repos" / "demo" / "mine.txt").read_text() == "keep"


def test_wrong_sha256_fails_and_leaves_nothing(tmp_path: Path, index: str) -> None:
    pypi = {
        "name": "demo",
        "version": "1.0",
        "kind": "sdist",
        "filename": "demo-1.0.tar.gz",
        "sha256": "0" * 64,
        "index_url": index,
    }
    config = _write_spec(tmp_path, index, pypi=pypi)
    reports = sync_repos(config, tmp_path / "repos", tmp_path, Source.AUTO, lambda _m: None)
    assert reports[0].state is State.FAILED
    assert "sha256" in reports[0].detail
    assert list((tmp_path / "repos").iterdir()) == []


def test_patches_are_applied_and_a_bad_patch_fails_cleanly(tmp_path: Path, index: str) -> None:
    (tmp_path / "patches" / "demo").mkdir(parents=True)
    (tmp_path / "patches/demo/0001-flag.patch").write_text(PATCH)
    config = _write_spec(tmp_path, index, patches=["patches/demo/0001-flag.patch"])
    assert _sync(tmp_path, config) == [State.BUILT]
    assert "PATCHED = True" in (tmp_path / "repos/demo/demo/core.py").read_text()
    # editing the patch file afterwards is drift: the tree no longer matches the config
    (tmp_path / "patches/demo/0001-flag.patch").write_text(PATCH.replace("True", "False"))
    assert _sync(tmp_path, config) == [State.DRIFTED]

    other = tmp_path / "other"
    (other / "patches" / "demo").mkdir(parents=True)
    (other / "patches/demo/bad.patch").write_text(PATCH.replace("VALUE = 1", "NOPE = 0"))
    bad = _write_spec(other, index, patches=["patches/demo/bad.patch"])
    reports = sync_repos(bad, other / "repos", other, Source.AUTO, lambda _m: None)
    assert reports[0].state is State.FAILED
    assert "does not apply" in reports[0].detail
    assert list((other / "repos").iterdir()) == []


def test_git_source_checks_out_the_pinned_commit(tmp_path: Path, index: str) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=upstream,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (upstream / "demo").mkdir()
    (upstream / "demo" / "core.py").write_text("VALUE = 1\n")
    git("add", ".")
    git("commit", "-qm", "one")
    git("tag", "v1.0")
    commit = git("rev-parse", "HEAD")
    (upstream / "demo" / "core.py").write_text("VALUE = 99\n")
    git("commit", "-qam", "later")
    git("config", "uploadpack.allowReachableSHA1InWant", "true")

    bundle = tmp_path / "bundle"
    url = f"file://{upstream}"
    config = _write_spec(bundle, index, git={"url": url, "ref": "v1.0", "commit": commit})
    assert _sync(bundle, config) == [State.BUILT]
    tree = bundle / "repos" / "demo"
    assert (tree / "demo" / "core.py").read_text() == "VALUE = 1\n"
    marker = json.loads((tree / MARKER).read_text())
    assert (marker["source"], marker["commit"]) == ("git", commit)
    assert _sync(bundle, config) == [State.UP_TO_DATE]
    # the .git directory is not part of the tree's identity; a file edit is
    (tree / "demo" / "core.py").write_text("VALUE = 5\n")
    assert _sync(bundle, config) == [State.DIRTY]


def test_wheel_only_release_becomes_an_installable_source_tree(tmp_path: Path, index: str) -> None:
    pypi = {
        "name": "wheelonly",
        "version": "2.0.0",
        "kind": "wheel",
        "filename": "wheelonly-2.0.0-py3-none-any.whl",
        "sha256": _sha("wheelonly-2.0.0-py3-none-any.whl"),
        "index_url": index,
    }
    config = _write_spec(tmp_path, index, pypi=pypi)
    assert _sync(tmp_path, config, Source.PYPI) == [State.BUILT]
    tree = tmp_path / "repos" / "demo"
    assert (tree / "src" / "wheelonly" / "cli.py").is_file()
    import tomllib

    project = tomllib.loads((tree / "pyproject.toml").read_text())
    assert project["project"]["name"] == "wheelonly"
    assert project["project"]["dependencies"] == ["packaging>=20"]
    assert project["project"]["optional-dependencies"]["k8s"] == ['kubernetes>=30; extra == "k8s"']
    assert project["project"]["scripts"] == {"wheelonly": "wheelonly.cli:main"}
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/wheelonly"]


@pytest.mark.slow
def test_unpacked_wheel_installs_editable(tmp_path: Path, index: str) -> None:
    """The generated pyproject really builds: an editable install imports from the tree."""
    test_wheel_only_release_becomes_an_installable_source_tree(tmp_path, index)
    tree = tmp_path / "repos" / "demo"
    uv = Path(__import__("sys").executable).with_name("uv")
    venv = tmp_path / "venv"
    subprocess.run(
        [str(uv), "venv", "-q", "--python", __import__("sys").executable, str(venv)], check=True
    )
    subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin/python"),
            "--no-deps",
            "-e",
            str(tree),
        ],
        check=True,
    )
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", "import wheelonly; print(wheelonly.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert out == str(tree / "src" / "wheelonly" / "__init__.py")


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "repos.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "repos": {
                    "verl": {
                        "git": {"url": "u", "ref": "v1", "commit": "abc"},
                        "pypi": {
                            "name": "verl",
                            "version": "1",
                            "kind": "egg",
                            "filename": "f",
                            "sha256": "x",
                        },
                        "colour": "red",
                    }
                }
            }
        )
    )
    with pytest.raises(ReposConfigError) as err:
        load_spec(path)
    text = str(err.value)
    for key in (
        "repos.verl.git.commit",
        "repos.verl.pypi.kind",
        "repos.verl.pypi.sha256",
        "repos.verl.colour",
    ):
        assert key in text


def test_bundled_pins_are_valid() -> None:
    spec = load_spec(Path(__file__).resolve().parents[2] / "config" / "repos.yaml")
    assert spec.repos["verl"].pypi.version == "0.9.1"
    assert spec.repos["harbor"].pypi.version == "0.25.0"
