"""The attack atlas's figures (workbench.plots.atlas_*) and report section
(workbench.paper.attack_atlas_section) on a small atlas table built by hand: rows of this row
format whose `max_train` is left out (written empty, read back missing: the whole training set),
written to a CSV with `write_table` and read back with `read_table`, so the tuple columns (sigmas,
curves) take the path a real atlas takes. No model is trained."""

import math

import numpy as np
import pandas as pd
import pytest

import workbench as wb
from workbench import paper, plots
from workbench.report import table_html
from workbench.sweep import COLUMNS, ROW_FORMAT, read_table, write_table

SIGMAS = {"digits": tuple(np.round(np.linspace(0.05, 0.6, 12), 4).tolist()),
          "fashion-mnist": tuple(np.round(np.linspace(0.02, 0.4, 12), 4).tolist())}

# (attack, family, trigger type, size, poisoning, target mode): names and families as in
# workbench.atlas.ATTACKS
ATTACKS = {
    "Patch": ("visible patch", "Patch", 3, "dirty-label", "all-to-one"),
    "Pixel": ("visible patch", "Pixel", 1, "dirty-label", "all-to-one"),
    "Blend": ("blended", "Blend", 1, "dirty-label", "all-to-one"),
    "Sinusoid": ("blended", "Sinusoid", 1, "dirty-label", "all-to-one"),
    "Warp": ("imperceptible", "Warp", 1, "dirty-label", "all-to-one"),
    "TrojanNN": ("optimised", "TrojanNN", 1, "dirty-label", "all-to-one"),
    "Patch/all-to-all": ("all-to-all", "Patch", 3, "dirty-label", "all-to-all"),
}
# gap interval at the strong rate per attack and seed: (low, high); the gap is the midpoint
STRONG = {
    "Patch": [(0.11, 0.36), (0.05, 0.30)],          # above 0 on both seeds
    "Pixel": [(0.02, 0.20), (0.01, 0.15)],          # above 0 on both seeds -> family smoother
    "Blend": [(0.08, 0.25), (0.10, 0.31)],          # above 0 on both seeds
    "Sinusoid": [(0.05, 0.22), (-0.04, 0.10)],      # one seed includes 0 -> family mixed
    "Warp": [(-0.30, -0.12), (-0.25, -0.02)],       # below 0 on both seeds -> reversed
    "TrojanNN": [(-0.10, 0.08), (-0.02, 0.12)],     # includes 0 -> not shown
    "Patch/all-to-all": [(0.03, 0.19), (0.04, 0.21)],
}
RATES = {"digits": (0.005, 0.05), "fashion-mnist": (0.001, 0.05)}
L2 = {"Patch": 2.1, "Pixel": 0.9, "Blend": 1.4, "Sinusoid": 2.9, "Warp": 0.6, "TrojanNN": 3.3,
      "Patch/all-to-all": 2.1}


def _row(attack, dataset, rate, seed, lo, hi, asr):
    fam, kind, size, poisoning, mode = ATTACKS[attack]
    sig = SIGMAS[dataset]
    gap = (lo + hi) / 2
    clean = tuple(round(1.2 * (1 - math.exp(-4 * s)), 4) for s in sig)
    trig = tuple(round(max(c - gap * (1.2 - 0.5 * i / len(sig)), 0.0), 4) for i, c in enumerate(clean))
    return {"key": f"{attack}|{dataset}|{rate}|{seed}", "row_format": ROW_FORMAT, "dataset": dataset,
            "attack": attack, "family": fam, "trigger": f"{kind}(size={size})", "trigger_type": kind,
            "trigger_size": size, "trigger_l2": L2[attack] * (1.7 if dataset == "fashion-mnist" else 1),
            "trigger_linf": 1.0 if kind in ("Patch", "Pixel") else 0.2, "poisoning": poisoning,
            "target_mode": mode, "rate": rate, "target": 0, "seed": seed, "model": "small-cnn",
            "epochs": 8, "clean_accuracy": 0.95, "attack_success_rate": asr, "gap": gap,
            "gap_ci_low": lo, "gap_ci_high": hi, "p_value": 0.01, "radius_gap": gap / 4,
            "radius_gap_ci_low": lo / 4, "radius_gap_ci_high": hi / 4, "radius_p_value": 0.02,
            "clean_mean_W": float(np.mean(clean)), "triggered_mean_W": float(np.mean(trig)),
            "n_pairs": 50, "n_samples": 64, "sigma_min": sig[0], "sigma_max": sig[-1],
            "sigmas": sig, "clean_curve": clean, "triggered_curve": trig, "train_seconds": 9.5,
            "torch": "2.14.1", "workbench": wb.__version__}


def _rows(datasets=("digits",)):
    out = []
    for ds in datasets:
        weak, strong = RATES[ds]
        for i, (attack, cis) in enumerate(STRONG.items()):
            for seed, (lo, hi) in enumerate(cis):
                out.append(_row(attack, ds, strong, seed, lo, hi, asr=0.80 + 0.02 * i + 0.01 * seed))
                # the weak rate: a weaker attack, gap around 0
                out.append(_row(attack, ds, weak, seed, -0.12 + 0.01 * i, 0.06 + 0.01 * i,
                                asr=0.20 + 0.05 * i))
    return out


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Digits and Fashion-MNIST, 7 attacks × 2 rates × 2 seeds, through the CSV and back."""
    path = tmp_path_factory.mktemp("atlas") / "atlas.csv"
    write_table(pd.DataFrame(_rows(("digits", "fashion-mnist")), columns=COLUMNS), path)
    t = read_table(path)
    # rows in a shuffled order, as several workers append them
    return t.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_the_table_round_trips_its_curves(table):
    assert len(table) == 7 * 2 * 2 * 2
    assert isinstance(table["sigmas"].iloc[0], tuple) and len(table["sigmas"].iloc[0]) == 12


def test_gap_vs_asr_has_one_panel_per_dataset_and_one_legend_entry_per_family(table):
    fig = plots.atlas_gap_vs_asr(table)
    assert [a.text for a in fig.layout.annotations] == ["digits", "fashion-mnist"]
    families = ["visible patch", "blended", "imperceptible", "optimised", "all-to-all"]
    assert [t.name for t in fig.data] == families * 2  # display order, per panel
    assert [t.name for t in fig.data if t.showlegend] == families
    assert {t.xaxis for t in fig.data} == {"x", "x2"}
    patch = fig.data[0]  # visible patch on digits: Patch and Pixel, 2 rates × 2 seeds
    assert len(patch.x) == 8
    assert {c[0] for c in patch.customdata} == {"Patch", "Pixel"}
    # error bars are the rows' intervals
    t = table[(table.dataset == "digits") & (table.family == "visible patch")]
    assert sorted(np.round(np.asarray(patch.y) + np.asarray(patch.error_y.array), 6)) == \
        sorted(np.round(t["gap_ci_high"], 6))
    # filled at the strong rate, open at the weak one
    assert sum(s == "circle" for s in patch.marker.symbol) == 4
    assert fig.layout.width <= 1200
    assert any(s.type == "line" and s.y0 == 0 for s in fig.layout.shapes)  # the zero line


def test_gap_vs_norm_uses_a_log_axis_and_leaves_out_rows_without_a_norm(table):
    fig = plots.atlas_gap_vs_norm(table)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert sum(len(t.x) for t in fig.data) == len(table)
    t = table.copy()
    t.loc[t.attack == "Warp", "trigger_l2"] = float("nan")
    fig = plots.atlas_gap_vs_norm(t)
    assert sum(len(tr.x) for tr in fig.data) == len(t) - 8
    assert "8 rows without a norm left out" in fig.layout.title.text
    assert plots.atlas_gap_vs_norm(table, norm="trigger_linf").data
    with pytest.raises(ValueError, match="`norm` must be one of"):
        plots.atlas_gap_vs_norm(table, norm="l2")


def test_curves_are_one_panel_per_attack_averaged_over_seeds_at_the_strong_rate(table):
    fig = plots.atlas_curves(table, dataset="digits")
    assert [a.text for a in fig.layout.annotations] == list(STRONG)  # display order
    assert len(fig.data) == 2 * len(STRONG)  # clean and triggered per panel
    assert fig.layout.width <= 1200
    t = table[(table.attack == "Warp") & (table.dataset == "digits") & (table.rate == 0.05)]
    assert len(t) == 2
    warp = [tr for tr in fig.data if "Warp" in tr.hovertemplate]
    assert [tr.name for tr in warp] == ["clean", "triggered"]
    np.testing.assert_allclose(warp[1].y, np.mean(np.stack(t["triggered_curve"].map(np.array)), 0))
    np.testing.assert_allclose(warp[1].x, SIGMAS["digits"])
    # both datasets: one line style each, and the legend names them
    both = plots.atlas_curves(table)
    assert len(both.data) == 4 * len(STRONG)
    assert {tr.line.dash for tr in both.data} == {"solid", "dash"}
    assert [tr.name for tr in both.data if tr.showlegend] == [
        "clean · digits", "triggered · digits", "clean · fashion-mnist", "triggered · fashion-mnist"]
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        plots.atlas_curves(table, dataset="cifar10")


def test_curves_refuse_seeds_on_different_sigma_grids(table):
    t = table.copy()
    i = t.index[(t.attack == "Blend") & (t.dataset == "digits") & (t.rate == 0.05) & (t.seed == 1)][0]
    t.at[i, "sigmas"] = tuple(s * 2 for s in t.at[i, "sigmas"])
    with pytest.raises(ValueError, match="'Blend' on 'digits'.*different σ grids"):
        plots.atlas_curves(t, dataset="digits")


def test_section_verdicts_per_family(table):
    v = {e["family"]: e for e in paper.atlas_verdicts(table[table.dataset == "digits"])}
    assert list(v) == ["visible patch", "blended", "imperceptible", "optimised", "all-to-all"]
    assert (v["visible patch"]["verdict"], v["visible patch"]["tone"]) == ("smoother", "yes")
    assert (v["imperceptible"]["verdict"], v["imperceptible"]["tone"]) == ("reversed", "no")
    assert (v["optimised"]["verdict"], v["optimised"]["tone"]) == ("not shown", "none")
    assert v["blended"]["tone"] == "mixed"
    assert v["blended"]["verdict"] == ("mixed: 1 smoother, 0 reversed, 1 not shown (of 2 attack × "
                                       "dataset pairs)")
    assert v["all-to-all"]["verdict"] == "smoother"
    # only the strong rate counts: the weak rate's intervals include 0 everywhere
    assert all(c["rate"] == 0.05 for e in v.values() for c in e["cells"])
    assert v["visible patch"]["cells"][0]["seeds"] == [0, 1]
    # one seed: the verdict says so
    one = paper.atlas_verdicts(table[(table.dataset == "digits") & (table.seed == 0)])
    assert one[0]["verdict"] == "smoother (one seed only)"


def test_section_table_is_sorted_and_formatted(table):
    t = paper.atlas_table(table)
    assert list(t.columns) == ["Attack", "Family", "Dataset", "Rate", "Seed", "Clean acc.", "ASR",
                               "Gap [95% CI]", "Radius gap [95% CI]", "Trigger L2 / L∞"]
    assert len(t) == len(table)
    order = ["visible patch", "blended", "imperceptible", "optimised", "all-to-all"]
    assert list(dict.fromkeys(t["Family"])) == order
    assert list(dict.fromkeys(t["Attack"])) == list(STRONG)
    first = t.iloc[:8]  # Patch: digits then fashion-mnist, weak rate first, seeds in order
    assert list(first["Dataset"]) == ["digits"] * 4 + ["fashion-mnist"] * 4
    assert list(first["Rate"][:4]) == ["0.5%", "0.5%", "5%", "5%"]
    assert list(first["Seed"][:4]) == [0, 1, 0, 1]
    row = t[(t.Attack == "Patch") & (t.Dataset == "digits") & (t.Rate == "5%") & (t.Seed == 0)].iloc[0]
    assert row["Gap [95% CI]"] == "+0.235 [+0.110, +0.360]"
    assert row["Radius gap [95% CI]"] == "+0.059 [+0.028, +0.090]"
    assert row["Trigger L2 / L∞"] == "2.1 / 1"
    assert row["ASR"] == "0.800" and row["Clean acc."] == "0.950"
    assert "<td class='num'>+0.235 [+0.110, +0.360]</td>" in table_html(t)


def test_section_holds_summary_correlations_table_and_figures(table):
    title, parts = paper.attack_atlas_section(table)
    assert title == "Attack atlas"
    html = "".join(p for p in parts if isinstance(p, str))
    assert "verdict yes'>smoother</span>" in html and "verdict no'>reversed</span>" in html
    assert "Spearman ρ (gap, ASR) [95% CI]" in html and "all datasets" in html
    figs = [p for p in parts if not isinstance(p, str)]
    assert len(figs) == 4  # gap vs ASR, gap vs L2, curves on each dataset
    corr = paper.atlas_correlations(table)
    assert list(corr) == ["digits", "fashion-mnist", "all datasets"]
    d = table[table.dataset == "digits"]
    from workbench.stats import spearman_ci
    s = spearman_ci(d["attack_success_rate"], d["gap"])
    assert corr["digits"]["runs"] == 28
    assert corr["digits"]["asr"]["rho"] == round(s["rho"], 3)
    assert corr["digits"]["asr"]["ci"] == [round(c, 3) for c in s["ci"]]
    findings = paper.atlas_findings(table)
    assert len(findings) == 5 + 3


def test_section_is_none_without_an_atlas(table):
    assert paper.attack_atlas_section(table[table.attack == "Patch"]) is None
    assert paper.attack_atlas_section(table.iloc[:0]) is None
    older = table.assign(row_format=ROW_FORMAT - 1)  # rows of an older workbench are never used
    assert paper.attack_atlas_section(older) is None
    plain = table.assign(attack="")  # a plain trigger sweep without attack names
    assert paper.attack_atlas_section(plain) is None
    with pytest.raises(ValueError, match="must hold atlas rows"):
        plots.atlas_gap_vs_asr(plain)


def test_duplicate_measurements_of_a_run_count_once(table):
    again = table[table.attack == "Warp"].assign(key=lambda d: d["key"] + "-again",
                                                  gap=0.5, gap_ci_low=0.4, gap_ci_high=0.6)
    t = pd.concat([table, again], ignore_index=True)
    rows, counts = paper.atlas_rows(t)
    assert counts == {"read": len(t), "used": len(table)}
    v = {e["family"]: e["verdict"] for e in paper.atlas_verdicts(t[t.dataset == "digits"])}
    assert v["imperceptible"] == "smoother"  # the later measurement replaces the earlier


def test_one_attack_name_with_several_triggers_is_refused(table):
    t = table.copy()
    t.loc[(t.attack == "Patch") & (t.seed == 1), "trigger_size"] = 2
    with pytest.raises(ValueError, match="attack 'Patch' on '.*' hold several triggers"):
        plots.atlas_gap_vs_asr(t)


def test_write_paper_takes_the_atlas(table, tmp_path):
    sweep = table[table.attack == "Patch"]  # a sweep table of one attack: no atlas of its own
    out = tmp_path / "paper.html"
    s = paper.write_paper(sweep, out)
    assert "atlas" not in s and "Attack atlas" not in out.read_text()
    s = paper.write_paper(sweep, out, atlas=table)
    text = out.read_text()
    assert "<h2 id='attack-atlas'>Attack atlas</h2>" in text
    assert [f["family"] for f in s["atlas"]["families"]] == [
        "visible patch", "blended", "imperceptible", "optimised", "all-to-all"]
    assert s["atlas"]["runs"] == len(table)
    assert any(f["finding"].startswith("Attack atlas: imperceptible") and f["verdict"] == "reversed"
               for f in s["findings"])
    with pytest.raises(ValueError, match="`atlas` must hold rows of at least two attacks"):
        paper.write_paper(sweep, out, atlas=sweep)
    with pytest.raises(TypeError, match="`atlas` must be a pandas DataFrame"):
        paper.write_paper(sweep, out, atlas="reports/atlas.csv")


def test_paper_report_refuses_a_bad_atlas_before_any_study(table, tmp_path):
    sweep = tmp_path / "sweep.csv"
    write_table(table[table.attack == "Patch"], sweep)
    with pytest.raises(FileNotFoundError, match="`atlas` .*missing.csv does not exist"):
        paper.paper_report(sweep, tmp_path / "p.html", atlas=tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="`atlas` .* must hold rows of at least two attacks"):
        paper.paper_report(sweep, tmp_path / "p.html", atlas=sweep)
    with pytest.raises(TypeError, match="`atlas` must be None, a path"):
        paper.paper_report(sweep, tmp_path / "p.html", atlas=3)
