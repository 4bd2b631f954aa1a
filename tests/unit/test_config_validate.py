"""`hvt config validate`: the shipped config, and a corpus of malformed ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hvt.cli import app
from tests.conftest import SHIPPED_CONFIG, del_path, filled_config

CORPUS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus.yaml").read_text()
)
runner = CliRunner()
REMOTE = "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"


def _absolute(key: str) -> str:
    return (
        key
        if key.split(".")[0] in ("meta_info", "runtime_info", "status")
        else (f"runtime_info.input.{key}")
    )


def _validate(path: Path) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["config", "validate", str(path)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    return result.exit_code, lines


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    assert len({case["name"] for case in CORPUS}) == len(CORPUS)


def test_shipped_config_fails_only_on_human_markers() -> None:
    code, lines = _validate(SHIPPED_CONFIG)
    assert code == 2
    problems = lines[1:]
    assert problems and all("`human` marker" in ln for ln in problems)
    assert {ln.split(":")[0] for ln in problems} == {
        "runtime_info.input.model.model_path",
        "runtime_info.input.data.data_dir",
        "runtime_info.input.data.train_index",
        "runtime_info.input.data.val_index",
    }


def test_filled_shipped_config_is_valid(filled_config_file: Path) -> None:
    code, lines = _validate(filled_config_file)
    assert code == 0, lines
    assert "valid" in lines[-1]


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_malformed_config_names_its_key(case: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    if "text" in case:
        path.write_text(case["text"])
    else:
        data = filled_config(**{_absolute(k): v for k, v in case.get("set", {}).items()})
        for key in case.get("delete", []):
            del_path(data, _absolute(key))
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, lines = _validate(path)
    assert code == 2, lines
    header, problems = lines[0], lines[1:]
    assert "1 problem(s)" in header, lines
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith(f"{case['expect']}: "), line
    assert case["says"] in line, line
    # one line: "<key.path>: <what is wrong> (<how to fix>)"
    assert "(" in line and ")" in line


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = filled_config(
        **{
            "runtime_info.input.vllm.gpu_memory_utilization": 2.0,
            "runtime_info.input.infrastructure.ray_port": 99999,
            "runtime_info.input.credentials.wandb_api_key": "abc",
            "runtime_info.input.model.served_model_name": "a/b",
        }
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    code, lines = _validate(path)
    assert code == 2
    keys = {ln.split(":")[0] for ln in lines[1:]}
    assert keys == {
        "runtime_info.input.vllm.gpu_memory_utilization",
        "runtime_info.input.infrastructure.ray_port",
        "runtime_info.input.credentials.wandb_api_key",
        "runtime_info.input.model.served_model_name",
    }


def test_problem_lines_carry_the_file_line(tmp_path: Path) -> None:
    text = SHIPPED_CONFIG.read_text().replace("gen_tp: 4 ", "gen_tp: 3 ")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["config", "validate", str(path)])
    gen_tp_line = next(i for i, ln in enumerate(text.splitlines(), 1) if "gen_tp: 3" in ln)
    assert f"[line {gen_tp_line}]" in result.output


def test_insecure_port_allowed_when_explicit(tmp_path: Path) -> None:
    data = filled_config(
        **{
            "runtime_info.input.harbor_agent.docker_host": "tcp://127.0.0.1:2375",
            "runtime_info.input.harbor_agent.environment_import_path": REMOTE,
            "runtime_info.input.harbor_agent.allow_insecure_test_network": True,
        }
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    code, lines = _validate(path)
    assert code == 0, lines


def test_missing_file_exits_2(tmp_path: Path) -> None:
    code, lines = _validate(tmp_path / "nope.yaml")
    assert code == 2
    assert any("(file):" in ln and "does not exist" in ln for ln in lines)


def test_show_prints_the_summary(filled_config_file: Path) -> None:
    result = runner.invoke(app, ["config", "show", str(filled_config_file)])
    assert result.exit_code == 0, result.output
    for label in (
        "Model:",
        "Served as:",
        "Train data:",
        "Val data:",
        "Backend:",
        "Parallelism:",
        "Batch size:",
        "Context:",
        "vLLM:",
        "Algorithm:",
        "Epochs:",
        "Experiment:",
        "wandb:",
        "Agent:",
    ):
        assert label in result.output
    assert "64 prompts x 8 responses = 512 trials/step" in result.output


def test_smoke_profile_extends_the_shipped_config() -> None:
    code, lines = _validate(SHIPPED_CONFIG.parent / "smoke.yaml")
    assert code == 0, lines


def test_extends_overlay_reports_problems_of_the_merge(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(filled_config()))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("extends: base.yaml\nruntime_info:\n  input:\n    vllm:\n      gen_tp: 3\n")
    code, lines = _validate(overlay)
    assert code == 2
    assert lines[1].startswith("runtime_info.input.vllm.gen_tp: ")
    assert "[line 5]" in lines[1]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("extends: missing.yaml\n", "does not exist"),
        ("extends: overlay.yaml\n", "cycle"),
        ("extends: [a]\n", "expected a file name"),
    ],
)
def test_bad_extends(tmp_path: Path, text: str, says: str) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(text)
    code, lines = _validate(overlay)
    assert code == 2
    assert lines[1].startswith("extends: ") and says in lines[1]
