#!/usr/bin/env python3
"""Build benchmark for the images (docs/images.md has the figures it produced).

Reports, for the commit at HEAD (its `git archive` plus repos/ as the build context):
  1. cold build time of each target: --no-cache and fresh uv/npm cache mounts (all downloads);
  2. rebuild time of the trainer after one file in src/ changed, and that no dependency layer
     was rebuilt (the steps that install the locks must be CACHED);
  3. the size of each image;
  4. reproducibility: a second --no-cache build of the same commit; the trainer's and the
     proxy's /opt/venv file manifests (paths and sha256) must be identical.
Afterwards it removes its images (hvt-bench/*) and the build cache records it created.

Usage: python3 scripts/bench_build.py [--base-image IMG] [--keep] [--json FILE]
Needs about 35 GB free disk while it runs (two trainer images and a fresh uv cache; 25 GB
with --warm-downloads).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("agent-runtime", "proxy", "trainer")
DEP_STEPS = ("uv pip sync", "npm ci", "apt-get download")
CA = Path("/etc/ssl/certs/ca-certificates.crt")
MANIFEST = r"""
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for d, dirs, files in os.walk(root):
    dirs.sort()
    for f in sorted(files):
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)
        if os.path.islink(p):
            out[rel] = "-> " + os.readlink(p)
        else:
            with open(p, "rb") as fh:
                out[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
print(json.dumps(out))
"""


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def make_context(dest: Path, commit: str) -> None:
    """The commit's tree (git archive) plus the pinned source trees in repos/."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, check=True, capture_output=True
    ).stdout
    tar_path = dest.parent / "head.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="tar")
    tar_path.unlink()
    for name in ("verl", "harbor"):
        src = ROOT / "repos" / name
        if not src.is_dir():
            raise SystemExit(f"repos/{name} is missing: run `make repos` first")
        shutil.copytree(
            src, dest / "repos" / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )


def build(ctx: Path, target: str, tag: str, args: list[str], log: Path) -> tuple[float, str]:
    cmd = [
        "docker",
        "buildx",
        "build",
        "--progress=plain",
        "--target",
        target,
        "-t",
        tag,
        "--load",
        *args,
        str(ctx),
    ]
    if CA.is_file():
        cmd[3:3] = ["--secret", f"id=build_ca,src={CA}"]
    say(f"build {tag} ({' '.join(a for a in args if a.startswith('--no-cache'))})")
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        assert p.stdout is not None
        last = 0.0
        for line in p.stdout:
            lines.append(line)
            if re.match(r"^#\d+ \[", line):
                now = time.monotonic()
                if now - last > 5:
                    print(f"    {now - started:6.0f} s  {line.strip()[:110]}", flush=True)
                    last = now
        code = p.wait()
    elapsed = time.monotonic() - started
    log.write_text("".join(lines))
    if code != 0:
        raise SystemExit(f"build of {tag} failed; log: {log}\n" + "".join(lines[-30:]))
    say(f"  {tag}: {elapsed:.0f} s")
    return elapsed, "".join(lines)


def rebuilt_dependency_steps(output: str) -> list[str]:
    """Dependency steps that ran instead of coming from the cache."""
    steps: dict[str, str] = {}
    state: dict[str, str] = {}
    for line in output.splitlines():
        m = re.match(r"^#(\d+) \[([^\]]+)\] (.*)$", line)
        if m:
            steps[m.group(1)] = f"[{m.group(2)}] {m.group(3)}"
            continue
        m = re.match(r"^#(\d+) (CACHED|DONE)", line)
        if m and m.group(1) in steps:
            state.setdefault(m.group(1), m.group(2))
    return [
        steps[n][:100]
        for n, s in state.items()
        if s == "DONE" and any(k in steps[n] for k in DEP_STEPS)
    ]


def _exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def size_of(tag: str) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", tag],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip())


def manifest(tag: str) -> dict[str, str]:
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "/opt/venv/bin/python",
            tag,
            "-c",
            MANIFEST,
            "/opt/venv",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data: dict[str, str] = json.loads(out)
    return data


def cache_records() -> dict[str, tuple[str, str]]:
    """Build cache record id -> (description, parent id)."""
    out = subprocess.run(
        ["docker", "buildx", "du", "--verbose"], capture_output=True, text=True
    ).stdout
    records = {}
    for block in out.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        if "ID" in fields:
            parent = fields.get("Parent") or fields.get("Parents") or ""
            records[fields["ID"].rstrip("*")] = (fields.get("Description", ""), parent.rstrip("*"))
    return records


def prune_leaf_first(ids: set[str], records: dict[str, tuple[str, str]]) -> None:
    """A record with children cannot go before them: prune the deepest first."""

    def depth(i: str) -> int:
        d = 0
        while i in records and records[i][1]:
            i, d = records[i][1], d + 1
        return d

    for record in sorted(ids, key=depth, reverse=True):
        subprocess.run(
            ["docker", "builder", "prune", "-f", "--filter", f"id={record}"], capture_output=True
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default="local/python:3.12-bookworm")
    parser.add_argument("--commit", default="HEAD", help="the commit to build (default: HEAD)")
    parser.add_argument(
        "--network", default="default", help="network of the RUN steps: default (bridge) or host"
    )
    parser.add_argument(
        "--warm-downloads",
        action="store_true",
        help="reuse the usual uv/npm cache mounts (saves ~11 GB of disk; the "
        "cold figures then exclude download time)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the hvt-bench/* images")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("/tmp/hvt-bench.json"),
        help="figures, written after each phase (default: %(default)s)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the phases already in --json whose images still exist",
    )
    args = parser.parse_args()
    if shutil.disk_usage("/var/lib/docker" if Path("/var/lib/docker").exists() else "/").free < (
        25e9 if args.warm_downloads else 35e9
    ):
        raise SystemExit("not enough free disk for Docker: the benchmark would fill it")
    run_id = uuid.uuid4().hex[:8]
    cache_args = [
        f"--build-arg=UV_CACHE_ID=hvt-bench-uv-{run_id}",
        f"--build-arg=NPM_CACHE_ID=hvt-bench-npm-{run_id}",
    ]
    base = [f"--build-arg=BASE_IMAGE={args.base_image}"] if args.base_image else []
    base.append(f"--network={args.network}")  # host: immune to a flaky docker0 bridge
    second = base
    before = set(cache_records())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", args.commit],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    results: dict[str, object] = {"commit": commit, "base_image": args.base_image}
    if args.resume and args.json.is_file():
        saved = json.loads(args.json.read_text())
        if saved.get("commit") == commit:
            results = saved
            run_id = str(saved.get("run_id", run_id))
            cache_args = [
                f"--build-arg=UV_CACHE_ID=hvt-bench-uv-{run_id}",
                f"--build-arg=NPM_CACHE_ID=hvt-bench-npm-{run_id}",
            ]
            say(f"resuming run {run_id}: {', '.join(k for k in saved if k.endswith('s'))}")
    if args.warm_downloads:
        cache_args = []
    results["run_id"] = run_id
    results["warm_downloads"] = args.warm_downloads

    def save() -> None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")

    tags: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hvt-bench-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        ctx = Path(tmp) / "ctx"
        make_context(ctx, commit)
        say(f"context: commit {commit} + repos/ in {ctx}")
        cold: dict[str, float] = dict(results.get("cold_seconds", {}))  # type: ignore[call-overload]
        for target in TARGETS:
            tag = f"hvt-bench/{target}:a"
            tags.append(tag)
            if target in cold and _exists(tag):
                continue
            cold[target], _ = build(
                ctx, target, tag, ["--no-cache", *base, *cache_args], logs / f"{target}-a.log"
            )
        results["cold_seconds"] = cold
        size_of_tags = {t: size_of(f"hvt-bench/{t}:a") for t in TARGETS}
        results["sizes_bytes"] = size_of_tags
        save()

        init = ctx / "src" / "hvt" / "__init__.py"
        touch_line = f"# bench {uuid.uuid4().hex}: one changed line\n"  # new content every run
        init.write_text(init.read_text() + touch_line)
        tag = "hvt-bench/trainer:touched"
        tags.append(tag)
        done: dict[str, object] = dict(results.get("rebuild_after_src_change", {}))  # type: ignore[call-overload]
        if not (done and _exists(tag)):
            secs, output = build(
                ctx, "trainer", tag, [*base, *cache_args], logs / "trainer-touched.log"
            )
            done = {"seconds": secs, "dependency_steps_rebuilt": rebuilt_dependency_steps(output)}
            results["rebuild_after_src_change"] = done
            save()
        seconds = float(done["seconds"])  # type: ignore[arg-type]
        rebuilt = list(done["dependency_steps_rebuilt"])  # type: ignore[call-overload]
        init.write_text(init.read_text().replace(touch_line, ""))

        for target in ("proxy", "trainer"):
            tag = f"hvt-bench/{target}:b"
            tags.append(tag)
            if args.resume and _exists(tag):
                continue
            build(ctx, target, tag, ["--no-cache", *second, *cache_args], logs / f"{target}-b.log")
        repro: dict[str, object] = {}
        verdicts: dict[str, tuple[int, bool]] = {}
        for target in ("proxy", "trainer"):
            say(f"hashing /opt/venv of hvt-bench/{target}:a and :b")
            a, b = manifest(f"hvt-bench/{target}:a"), manifest(f"hvt-bench/{target}:b")
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            repro[target] = {"files": len(a), "identical": not diff, "differences": diff[:50]}
            verdicts[target] = (len(a), not diff)
        results["reproducible_venv"] = repro
        save()

    if not args.keep:
        subprocess.run(["docker", "rmi", *tags], capture_output=True)
        ours = (
            "with-build-ca",
            "/opt/venv",
            "/workspace/repos",
            "custom-agent-runtime",
            "hvt",
            run_id,
            "/opt/uv",
            "/out/",
        )
        records = cache_records()
        new = {i for i, (d, _) in records.items() if i not in before and any(o in d for o in ours)}
        prune_leaf_first(new, records)
        say(f"removed {len(tags)} images and {len(new)} build cache records of this run")

    print(json.dumps(results, indent=2))
    print("\n| figure | value |\n|---|---|")
    for target, secs in cold.items():
        print(f"| cold build, {target} | {secs:.0f} s |")
    print(f"| rebuild after a change in src/ (trainer) | {seconds:.1f} s |")
    print(f"| dependency steps rebuilt by that change | {len(rebuilt)} |")
    for target in TARGETS:
        print(f"| image size, {target} | {size_of_tags[target] / 1e9:.2f} GB |")
    for target, (files, same) in verdicts.items():
        word = "identical" if same else "DIFFERENT"
        print(f"| /opt/venv of two builds, {target} | {word} ({files} files) |")
    ok = not rebuilt and all(same for _, same in verdicts.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
