"""`hvt metrics`: verl console lines to CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from typer.testing import CliRunner

from hvt.cli import app
from hvt.run.metrics import parse, to_csv

LOG = (
    "(TaskRunner pid=4242) step:1 - actor/entropy:np.float64(0.61) - critic/score/mean:"
    "np.float64(0.25) - timing_s/step:312.5 - perf/mfu/actor:np.float64(0.31)\n"
    "(TaskRunner pid=4242, ip=10.0.0.2) \x1b[36mstep:2 - actor/entropy:np.float64(0.58) - "
    "critic/score/mean:0.375 - actor/ppo_kl:np.float64(-1.2e-05) - rollout_corr/kl:"
    "tensor(0.0003)\x1b[0m\n"
    "INFO unrelated line with step:nothing\n"
    "step:2 - response_length/mean:np.int64(812) - actor/pg_clipfrac:0.0\n"
)


def test_parse_strips_prefixes_colours_and_wrappers() -> None:
    steps = parse(LOG.splitlines())
    assert sorted(steps) == [1, 2]
    assert steps[1]["actor/entropy"] == "0.61"
    assert steps[1]["timing_s/step"] == "312.5"
    assert steps[2]["actor/ppo_kl"] == "-1.2e-05"
    assert steps[2]["rollout_corr/kl"] == "0.0003"
    assert steps[2]["response_length/mean"] == "812"  # merged from a second line
    assert steps[2]["critic/score/mean"] == "0.375"


def test_csv_has_a_column_per_key_and_a_row_per_step() -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(parse(LOG.splitlines())))))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert rows[0]["perf/mfu/actor"] == "0.31" and rows[1]["perf/mfu/actor"] == ""


def test_cli_writes_csv_with_selected_keys(tmp_path: Path) -> None:
    log = tmp_path / "exp.log"
    log.write_text(LOG)
    out = tmp_path / "m.csv"
    result = CliRunner().invoke(
        app, ["metrics", str(log), "-o", str(out), "--keys", "critic/score/mean,actor/entropy"]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[0] == "step,critic/score/mean,actor/entropy"


def test_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["metrics", str(tmp_path / "none.log")]).exit_code == 2
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    assert runner.invoke(app, ["metrics", str(empty)]).exit_code == 1
