"""`hvt proxy` start-up checks: master key, config file, trials root, shadowing, waiting."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hvt.proxy import litellm_config
from hvt.proxy.discovery import Replica
from hvt.proxy.supervisor import (
    ProxyError,
    ProxyOptions,
    Supervisor,
    check_config,
    check_no_shadowing,
    resolve_master_key,
    wait_for_config,
)

KEY = "sk-hvt-unit-0123456789abcdef"


def test_master_key_from_env_or_file(tmp_path: Path) -> None:
    assert resolve_master_key({"LITELLM_MASTER_KEY": KEY}) == KEY
    secret = tmp_path / "litellm_master_key"
    secret.write_text(KEY + "\n")
    assert resolve_master_key({"LITELLM_MASTER_KEY_FILE": str(secret)}) == KEY
    assert resolve_master_key({"LITELLM_MASTER_KEY": KEY, "LITELLM_MASTER_KEY_FILE": str(secret)})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "refusing to start without a master key"),
        ({"LITELLM_MASTER_KEY": "   "}, "refusing to start without a master key"),
        ({"LITELLM_MASTER_KEY": "short"}, "at least 16"),
        ({"LITELLM_MASTER_KEY_FILE": "/nonexistent/key"}, "cannot be read"),
    ],
)
def test_master_key_problems_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ProxyError, match=message):
        resolve_master_key(env)


def test_master_key_env_and_file_must_agree(tmp_path: Path) -> None:
    secret = tmp_path / "k"
    secret.write_text("sk-other-0123456789abcdef")
    with pytest.raises(ProxyError, match="differ"):
        resolve_master_key({"LITELLM_MASTER_KEY": KEY, "LITELLM_MASTER_KEY_FILE": str(secret)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ProxyError, match="is empty"):
        resolve_master_key({"LITELLM_MASTER_KEY_FILE": str(empty)})


def _config(tmp_path: Path, served: str = "vllm_model") -> Path:
    path = tmp_path / "litellm" / "config.yaml"
    litellm_config.write(
        path, [Replica(0, "127.0.0.1", 9000)], litellm_config.ProxySettings(served)
    )
    return path


def test_check_config_counts_deployments_and_checks_the_served_name(tmp_path: Path) -> None:
    path = _config(tmp_path)
    digest, count = check_config(path, "vllm_model")
    assert count == 3 and len(digest) == 64
    with pytest.raises(ProxyError, match="served_model_name is 'other'"):
        check_config(path, "other")
    path.write_text("model_list: []\n")
    with pytest.raises(ProxyError, match="missing or empty"):
        check_config(path)
    path.write_text("model_list: [\n")
    with pytest.raises(ProxyError, match="not valid YAML"):
        check_config(path)


def test_a_hvt_dir_beside_the_config_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path)
    check_no_shadowing(path)
    (path.parent / "hvt").mkdir()
    with pytest.raises(ProxyError, match="shadow"):
        check_no_shadowing(path)


def test_wait_for_config_reports_progress_then_returns(tmp_path: Path) -> None:
    path = tmp_path / "litellm" / "config.yaml"
    notes: list[str] = []
    threading.Timer(0.6, lambda: _config(tmp_path)).start()
    _digest, count = wait_for_config(
        path, 10, 0.1, notes.append, threading.Event(), progress_every_s=0.2
    )
    assert count == 3
    assert notes and "not there yet" in notes[0]


def test_wait_for_config_times_out_with_the_last_problem(tmp_path: Path) -> None:
    path = _config(tmp_path, served="old_model")
    start = time.monotonic()
    with pytest.raises(ProxyError, match="another run"):
        wait_for_config(
            path, 0.5, 0.1, lambda _: None, threading.Event(), served_model_name="vllm_model"
        )
    assert time.monotonic() - start < 5


def test_supervisor_needs_an_existing_trials_root(tmp_path: Path) -> None:
    env = {"LITELLM_MASTER_KEY": KEY}
    with pytest.raises(ProxyError, match="no trials root"):
        Supervisor(ProxyOptions(config=tmp_path / "c.yaml"), env=env)
    with pytest.raises(ProxyError, match="not a directory"):
        Supervisor(ProxyOptions(config=tmp_path / "c.yaml", trials_root=tmp_path / "no"), env=env)
    with pytest.raises(ProxyError, match="both"):
        Supervisor(
            ProxyOptions(
                config=tmp_path / "c.yaml", trials_root=tmp_path, ssl_keyfile=_config(tmp_path)
            ),
            env=env,
        )


def test_supervisor_passes_the_key_only_through_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(KEY)
    sup = Supervisor(
        ProxyOptions(config=tmp_path / "c.yaml", trials_root=tmp_path, port=18999, workers=2),
        env={"LITELLM_MASTER_KEY_FILE": str(secret), "PATH": "/usr/bin"},
    )
    assert sup.env["LITELLM_MASTER_KEY"] == KEY
    assert "LITELLM_MASTER_KEY_FILE" not in sup.env
    assert sup.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert sup.env["HVT_TRIALS_ROOT"] == str(tmp_path)
    cmd = sup.command()  # the operator venv has litellm (make venv); a ProxyError is a failure
    assert KEY not in " ".join(cmd)
    assert cmd[cmd.index("--port") + 1] == "18999"
    assert cmd[cmd.index("--num_workers") + 1] == "2"


def test_supervisor_passes_the_signing_secret_or_says_sandboxes_will_be_refused(
    tmp_path: Path,
) -> None:
    signing = tmp_path / "proxy_signing_key"
    signing.write_text("s" * 48 + "\n")
    options = ProxyOptions(config=tmp_path / "c.yaml", trials_root=tmp_path)
    env = {"LITELLM_MASTER_KEY": KEY, "HVT_PROXY_SIGNING_KEY_FILE": str(signing)}
    sup = Supervisor(options, env=env)
    assert sup.env["HVT_PROXY_SIGNING_KEY"] == "s" * 48
    assert "HVT_PROXY_SIGNING_KEY_FILE" not in sup.env
    said: list[str] = []
    Supervisor(options, env={"LITELLM_MASTER_KEY": KEY}, say=said.append)
    assert any("every sandbox's call will be refused" in line for line in said), said
    signing.write_text("short")
    with pytest.raises(ProxyError, match="at least 32"):
        Supervisor(options, env=env)
