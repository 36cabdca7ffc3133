"""The paper report (reports/paper.html) as a reader gets it: built by `paper.write_paper` from a
small real sweep table and small real studies (one-epoch runs from the cache, a few noisy samples:
no long training), its numbers checked against the table, stale rows set apart, and drawn in
headless Chromium at 1300 px: nothing cut off, every figure drawn."""

import html as htmllib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.base import sweepstore
import workbench as wb
from workbench import cli, paper
from workbench import sweep as sw
from workbench.detection import compare_detectors
from workbench.experiments import smoothing_dynamics
from workbench.patterns import measure_patterns, random_patches, universal_patch
from workbench.poison import triggered_pairs
from workbench.stats import spearman_ci

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIGMAS = (0.1, 0.3, 0.5)
# four one-epoch runs (the sweep tests' quick grid: trained once per session), measured cheaply
GRID = dict(trigger_sizes=(3,), rates=(0.0, 0.05, 0.1, 0.2), epochs=1, n_pairs=10, n_samples=8,
            sigmas=SIGMAS)
RAW_NAMES = ("trigger_type", "gap_ci_low", "gap_ci_high", "attack_success_rate", "clean_accuracy",
             "radius_p_value", "row_format")


def _stale_row(row: dict) -> dict:
    """`row` as an older workbench wrote it (no row format), with numbers no current row has."""
    return {**row, "key": "0ld0ld0ld0ld", "row_format": None, "gap": 0.987654,
            "gap_ci_low": 0.9, "gap_ci_high": 1.1, "rate": 0.3}


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, digits):
    d = tmp_path_factory.mktemp("report")
    table = sw.run_sweep(sw.SweepGrid(**GRID), d / "sweep.csv", max_workers=1, progress=False)
    # a row of an older row format in the same table: read, never used
    mixed = pd.concat([table, sweepstore.rows_frame([_stale_row(table.to_dict("records")[2])])],
                      ignore_index=True)
    dyn = smoothing_dynamics(wb.load_dataset("digits", max_train=400), epochs=3, sigmas=SIGMAS,
                             n_pairs=6, n_samples=8)
    # claim 5's study in small: the rate-0 run of the grid is the clean model; short crafting
    clean = wb.train_backdoor(digits, trigger=wb.triggers.Patch(size=3), rate=0.0, target=0,
                              epochs=1, progress=False)
    patterns = {}
    for size in (4, 8):
        pats = {"universal patch": universal_patch(clean.model, digits.x_train[:256],
                                                   digits.y_train[:256], 0, size=size, steps=10,
                                                   batch_size=64),
                "white patch": wb.triggers.Patch(size=size, position="center"),
                "random patch 1": random_patches(1, size, 1, "center", seed=1)[0]}
        patterns[size] = measure_patterns(clean.model, digits.x_test, digits.y_test, 0, pats,
                                          SIGMAS, n_pairs=10, n_samples=8)
    run = wb.train_backdoor(digits, trigger=wb.triggers.Patch(size=3), rate=0.1, target=0,
                            epochs=1, progress=False)
    pairs = triggered_pairs(digits.x_test, digits.y_test, run.trigger, 0, n=30, seed=0)
    pool = np.ones(len(digits.y_test), bool)
    pool[pairs.indices.numpy()] = False
    dets = compare_detectors(run.model, pairs.clean, pairs.triggered, digits.x_test[pool][:100],
                             SIGMAS, n_samples=8, methods=("strip", "w-mean"), n_boot=50)
    out = d / "paper.html"
    summary = paper.write_paper(mixed, out, dynamics=dyn, patterns=patterns, detection=(run, dets),
                                provenance={"command": "pytest tests/test_report.py",
                                            "study seed": 0})
    return table, summary, out


def test_report_numbers_come_from_the_current_rows(small_report):
    table, summary, out = small_report
    page = re.sub(r"<script.*?</script>", "", out.read_text(), flags=re.S)  # no plotly.js
    # the stale row is counted and left out; the current ones are all there, as "+g [+lo, +hi]"
    assert summary["sweep_rows_stale"] == 1 and "0.988" not in page and "30%" not in page
    shown = re.findall(r"<td[^>]*>(0 \(control\)|[\d.]+%)</td>", page)
    assert shown == ["0 (control)", "5%", "10%", "20%"]  # sorted by rate, as numbers
    for r in table.to_dict("records"):
        assert f"{r['gap']:+.3f} [{r['gap_ci_low']:+.3f}, {r['gap_ci_high']:+.3f}]" in page
    ref = spearman_ci(table["attack_success_rate"], table["gap"])
    corr = summary["correlations"]["digits"]
    assert corr["runs"] == 4 and corr["gap"]["rho"] == pytest.approx(ref["rho"], abs=5e-4)
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(summary,
                                                                                     default=str))
    # findings with verdicts lead the report; one per claim and study
    findings = summary["findings"]
    assert [f["finding"].split(",")[0] for f in findings][:1] == [
        "Smoothing grows with the attack's success (claim 4)"]
    assert {"When smoothing appears during training", "Controls: white and random patches of the "
            "same sizes"} <= {f["finding"].rsplit(", ", 1)[0] for f in findings}
    lo, hi = corr["gap"]["ci"]
    assert findings[0]["verdict"] == ("reproduces" if lo > 0 else "reverses" if hi < 0 else
                                      "inconclusive: the interval includes 0")
    assert page.index("Summary of findings") < page.index("Attack strength")
    # provenance folded away, with the command, the seeds and the versions
    prov = page[page.index("<h2 id='provenance'>"):]
    assert prov.count("<details") == 2 and "<details open" not in prov
    assert all(s in prov for s in ("pytest tests/test_report.py", "sweep seeds", "torch",
                                   "older row format, ignored"))
    # people's headers, not the CSV's, before the provenance
    body = htmllib.unescape(page[:page.index("id='provenance'")])
    assert not [n for n in RAW_NAMES if n in body]


def test_a_table_of_older_rows_only_is_refused_before_any_study(tmp_path, small_report, capsys):
    table, _, _ = small_report
    old = table.assign(row_format=pd.array([None] * len(table), dtype="Int64"))
    with pytest.raises(ValueError, match=rf"`table` must hold rows of row format {sw.ROW_FORMAT}"):
        paper.write_paper(old, tmp_path / "paper.html")
    csv_path = sw.write_table(old, tmp_path / "sweep.csv")
    out = tmp_path / "paper.html"
    assert cli.main(["report", "--sweep", str(csv_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "were written by an older workbench and are never used" in err and "sweep --out" in err
    assert not out.exists()


def test_attack_strength_table_sorts_numerically_and_rounds():
    rows = sweepstore.rows_frame([{c: () if sw.COLUMN_TYPES[c] == "floats" else 0 for c in sw.COLUMNS} | {
        "key": k, "row_format": sw.ROW_FORMAT, "dataset": "digits", "trigger": "t", "trigger_type": "Patch",
        "trigger_size": 3, "rate": rate, "model": "small-cnn", "epochs": 30, "gap": g,
        "gap_ci_low": g - 0.1, "gap_ci_high": g + 0.1, "p_value": 0.00012, "radius_gap": 0.01,
        "radius_gap_ci_low": -0.02, "radius_gap_ci_high": 0.04, "clean_accuracy": 0.981234,
        "attack_success_rate": 0.5, "torch": "x", "workbench": "y"}
        for k, rate, g in (("a", 0.01, 0.2361), ("b", 0.001, -0.1), ("c", 0.0, 0.0))])
    shown, _ = paper.report_rows(rows)
    t = paper.attack_strength_table(shown)
    assert t["poisoning rate"].tolist() == ["0 (control)", "0.1%", "1%"]
    assert t["smoothing gap, nats [95% CI]"].tolist()[2] == "+0.236 [+0.136, +0.336]"
    assert t["clean accuracy"].tolist()[0] == "0.981" and t["p"].tolist()[0] == "< 0.001"
    assert "seed" not in t and "target" not in t  # the same for every row: said once, in a note
    assert "target 0, seed 0" in paper.run_settings(shown)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_report_fits_1300_px_and_draws_every_figure(small_report, artifacts):
    from playwright.sync_api import sync_playwright

    _, _, out = small_report
    n_figures = out.read_text().count("<div class='figure'>")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg')"
                               f".length >= {n_figures}", timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "report-1300.png"), full_page=True)
        doc = page.evaluate("() => [document.documentElement.scrollWidth, "
                            "document.documentElement.clientWidth]")
        boxes = page.evaluate("""() => [...document.querySelectorAll(
                'table, .figure, .js-plotly-plot')].filter(e => !e.closest('details'))
            .map(e => ({tag: e.tagName, cls: e.className, sw: e.scrollWidth, cw: e.clientWidth,
                        right: e.getBoundingClientRect().right}))""")
        figures = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(
            gd => ({traces: gd.data.length, drawn: gd.querySelectorAll(
                        '.cartesianlayer .trace, .heatmaplayer image, .hm image').length,
                    w: gd.getBoundingClientRect().width, h: gd.getBoundingClientRect().height,
                    title: gd.layout.title && gd.layout.title.text || ''}))""")
        visible = page.inner_text("body")
        details_open = page.evaluate("() => [...document.querySelectorAll('details')]"
                                     ".some(d => d.open)")
        # unfolded, the provenance fits too
        page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
        page.locator("#provenance").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "report-1300-provenance.png"))
        unfolded = page.evaluate("""() => [document.documentElement.scrollWidth,
            ...[...document.querySelectorAll('details table, details pre')].map(
                e => e.scrollWidth - e.clientWidth)]""")
        browser.close()
    assert not errors, errors
    assert doc[0] <= doc[1], f"the page scrolls sideways: {doc}"
    cut = [b for b in boxes if b["sw"] > b["cw"] + 1 or b["right"] > doc[1]]
    assert not cut, f"cut off at 1300 px: {cut}"
    assert len(figures) == n_figures >= 7
    empty = [f for f in figures if not (f["traces"] and f["drawn"] and f["w"] > 300 and f["h"] > 200)]
    assert not empty, f"figures not drawn: {empty}"
    assert any("by epoch and noise scale" in f["title"] for f in figures)  # the dynamics heatmap
    assert not details_open and "study seed" not in visible  # provenance folded away
    assert unfolded[0] <= doc[1] and max(unfolded[1:]) <= 1, unfolded
    assert not [n for n in RAW_NAMES if n in visible]
