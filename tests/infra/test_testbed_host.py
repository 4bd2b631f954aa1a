"""`make testbed` leaves the host alone: run its install step in a clean Debian 12 container.

Before and after `dpkg-query` must agree on every package that was there (python3, dpkg, libc6
above all); the new packages may come from trixie only for Docker's own (docker.io, compose,
buildx, containerd), every other dependency from bookworm. Then a package planted from trixie
is named by the drift report that `make testbed` prints on such a host.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "local/python:3.12-bookworm"  # Debian 12 (debootstrap) + CPython 3.12 in /usr/local

SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3 >/dev/null  # Debian's own 3.11
snapshot() {
  dpkg-query -W -f '${db:Status-Abbrev}${Package} ${Version}\n' | awk '/^ii/{print $2, $3}'
}
snapshot > /tmp/before
/usr/local/bin/python3.12 /testbed/testbed.py --packages-only
snapshot > /tmp/after
echo @before; cat /tmp/before; echo @after; cat /tmp/after; echo @end
apt-get install -y -qq --no-install-recommends hostname/trixie >/dev/null
/usr/local/bin/python3.12 /testbed/testbed.py --packages-only
"""


def _sections(out: str) -> tuple[dict[str, str], dict[str, str], str]:
    before_text, _, rest = out.partition("@before\n")[2].partition("@after\n")
    after_text, _, tail = rest.partition("@end\n")

    def parse(text: str) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)

    return parse(before_text), parse(after_text), tail


@pytest.mark.docker
@pytest.mark.slow
def test_engine_install_changes_nothing_but_docker() -> None:
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        pytest.fail(f"{IMAGE} is missing (fix: make testbed)")
    result = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{ROOT / 'tests' / 'testbed'}:/testbed:ro", IMAGE,
         "bash", "-c", SCRIPT],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    before, after, tail = _sections(result.stdout)
    assert {"python3", "dpkg", "libc6"} <= before.keys()
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    assert changed == {}, f"the install step changed host packages: {changed}"
    added = set(after) - set(before)
    assert {"docker.io", "docker-compose", "docker-buildx", "containerd"} <= added
    install_log = result.stdout.partition("@after\n")[0]
    assert "host packages: only Docker's came from trixie" in install_log
    # the drift report names a package someone else took from trixie, with the way back
    assert "WARNING: 1 package(s) on this host came from trixie: hostname" in tail
    assert "apt-get install --allow-downgrades" in tail
