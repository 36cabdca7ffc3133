"""One definition of a trained run's identity (`workbench.sweep.RUN_COLUMNS`), used by every module
that tells runs apart: the paper report (one row per run, the attack-strength table, the Spearman
headline), the atlas's figures and section, and the sweep itself (issue 18, item 1).

The tables are built by hand in the sweep's real row format (every column, reprs of real
triggers, the atlas's names, poisoning modes and rates), written with `write_table` and read back
with `read_table`: no model is trained."""

import ast
import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.base import sweepstore
import workbench as wb
from workbench import atlas, paper, plots
from workbench import sweep as sw
from workbench.stats import spearman_ci

SIGMAS = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6)  # a short grid: the curves only need to round-trip


def _row(attack: str, rate: float, asr: float, gap: float, dataset: str = "digits",
         max_train: int | None = None, seed: int = 0, key: str | None = None) -> dict:
    """A sweep row of `attack` (a name of workbench.atlas.ATTACKS) as `run_point` writes it."""
    a = atlas.ATTACKS[attack]
    trig = wb.triggers.trigger_from_config(a.trigger_config(dataset))
    clean = tuple(round(1.2 * (1 - math.exp(-4 * s)), 4) for s in SIGMAS)
    triggered = tuple(round(max(c - gap, 0.0), 4) for c in clean)
    return {"key": key or f"{attack}|{dataset}|{rate}|{seed}|{max_train}",
            "row_format": sw.ROW_FORMAT, "dataset": dataset, "attack": a.name,
            "family": a.family, "trigger": repr(trig), "trigger_type": a.kind,
            "trigger_size": a.trigger.get("size", 1), "trigger_l2": 2.0, "trigger_linf": 1.0,
            "poisoning": a.poisoning, "target_mode": a.target_mode, "rate": rate, "target": 0,
            "seed": seed, "model": "small-cnn", "epochs": 30, "max_train": max_train,
            "clean_accuracy": 0.97, "attack_success_rate": asr, "gap": gap,
            "gap_ci_low": gap - 0.05, "gap_ci_high": gap + 0.05, "p_value": 0.01,
            "radius_gap": gap / 4, "radius_gap_ci_low": gap / 4 - 0.01,
            "radius_gap_ci_high": gap / 4 + 0.01, "radius_p_value": 0.02,
            "clean_mean_W": float(np.mean(clean)), "triggered_mean_W": float(np.mean(triggered)),
            "n_pairs": 50, "n_samples": 64, "sigma_min": SIGMAS[0], "sigma_max": SIGMAS[-1],
            "sigmas": SIGMAS, "clean_curve": clean, "triggered_curve": triggered,
            "train_seconds": 9.5, "torch": "2.5.1", "workbench": wb.__version__}


# The 8 digits atlas rows: four Patch attacks at their two rates. Patch dirty-label 5%
# and Patch all-to-all 5% share dataset, trigger, rate, target, seed, model and epochs, and so do
# Patch clean-label 4.9% and Patch label-consistent 4.9%: only the attack tells them apart.
EIGHT = [("Patch", 0.005, 0.31, -0.02), ("Patch", 0.05, 1.00, 0.21),
         ("Patch/all-to-all", 0.05, 0.62, 0.04), ("Patch/all-to-all", 0.2, 0.93, 0.11),
         ("Patch/clean-label", 0.049, 0.12, -0.08), ("Patch/clean-label", 0.098, 0.57, 0.02),
         ("Patch/label-consistent", 0.025, 0.45, 0.09),
         ("Patch/label-consistent", 0.049, 0.88, 0.16)]


def _table(rows: list[dict], path: Path) -> pd.DataFrame:
    """`rows` through a sweep CSV and back, as a report reads them."""
    sw.write_table(pd.DataFrame(rows, columns=sw.COLUMNS), path)
    return sw.read_table(path)


@pytest.fixture
def eight(tmp_path):
    return _table([_row(*r) for r in EIGHT], tmp_path / "atlas.csv")


def test_the_eight_rows_are_eight_runs_in_the_paper_report(eight, tmp_path):
    # the merge of issue 18: the same trigger at the same rate, another attack
    patch = eight[(eight.rate == 0.05)]
    assert patch["trigger"].nunique() == 1 and set(patch["attack"]) == {"Patch", "Patch/all-to-all"}
    rows, counts = paper.report_rows(eight)
    assert len(rows) == 8 and counts == {"stale": 0, "superseded": 0}
    assert sorted(rows["key"]) == sorted(eight["key"])
    # the attack-strength table: one line per run, each naming its attack where the trigger alone
    # does not
    t = paper.attack_strength_table(rows)
    assert len(t) == 8 and len(set(zip(t["trigger"], t["poisoning rate"]))) == 8
    assert {"Patch 3×3", "Patch/all-to-all: Patch 3×3", "Patch/clean-label: Patch 5×5",
            "Patch/label-consistent: Patch 5×5"} == set(t["trigger"])
    # the Spearman headline over the 8 runs, not 6
    head = paper.headline(rows)["digits"]
    ref = spearman_ci(eight["attack_success_rate"], eight["gap"])
    assert head["runs"] == 8
    assert head["gap"]["rho"] == round(ref["rho"], 3)
    assert head["gap"]["ci"] == [round(c, 3) for c in ref["ci"]]
    # and the report written from the table says so
    summary = paper.write_paper(eight, tmp_path / "paper.html")
    assert summary["correlations"]["digits"]["runs"] == 8
    assert summary["sweep_rows_superseded"] == 0
    # its figures draw each attack as its own series
    fig = plots.rate_curves(rows)
    assert len({tr.name for tr in fig.data}) == 4
    assert sorted(len(tr.x) for tr in plots.attack_strength(rows).data) == [2, 2, 2, 2]


def test_a_run_measured_again_still_counts_once(eight):
    again = eight.assign(key=eight["key"] + "-again", n_samples=128, gap=eight["gap"] + 0.01)
    both = pd.concat([eight, again], ignore_index=True)
    rows, counts = paper.report_rows(both)
    assert len(rows) == 8 and counts["superseded"] == 8
    assert (rows["n_samples"] == 128).all()  # the later measurement
    assert paper.headline(both)["digits"]["runs"] == 8
    atlas_rows, c = paper.atlas_rows(both)
    assert c == {"read": 16, "used": 8} and (atlas_rows["n_samples"] == 128).all()


def test_a_run_on_a_subset_of_the_training_set_is_another_run(tmp_path):
    # Fashion-MNIST's atlas trains on the first 20,000 images; a plain sweep on all of them:
    # the same attack, trigger, rate, target and seed, two models
    rows = [_row("Patch", 0.05, 0.99, 0.20, dataset="fashion-mnist", max_train=20_000),
            _row("Patch", 0.05, 1.00, 0.25, dataset="fashion-mnist", max_train=None)]
    t = _table(rows, tmp_path / "sweep.csv")
    assert t["max_train"].tolist()[0] == 20_000 and t["max_train"].isna().tolist() == [False, True]
    latest, superseded = sw.latest_per_run(t)
    assert len(latest) == 2 and superseded == 0
    shown = paper.attack_strength_table(paper.report_rows(t)[0])
    assert sorted(shown["trigger"]) == ["Patch 3×3", "Patch 3×3, first 20,000 training images"]
    # an atlas names one setting per attack: two training sets under one name are refused
    with pytest.raises(ValueError, match="attack 'Patch' on 'fashion-mnist' hold several"):
        plots.atlas_frame(t)


def test_every_module_that_identifies_runs_uses_the_sweeps_definition(eight):
    ident = sw.RUN_COLUMNS
    for c in ("dataset", "attack", "trigger", "poisoning", "target_mode", "rate", "target", "seed",
              "model", "epochs", "max_train"):
        assert c in ident, c
    assert set(ident) <= set(sw.COLUMNS)
    assert paper.RUN_COLUMNS is ident and plots.ATLAS_RUN_COLUMNS is ident
    assert paper.latest_per_run is sw.latest_per_run
    # what the atlas's figures keep is what the report keeps
    twice = pd.concat([eight, eight.assign(key=eight["key"] + "-2")], ignore_index=True)
    assert sorted(plots.atlas_frame(twice)["key"]) == sorted(sw.latest_per_run(twice)[0]["key"])
    # nowhere else in the package are rows told apart by a column list of its own
    root = Path(wb.__file__).parent
    for path in sorted(root.rglob("*.py")):
        if path.name in ("sweep.py", "sweepstore.py"):  # the definition's home, and its re-export
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("drop_duplicates", "duplicated"):
                pytest.fail(f"{path.name}:{node.lineno} tells runs apart by itself: use "
                            "workbench.sweep.latest_per_run / run_identity")


def test_rows_of_older_formats_have_a_well_defined_identity(tmp_path, eight):
    # a row-format-3 table (no atlas columns, no max_train): Patch 3x3 at 5%, as a plain sweep wrote
    row = _row("Patch", 0.05, 0.99, 0.2, key="f3f3f3f3f3f3")
    old = tmp_path / "old.csv"
    with open(old, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(sweepstore.FORMAT3_COLUMNS)
        w.writerow([3 if c == "row_format" else row[c] for c in sweepstore.FORMAT3_COLUMNS])
    read = sw.read_table(old)
    assert len(read) == 1 and read["row_format"].tolist() == [3]
    ident = sw.run_identity(read)
    assert list(ident.columns) == list(sw.RUN_COLUMNS)
    r = ident.iloc[0]
    assert (r["attack"], r["poisoning"], r["target_mode"]) == ("", "", "")
    assert pd.isna(r["max_train"])
    # never merged with a run of an attack, even where every column it has is equal
    both = pd.concat([read, eight], ignore_index=True)
    latest, superseded = sw.latest_per_run(both)
    assert superseded == 0 and len(latest) == 9
    # a DataFrame without a column of the identity: missing, like an empty value
    no_col = sw.run_identity(eight.drop(columns=["max_train", "attack"]))
    assert no_col["max_train"].isna().all() and (no_col["attack"] == "").all()


def test_a_missing_text_value_reads_back_missing_not_nan(tmp_path, eight):
    t = eight.copy()
    t["family"] = t["family"].astype(object)
    t.loc[0, "family"] = np.nan  # e.g. a column pandas filled in when concatenating tables
    t.loc[1, "family"] = None
    back = sw.read_table(sw.write_table(t, tmp_path / "t.csv"))
    assert back["family"].tolist()[:2] == ["", ""]
    assert "nan" not in (tmp_path / "t.csv").read_text().split("\n")[1]
    # rows made in memory: a missing text value is "", as a CSV's empty field reads
    made = sweepstore.rows_frame([{**_row("Patch", 0.05, 1.0, 0.2), "family": None, "torch": float("nan")}])
    assert made["family"].tolist() == [""] and made["torch"].tolist() == [""]
    # and a row missing a number column (a table built without max_train) still reads back
    assert len(sw.read_table(sw.write_table(pd.DataFrame(
        [{k: v for k, v in _row("Patch", 0.05, 1.0, 0.2).items() if k != "max_train"}],
        columns=sw.COLUMNS), tmp_path / "u.csv"))) == 1


def _fake_run_point(point: dict) -> dict:
    """A row for `point` without training: what run_point writes, with made-up numbers."""
    return _row(point["attack"], point["rate"], 0.9, 0.1, dataset=point["dataset"],
                max_train=point["max_train"], seed=point["seed"], key=point["key"])


def test_an_atlas_sweep_writes_the_atlas_table_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sw, "run_point", _fake_run_point)
    grid = atlas.atlas_grid(datasets=("digits",), attacks=("Patch", "Patch/all-to-all"),
                            seeds=(0,), rates="strong")
    assert sw.default_table(grid) == atlas.ATLAS_CSV == "reports/atlas.csv"
    table = sw.run_sweep(grid, max_workers=1, progress=False)
    assert len(table) == 2 and Path(atlas.ATLAS_CSV).is_file()
    assert not Path("reports/sweep.csv").exists()
    assert sw.default_table(sw.SweepGrid()) == "reports/sweep.csv"


def test_rows_of_row_format_4_are_completed_not_computed_again(tmp_path, monkeypatch):
    """A table written before the max_train column (row format 4): a sweep reusing its rows fills
    the column from the grid's points (their keys match: what keys cover did not change)."""
    monkeypatch.setitem(atlas.ATLAS_TRAINING, "digits", {"max_train": 1500})
    grid = atlas.atlas_grid(datasets=("digits",), attacks=("Patch",), seeds=(0,), rates="strong")
    (p,) = grid.points()
    assert p["max_train"] == 1500 and p["versions"]["row_format"] == 4  # the keys of format 4
    row = _fake_run_point(p)
    path = tmp_path / "atlas.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(sweepstore.FORMAT4_COLUMNS)
        w.writerow(["" if row[c] is None else 4 if c == "row_format" else
                    ";".join(map(repr, row[c])) if sw.COLUMN_TYPES[c] == "floats" else row[c]
                    for c in sweepstore.FORMAT4_COLUMNS])
    old = sw.read_table(path)
    assert old["row_format"].tolist() == [4] and old["max_train"].isna().all()
    assert sw.current_rows(old)[1] == 1  # its training-set size unknown: not used by a report

    def no_work(point):
        raise AssertionError("computed again")

    monkeypatch.setattr(sw, "run_point", no_work)
    with pytest.warns(UserWarning, match="completed from the sweep's grid points"):
        table = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert table.attrs["computed"] == [] and table["max_train"].tolist() == [1500]
    assert table["row_format"].tolist() == [sw.ROW_FORMAT] and table["gap"].tolist() == [0.1]
    read = sw.read_table(path)
    assert read["max_train"].tolist() == [1500] and sw.current_rows(read)[1] == 0
