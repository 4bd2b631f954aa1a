"""A planted stale Debian pin fails the image build with the one-line message.

The build context holds just what the debs-cli-tools stage reads (the Dockerfile, the lock,
the fetcher); the lock pins a docker-cli version the archive never served. The stage runs
without cache against the real Debian mirror, as CI's cold fetch does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.prerequisites import STAND_IN, require_images

ROOT = Path(__file__).resolve().parents[2]
CA = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.docker
def test_stale_pin_fails_the_build_with_one_line(tmp_path: Path) -> None:
    require_images(STAND_IN)
    ctx = tmp_path / "ctx"
    for rel in ("Dockerfile", "src/hvt/images/debian_fetch.py", "entrypoint/with-build-ca.sh"):
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, ctx / rel)
    lock = (ROOT / "locks" / "debian.lock").read_text()
    pinned = re.search(r'name = "docker-cli"\nversion = "([^"]+)"', lock)
    assert pinned is not None
    stale = "26.1.5+dfsg1-9+deb13u0"  # never published: a pin the archive no longer serves
    planted = lock.replace(f'version = "{pinned.group(1)}"', f'version = "{stale}"').replace(
        f"docker-cli_{pinned.group(1)}_amd64.deb", f"docker-cli_{stale}_amd64.deb"
    )
    (ctx / "locks").mkdir()
    (ctx / "locks" / "debian.lock").write_text(planted)
    cmd = ["docker", "buildx", "build", "--progress=plain", "--target", "debs-cli-tools",
           "--no-cache-filter", "debs-cli-tools", "--build-arg", f"BASE_IMAGE={STAND_IN}",
           "--output", "type=cacheonly"]  # fmt: skip
    if CA.is_file():
        cmd += ["--secret", f"id=build_ca,src={CA}"]
    result = subprocess.run([*cmd, str(ctx)], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, "the build passed with a stale pin"
    lines = [line for line in result.stderr.splitlines() if "debian pin stale: docker-cli" in line]
    assert lines, result.stderr[-3000:]
    assert f"docker-cli {stale} (trixie) is no longer served" in lines[0]
    assert f"the mirror now serves {pinned.group(1)} (trixie)" in lines[0]
    assert "Fix: make lock" in lines[0]
