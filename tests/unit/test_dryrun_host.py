"""`hvt dryrun` checks of inputs, model heads, ports, wandb, writability, residue."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hvt.cli import app
from hvt.preflight import dryrun as dryrun_cli
from hvt.preflight import trees as checks_trees
from tests.conftest import filled_config
from tests.helpers.processes import free_port, listener

runner = CliRunner()


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Any]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"num_key_value_heads": 4, "num_attention_heads": 32})
    )
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"PAR1")
    (data / "val.parquet").write_bytes(b"PAR1")
    return {
        "runtime_info.input.model.model_path": str(model),
        "runtime_info.input.data.data_dir": str(data),
        "runtime_info.input.data.train_index": "train.parquet",
        "runtime_info.input.data.val_index": str(data / "val.parquet"),
    }


def _checks(tmp_path: Path, **overrides: Any) -> dict[str, dict[str, str]]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(filled_config(**overrides)))
    result = runner.invoke(app, ["dryrun", "--config", str(path), "--json"])
    report = json.loads(result.output)
    assert result.exit_code == (0 if report["ok"] else 1)
    names = [c["name"] for c in report["checks"]]
    for c in report["checks"]:
        assert c["status"] in ("ok", "warn", "fail", "skip")
        if c["status"] == "fail":
            assert c["remedy"] or c["name"] == "config.valid", c
        if c["status"] == "skip":
            assert c["detail"], f"{c['name']} skipped without a reason"
    by_name = {c["name"]: c for c in report["checks"]}
    assert len(by_name) == len(names) or names.count("config.valid") > 1
    return by_name


def test_inputs_present_pass(tmp_path: Path, workdir: Path, inputs: dict[str, Any]) -> None:
    checks = _checks(tmp_path, **inputs)
    for name in (
        "inputs.model_path",
        "inputs.train_index",
        "inputs.val_index",
        "model.kv_heads",
        "wandb",
        "writable.logs",
        "writable.checkpoints",
    ):
        assert checks[name]["status"] == "ok", checks[name]


def test_missing_inputs_fail_naming_the_key(tmp_path: Path, workdir: Path) -> None:
    checks = _checks(tmp_path)
    assert checks["inputs.model_path"]["status"] == "fail"
    assert "model.model_path" in checks["inputs.model_path"]["remedy"]
    assert checks["inputs.train_index"]["status"] == "fail"
    assert "hvt tasks index" in checks["inputs.train_index"]["remedy"]
    assert checks["model.kv_heads"]["status"] == "skip"


def test_kv_heads_not_divisible_fails(
    tmp_path: Path, workdir: Path, inputs: dict[str, Any]
) -> None:
    checks = _checks(tmp_path, **inputs, **{"runtime_info.input.vllm.gen_tp": 8})
    check = checks["model.kv_heads"]
    assert check["status"] == "fail"
    assert "illegal memory access" in check["detail"]
    assert "[1, 2, 4]" in check["remedy"]


def test_gpu_checks_skip_with_a_reason_here(tmp_path: Path, workdir: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    checks = _checks(tmp_path)
    assert checks["gpu.count"]["status"] == "skip"
    assert "nvidia-smi not found" in checks["gpu.count"]["detail"]


def test_foreign_process_on_the_litellm_port_fails(tmp_path: Path, workdir: Path) -> None:
    port = free_port()
    with listener(port, None):
        checks = _checks(tmp_path, **{"runtime_info.input.infrastructure.litellm_port": port})
    check = checks["ports.litellm"]
    assert check["status"] == "fail"
    assert f"port {port}" in check["detail"] and "stray LiteLLM" in check["detail"]
    assert "infrastructure.litellm_port" in check["remedy"]


def test_our_own_leftover_on_a_port_warns(tmp_path: Path, workdir: Path) -> None:
    port = free_port()
    with listener(port, workdir):
        checks = _checks(tmp_path, **{"runtime_info.input.infrastructure.ray_port": port})
        assert checks["ports.ray"]["status"] == "warn"
        assert "hvt clean" in checks["ports.ray"]["remedy"]
        assert checks["residue"]["status"] == "warn"


def test_wandb_online_needs_a_key(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = {"runtime_info.input.credentials.wandb_mode": "online"}
    assert _checks(tmp_path, **online)["wandb"]["status"] == "fail"
    key_file = tmp_path / "wandb_api_key"
    key_file.write_text("k" * 40)
    monkeypatch.setenv("WANDB_API_KEY_FILE", str(key_file))
    check = _checks(tmp_path, **online)["wandb"]
    assert check["status"] == "ok" and "secret file" in check["detail"]
    monkeypatch.delenv("WANDB_API_KEY_FILE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert "$WANDB_API_KEY" in _checks(tmp_path, **online)["wandb"]["detail"]


def _as_unprivileged(argv: list[str]) -> list[str]:
    """argv run as `nobody` when we are root (CI runs as root, and root can write anywhere)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root for the permission checks"
    drop = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if subprocess.run([*drop, sys.executable, "-c", ""], capture_output=True).returncode:
        # The interpreter lies where `nobody` cannot look (pyenv under a 0700 /root): keep only
        # the right to read and search. access(2), which the writable checks use, ignores
        # capabilities for a non-root real uid, so what it reports is still plain `nobody`.
        drop += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return [*drop, *argv]


def test_unwritable_checkpoints_fail() -> None:
    hvt = Path(sys.executable).with_name("hvt")
    base = Path(tempfile.mkdtemp(prefix="hvt-unwritable-"))  # not under root's 0700 tmp_path
    try:
        base.chmod(0o755)
        config = base / "config.yaml"
        config.write_text(yaml.safe_dump(filled_config()))
        config.chmod(0o644)
        workdir = base / "bundle"
        workdir.mkdir()
        if os.geteuid() == 0:
            os.chown(workdir, pwd.getpwnam("nobody").pw_uid, -1)
        (workdir / "checkpoints").mkdir(mode=0o500)  # ours (root's in CI): not the runner's
        env = {**os.environ, "HVT_WORKDIR": str(workdir), "HVT_RAY_TEMP_DIR": str(base / "ray")}
        env.pop("WANDB_API_KEY", None)
        argv = [str(hvt), "dryrun", "--config", str(config), "--json"]
        result = subprocess.run(
            _as_unprivileged(argv), cwd=base, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.stdout.startswith("{"), (result.returncode, result.stdout, result.stderr)
        report = json.loads(result.stdout)
        assert result.returncode == 1 and not report["ok"], (result.stdout, result.stderr)
        checks = {c["name"]: c for c in report["checks"]}
        uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.getuid()
        # the runner can write in the work dir, so the failure is the checkpoints dir's mode
        assert checks["writable.logs"]["status"] == "ok", checks["writable.logs"]
        check = checks["writable.checkpoints"]
        assert check["status"] == "fail", check
        assert check["detail"] == f"{workdir / 'checkpoints'} is not writable by uid {uid}", check
        assert f"uid {uid}" in check["remedy"], check
    finally:
        shutil.rmtree(base)


def test_trials_residue_warns(tmp_path: Path, workdir: Path) -> None:
    (workdir / "harbor_trials" / "swe-lego-live-rl" / "exp").mkdir(parents=True)
    check = _checks(tmp_path)["residue.trials"]
    assert check["status"] == "warn" and "--trials" in check["remedy"]


def test_invalid_config_fails_config_valid_only(tmp_path: Path, workdir: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("meta_info: [\n")
    result = runner.invoke(app, ["dryrun", "--config", str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [c["name"] for c in report["checks"]] == ["config.valid"]


@pytest.mark.parametrize(
    ("overrides", "verdict", "exit_code"),
    [
        ({}, "READY: 6 ok, 0 warn, 0 fail, 0 skip", 0),
        (
            {"runtime_info.input.vllm.gen_tp": 8},  # 4 KV heads do not split over TP=8
            "NOT READY: 5 ok, 0 warn, 1 fail, 0 skip",
            1,
        ),
    ],
)
def test_human_table_output(
    tmp_path: Path,
    workdir: Path,
    inputs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, Any],
    verdict: str,
    exit_code: int,
) -> None:
    # Only the checks these inputs decide (config, inputs, model heads): the rest depend on the
    # host (repos/, docker, GPUs), and the verdict must not.
    monkeypatch.setattr(
        dryrun_cli, "GROUPS", (checks_trees.check_inputs, checks_trees.check_model_heads)
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(filled_config(**inputs, **overrides)))
    result = runner.invoke(app, ["dryrun", "--config", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == exit_code, result.output
    assert "Run Configuration Summary" in result.output
    assert "hvt dryrun" in result.output
    assert result.output.rstrip().splitlines()[-1] == verdict, result.output
    heads = next(line for line in result.output.splitlines() if "model.kv_heads" in line)
    assert heads.split("│")[2].strip() == ("ok" if exit_code == 0 else "fail"), heads


MOUNTS = """overlay / overlay rw 0 0
/dev/vda1 /data ext4 rw 0 0
head:/export/runs /data/runs nfs4 rw,vers=4.2 0 0
"""


def test_the_run_directory_filesystem_is_the_longest_mount_that_holds_it() -> None:
    from hvt.preflight.host import filesystem_of

    assert filesystem_of(Path("/data/runs/exp"), MOUNTS) == ("/data/runs", "nfs4")
    assert filesystem_of(Path("/data/other"), MOUNTS) == ("/data", "ext4")
    assert filesystem_of(Path("/data/runsx"), MOUNTS) == ("/data", "ext4")
    assert filesystem_of(Path("/srv"), MOUNTS) == ("/", "overlay")


def test_several_nodes_warn_about_a_local_run_directory(tmp_path: Path, workdir: Path) -> None:
    one = _checks(tmp_path)
    assert not any(name.startswith("nodes.") for name in one), "one node: no node rows"
    two = _checks(
        tmp_path,
        **{
            "runtime_info.input.infrastructure.nnodes": 2,
            "runtime_info.input.infrastructure.ngpus_per_node": 4,
        },
    )
    row = two["nodes.shared_dir"]
    assert row["status"] == "warn" and "a local filesystem, with nnodes=2" in row["detail"], row
    assert "same directory at the same path" in row["remedy"]
