"""The LiteLLM config writer and `hvt litellm-config` argument handling."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from hvt.proxy import litellm_config
from hvt.proxy.discovery import Replica
from hvt.proxy.litellm_config import ProxySettings

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = [Replica(0, "10.0.0.5", 8000), Replica(1, "10.0.0.6", 8001)]
SETTINGS = ProxySettings("vllm_model")


def test_every_alias_is_served_by_every_replica() -> None:
    cfg = litellm_config.build(REPLICAS, SETTINGS)
    bases: dict[str, set[str]] = defaultdict(set)
    for entry in cfg["model_list"]:
        params = entry["litellm_params"]
        assert params["model"] == "hosted_vllm/vllm_model"
        assert params["logprobs"] is True
        assert params["extra_body"] == {"return_token_ids": True}
        assert params["timeout"] == 900
        bases[entry["model_name"]].add(params["api_base"])
    assert set(bases) == {"claude-*", "hosted_vllm/vllm_model", "vllm_model"}
    for alias_bases in bases.values():
        assert alias_bases == {"http://10.0.0.5:8000/v1", "http://10.0.0.6:8001/v1"}
    ids = [e["model_info"]["id"] for e in cfg["model_list"]]
    assert len(ids) == len(set(ids)) == 6


def test_settings_callback_auth_and_no_secret_in_file() -> None:
    cfg = litellm_config.build(REPLICAS, SETTINGS)
    assert cfg["litellm_settings"] == {
        "drop_params": True,
        "request_timeout": 900,
        "use_chat_completions_url_for_anthropic_messages": True,
        "callbacks": ["hvt.trajectory.logger.proxy_handler_instance"],
    }
    assert cfg["general_settings"] == {
        "master_key": "os.environ/LITELLM_MASTER_KEY",
        "custom_auth": "hvt.proxy.auth.user_api_key_auth",
    }


def test_refuses_empty_replica_set_and_bad_names() -> None:
    with pytest.raises(ValueError, match="no replicas"):
        litellm_config.build([], SETTINGS)
    for bad in ("Qwen/Qwen3-0.6B", "", "a b"):
        with pytest.raises(ValueError, match="served model name"):
            litellm_config.build(REPLICAS, ProxySettings(bad))


def test_write_is_atomic_and_rewrites_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "litellm" / "config.yaml"
    assert litellm_config.write(path, REPLICAS, SETTINGS) is True
    first = path.read_text()
    assert yaml.safe_load(first)["model_list"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    mtime = path.stat().st_mtime_ns
    # same set, other order: unchanged
    assert litellm_config.write(path, list(reversed(REPLICAS)), SETTINGS) is False
    assert path.stat().st_mtime_ns == mtime
    # a replica moved: rewritten, and the new address is served
    moved = [REPLICAS[0], Replica(1, "10.0.0.7", 8001)]
    assert litellm_config.write(path, moved, SETTINGS) is True
    text = path.read_text()
    assert "10.0.0.7" in text and "10.0.0.6" not in text
    assert litellm_config.read_fingerprint(path) == litellm_config.fingerprint(moved, SETTINGS)
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temp files


def test_write_atomic_leaves_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    litellm_config.write_atomic(path, "old: 1\n")

    with pytest.raises(TypeError):
        litellm_config.write_atomic(path, 42)  # type: ignore[arg-type]
    assert path.read_text() == "old: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_default_path_follows_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HVT_LITELLM_CONFIG", raising=False)
    assert litellm_config.default_path() == Path("/shared/litellm/config.yaml")
    monkeypatch.setenv("HVT_LITELLM_CONFIG", "/x/y.yaml")
    assert litellm_config.default_path() == Path("/x/y.yaml")


def _hvt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "hvt"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_cli_needs_a_replica_count(tmp_path: Path) -> None:
    result = _hvt("litellm-config", "--out", str(tmp_path / "c.yaml"))
    assert result.returncode == 2
    assert "--expected" in result.stderr and "--config" in result.stderr


def test_cli_rejects_a_served_name_with_a_slash(tmp_path: Path) -> None:
    result = _hvt(
        "litellm-config",
        "--expected",
        "1",
        "--served-model-name",
        "a/b",
        "--out",
        str(tmp_path / "c.yaml"),
    )
    assert result.returncode == 2
    assert "served_model_name" in result.stderr
    assert not (tmp_path / "c.yaml").exists()


def test_cli_derives_replicas_from_the_run_profile(
    filled_config_file: Path, tmp_path: Path
) -> None:
    from hvt.proxy.litellm_config_cli import _plan

    assert _plan(filled_config_file, None, None) == (2, "vllm_model")  # 1 x 8 GPUs / gen_tp 4
    assert _plan(filled_config_file, 3, "other") == (3, "other")


def test_cli_without_a_ray_cluster_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "c.yaml"
    result = _hvt(
        "litellm-config",
        "--expected",
        "1",
        "--out",
        str(out),
        "--timeout",
        "5",
        "--ray-address",
        "127.0.0.1:1",
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )
    assert result.returncode == 1
    assert "Ray" in result.stderr
    assert not out.exists()
