"""The commands the README gives: `python -m workbench demo | sweep | report`, run in-process
through the same entry point (`workbench.cli.main`) on real digits runs from the shared cache."""

import json
import re

import pytest
from scipy import stats

from workbench import cli
from workbench import sweep as sw

SMALL_SWEEP = ["--sizes", "3", "--rates", "0", "0.005", "0.01", "0.05", "--pairs", "10",
               "--samples", "16", "--workers", "1", "--quiet"]


def _offline_html(path):
    html = path.read_text()
    assert not re.search(r"<script[^>]+src=[\"']?https?://", html)  # plotly.js inlined: offline
    return html


def test_demo_command_writes_an_offline_report(tmp_path, digits_run, capsys):
    out = tmp_path / "demo.html"
    rc = cli.main(["demo", "--pairs", "10", "--samples", "16", "--quiet", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"{digits_run.clean_accuracy:.4f}" in printed  # the cached run, not a new one
    html = _offline_html(out)
    assert "W<sub>σ</sub>" in html and "run_config" in html


@pytest.mark.slow
def test_sweep_then_report_commands(tmp_path, digits_run, capsys):
    csv_path, html = tmp_path / "sweep.csv", tmp_path / "paper.html"
    assert cli.main(["sweep", *SMALL_SWEEP, "--out", str(csv_path)]) == 0
    table = sw.read_table(csv_path)
    assert sorted(table["rate"].tolist()) == [0.0, 0.005, 0.01, 0.05]
    assert "4 runs in" in capsys.readouterr().out
    assert cli.main(["report", "--sweep", str(csv_path), "--out", str(html), "--pairs", "20",
                     "--samples", "16"]) == 0
    page = _offline_html(html)
    for section in ("Attack strength", "Training dynamics", "Artificial patterns without poisoning",
                    "Detection"):
        assert section in page
    summary = json.loads(html.with_suffix(".json").read_text())
    corr = summary["correlations"]["digits"]
    rho = stats.spearmanr(table["attack_success_rate"], table["gap"]).statistic
    assert corr["runs"] == 4 and corr["gap"]["rho"] == pytest.approx(rho, abs=5e-4)
    assert any(d["method"].startswith("STRIP") for d in summary["detection"])
    strip = [d for d in summary["detection"] if d["method"].startswith("STRIP")][0]
    assert strip["auc"] > 0.7  # STRIP finds the BadNets patch of the detection study
    assert summary["patterns"][0]["pattern"] == "universal patch" and summary["patterns_size"] == 8
    assert {r["size"] for r in summary["patterns_by_size"]} == {4, 6, 8}  # a quarter .. half of 16
    assert "Artificial patterns by size" in page


@pytest.mark.parametrize("args, message", [
    (["sweep", "--sizes", "20"], "`trigger_sizes`: a Patch of size 20 does not fit the 16x16 images of 'digits'"),
    (["sweep", "--targets", "10"], "`targets` must be classes of 'digits': ints in [0, 9]"),
    (["sweep", "--rates", "0.05", "2"], "`rates` must be a float in"),
    (["sweep", "--pairs", "1"], "`n_pairs` must be an int"),
    (["demo", "--rate", "2"], "`rate` must be a float in [0, 1]"),
    (["demo", "--trigger-size", "20"], "`size` must fit the image"),
    (["report", "--pairs", "2"], "`n_pairs` must be an int"),
    (["report", "--dataset", "digits"], "holds no rows: run `python -m workbench sweep` first"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / {"report": "paper.html", "sweep": "sweep.csv", "demo": "demo.html"}[args[0]]
    extra = ["--sweep", str(tmp_path / "none.csv")] if args[0] == "report" else []
    assert cli.main([*args, *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written
