"""The multi-seed detection study (issue 20): resumable jobs keyed by what they compute, the
summaries' verdicts and rankings, and the model-level AUC against an independent computation."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from workbench.studies import detection_seeds as ds
import workbench.reports.detection_seeds_section as sec
from workbench.reports.detection_report import main as detection_main

FAMILY = {"Patch": "visible patch", "Checkerboard": "visible patch", "Blend": "blended"}


def _rec(dataset, attack, seed, aucs, family=None, model_score=None, kind="attack",
         arch="small-cnn-bn", filtered=None):
    """A finished job's record with the fields the summaries read."""
    rec = {"job": {"dataset": dataset, "kind": kind, "name": attack, "seed": seed},
           "family": family or FAMILY.get(attack, "clean"), "architecture": arch,
           "run": {"clean_accuracy": 0.98, "attack_success_rate": 1.0 if kind == "attack" else None},
           "seconds": {"train_or_load": 1.0, "detectors": 2.0, "model_scores": 3.0, "total": 6.0},
           "peak_rss_mb": 100.0,
           "model_scores": {"cbd@0.5": {"score": model_score, "se": 0.01, "target": 0},
                            "cbd@1": {"score": 1 - (model_score or 0), "se": 0.01, "target": 0},
                            "w-gap": {"score": model_score, "se": 0.01, "target": 0}}}
    if kind == "attack":
        det = []
        for ev, table in (("all", aucs), ("filtered", filtered or aucs)):
            for m, a in table.items():
                det.append({"method": m, "evaluation": ev, "auc": a, "auc_ci": [a - .05, a + .05],
                            "tpr_at_1_fpr": a / 2, "tpr_at_5_fpr": a / 1.5, "n_clean": 200,
                            "n_triggered": 200 if ev == "all" else 150, "n_clean_total": 200,
                            "n_triggered_total": 200})
        rec["detection"] = det
    return rec


def _study(records, cbd_sigmas=(0.5, 1.0)):
    return {"settings": {"model": "small-cnn-bn", "cbd_sigmas": cbd_sigmas, "methods": ["strip"],
                         "n": 200, "n_samples": 64, "n_boot": 1000},
            "records": records, "missing": []}


def test_band_edges():
    assert ds.band(0.9) == "detects" and ds.band(0.8999) == "partial"
    assert ds.band(0.6) == "partial" and ds.band(0.5999) == "misses" and ds.band(0.1) == "misses"
    assert ds.band(math.nan) == "n/a"


def test_verdicts_hold_only_when_every_seed_agrees():
    recs = []
    for seed, (strip, w) in enumerate([(0.99, 0.95), (0.97, 0.70), (0.95, 0.92)]):
        recs.append(_rec("digits", "Patch", seed, {"strip": strip, "w-mean": w}))
    v = {r["method"]: r for r in ds.family_verdicts(_study(recs)) if r["family"] != ds.EVERY_ATTACK}
    assert v["strip"]["verdict"] == "holds on every seed: detects"
    assert v["w-mean"]["verdict"] == "depends on the seed"
    assert v["w-mean"]["bands"] == ["detects", "partial", "detects"]
    assert v["strip"]["per_seed"] == {0: 0.99, 1: 0.97, 2: 0.95}
    # two seeds are not enough for a verdict either way
    two = ds.family_verdicts(_study(recs[:2]))
    assert len(two) == 4
    assert all(r["verdict"].startswith("fewer than 3 seeds") for r in two)


def test_no_verdict_where_a_seeds_filtered_set_has_no_inputs():
    """A filtered set left empty has AUC NaN: that seed has no band, which is not a change of band
    ("depends on the seed" was printed) nor a verdict either way."""
    recs = [_rec("digits", "Patch", s, {"strip": 0.95}, filtered={"strip": a})
            for s, a in enumerate((math.nan, math.nan, math.nan))]
    v = ds.family_verdicts(_study(recs), "filtered")[0]
    assert v["bands"] == ["n/a"] * 3 and v["verdict"] == "n/a on a seed (no inputs left)"
    recs[0]["detection"][1]["auc"] = 0.95
    v = ds.family_verdicts(_study(recs), "filtered")[0]
    assert v["verdict"] == "n/a on a seed (no inputs left)"
    assert ds.family_verdicts(_study(recs), "all")[0]["verdict"] == "holds on every seed: detects"


def test_family_auc_is_the_mean_over_the_familys_attacks_per_seed():
    recs = [_rec("digits", "Patch", s, {"strip": 1.0}) for s in range(3)]
    recs += [_rec("digits", "Checkerboard", s, {"strip": 0.5}) for s in range(3)]
    v, every = ds.family_verdicts(_study(recs))
    assert v["per_seed"] == {0: 0.75, 1: 0.75, 2: 0.75} and v["verdict"].endswith("partial")
    assert every["family"] == ds.EVERY_ATTACK and every["per_seed"] == v["per_seed"]
    recs += [_rec("digits", "Blend", s, {"strip": 0.0}) for s in range(3)]
    every = ds.family_verdicts(_study(recs))[-1]
    assert every["family"] == ds.EVERY_ATTACK and every["per_seed"] == {0: 0.5, 1: 0.5, 2: 0.5}


def test_rankings_state_a_winner_only_if_it_wins_on_every_seed():
    recs = [_rec("digits", "Patch", 0, {"strip": 0.9, "w-mean": 0.8, "teco": 0.5}),
            _rec("digits", "Patch", 1, {"strip": 0.7, "w-mean": 0.8, "teco": 0.5}),
            _rec("digits", "Patch", 2, {"strip": 0.9, "w-mean": 0.85, "teco": 0.6})]
    r, _ = ds.rankings(_study(recs))
    assert r["best"] == []  # strip has the highest mean but loses seed 1
    assert ("strip", "teco") in r["beats"] and ("w-mean", "teco") in r["beats"]
    assert ("strip", "w-mean") not in r["beats"] and ("w-mean", "strip") not in r["beats"]
    recs[1]["detection"][0]["auc"] = 0.95  # now strip wins every seed
    r, every = ds.rankings(_study(recs))
    assert every["family"] == ds.EVERY_ATTACK
    assert r["best"] == ["strip"]
    rows = sec.ranking_rows(_study(recs))
    assert rows[0]["best on every seed"] == "strip"


def test_rankings_need_three_seeds():
    recs = [_rec("digits", "Patch", s, {"strip": 0.9, "teco": 0.5}) for s in range(2)]
    r, _ = ds.rankings(_study(recs))
    assert r["beats"] == [] and r["best"] == []


def test_evaluation_sets_are_summarised_separately():
    recs = [_rec("digits", "Patch", s, {"strip": 0.55}, filtered={"strip": 0.95})
            for s in range(3)]
    st = _study(recs)
    assert ds.family_verdicts(st, "all")[0]["verdict"].endswith("misses")
    assert ds.family_verdicts(st, "filtered")[0]["verdict"].endswith("detects")
    assert len(ds.family_verdicts(st, "all")) == 2  # the family and every attack
    row = ds.seed_rows(st, "filtered")[0]
    assert (row["n_triggered"], row["n_triggered_total"]) == (150, 200)
    with pytest.raises(ValueError, match="evaluation"):
        ds.seed_rows(st, "successful")


def test_model_level_auc_matches_sklearn_and_names_the_attacks_that_escape():
    rng = np.random.default_rng(0)
    neg = [_rec("digits", "small-cnn-bn", s, {}, kind="clean", model_score=float(v))
           for s, v in enumerate(rng.uniform(0.1, 0.5, 20))]
    pos = [_rec("digits", "Patch", s, {"strip": 1.0}, model_score=0.9) for s in range(3)]
    pos += [_rec("digits", "Blend", s, {"strip": 1.0}, model_score=v)
            for s, v in enumerate((0.05, 0.95, 0.2))]
    study = _study(neg + pos)
    rows = {r["statistic"]: r for r in ds.model_level(study, n_boot=200)}
    c = [r["model_scores"]["w-gap"]["score"] for r in neg]
    t = [r["model_scores"]["w-gap"]["score"] for r in pos]
    y = np.r_[np.zeros(len(c)), np.ones(len(t))]
    assert rows["w-gap"]["auc"] == pytest.approx(roc_auc_score(y, np.r_[c, t]))
    lo, hi = rows["w-gap"]["auc_ci"]
    assert lo <= rows["w-gap"]["auc"] <= hi
    # the threshold flags at most 5% of the 20 clean models: one
    thr = rows["w-gap"]["threshold"]
    assert sum(v > thr for v in c) <= 1
    assert rows["w-gap"]["escapes"] == {"Blend": [0, 2]}
    assert rows["w-gap"]["models_per_attack"] == {"Patch": 3, "Blend": 3}
    assert (rows["w-gap"]["n_backdoored"], rows["w-gap"]["n_clean"]) == (6, 20)
    assert (rows["w-gap"]["target_named"], rows["w-gap"]["target_models"]) == (6, 6)
    # CBD's σ is chosen from the clean models alone: the lowest mean LDP (cbd@0.5 here)
    assert ds.chosen_cbd_sigma(study, "digits") == 0.5
    assert rows["cbd@0.5"]["chosen"] and not rows["cbd@1"]["chosen"]
    table = sec.model_level_rows(study)
    assert any("Blend (2 of 3)" in r["escape (seeds)"] for r in table)


def test_model_level_can_take_only_the_detection_architectures_clean_models():
    neg = [_rec("digits", a, s, {}, kind="clean", arch=a, model_score=0.1 * s)
           for a in ("small-cnn-bn", "lenet5") for s in range(3)]
    pos = [_rec("digits", "Patch", s, {"strip": 1.0}, model_score=0.9) for s in range(3)]
    (row, *_), = [[r for r in ds.model_level(_study(neg + pos), n_boot=0,
                                             negatives="same-architecture")
                   if r["statistic"] == "w-gap"]]
    assert row["n_clean"] == 3


def test_jobs_and_settings_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="clean_models architecture"):
        ds.study_jobs(("digits",), ("Patch",), (0,), (("vgg", (0,)),))
    with pytest.raises(ValueError, match="seeds"):
        ds.study_jobs(("digits",), ("Patch",), (-1,))
    with pytest.raises(TypeError, match="datasets"):
        ds.study_jobs("digits")
    with pytest.raises(ValueError, match="attacks"):
        ds.study_jobs(("digits",), ("WaNet",))
    with pytest.raises(ValueError, match="n_boot"):
        ds.run_study(tmp_path, ("digits",), ("Patch",), (0,), (), n_boot=-1)
    with pytest.raises(ValueError, match="workers"):
        ds.run_study(tmp_path, ("digits",), ("Patch",), (0,), (), workers=0)
    assert not any(tmp_path.iterdir())  # nothing written


def test_job_key_follows_settings_and_code_versions(monkeypatch):
    job = ds.Job("digits", "attack", "Patch", 0)
    st = ds.study_settings()
    k = ds.job_key(job, st)
    assert ds.job_key(job, ds.study_settings(n=100)) != k
    assert ds.job_key(ds.Job("digits", "attack", "Patch", 1), st) != k
    monkeypatch.setattr(ds, "DETECTION_VERSION", ds.DETECTION_VERSION + 1)
    assert ds.job_key(job, st) != k


def test_per_dataset_settings_change_only_that_datasets_jobs():
    st = ds.study_settings()
    assert ds.settings_for(st, "digits") == st
    fm = ds.settings_for(st, "fashion-mnist")
    assert (fm["n"], fm["n_samples"]) == (100, 32) and fm["methods"] == st["methods"]
    assert ds.settings_for(st, "fashion-mnist", {}) == st
    with pytest.raises(ValueError, match="`n`"):
        ds.settings_for(st, "digits", {"digits": {"n": 1}})
    with pytest.raises(TypeError, match="dataset_settings"):
        ds.settings_for(st, "digits", [("digits", {})])


_TINY = dict(n=20, n_samples=4, n_boot=20, methods=("strip", "w-mean"), cbd_sigmas=(0.5,),
             per_class=1, cbd_samples=16, w_samples=4)


@pytest.mark.slow
def test_study_resumes_and_recomputes_only_what_changed(tmp_path, monkeypatch):
    """Real jobs on digits (the detection study's Patch model, shared with test_detection through
    the run cache, and a clean small CNN): a second call computes nothing; other settings, or a
    record with another key, are computed again; a job another worker holds is left to it."""
    args = dict(datasets=("digits",), attacks=("Patch",), seeds=(0,),
                clean_models=(("small-cnn-bn", (0,)),), progress=False, **_TINY)
    study = ds.run_study(tmp_path, **args)
    assert len(study["records"]) == 2 and not study["missing"]
    patch = next(r for r in study["records"] if r["job"]["kind"] == "attack")
    evals = {d["evaluation"] for d in patch["detection"]}
    assert evals == {"all", "filtered"} and len(patch["detection"]) == 4
    filt = next(d for d in patch["detection"] if d["evaluation"] == "filtered")
    assert filt["n_clean_total"] == 20 and filt["n_clean"] <= 20
    assert set(patch["model_scores"]) == {"cbd@0.5", "w-gap"}
    assert patch["config"]["settings"]["n"] == 20 and "torch" in patch["environment"]

    def no_work(*a, **k):
        raise AssertionError("a finished job was computed again")

    monkeypatch.setattr(ds, "run_job", no_work)
    again = ds.run_study(tmp_path, **args)
    assert [r["key"] for r in again["records"]] == [r["key"] for r in study["records"]]

    # a record computed under other settings is not returned, and is the one job redone
    path = ds.job_path(tmp_path, ds.Job("digits", "clean", "small-cnn-bn", 0))
    rec = json.loads(path.read_text())
    rec["key"] = "0" * 20
    path.write_text(json.dumps(rec))
    loaded = ds.load_study(tmp_path, **{k: v for k, v in args.items() if k != "progress"})
    assert [j.slug for j in loaded["missing"]] == ["clean-small-cnn-bn-seed0"]
    calls = []
    monkeypatch.setattr(ds, "run_job", lambda job, *a, **k: calls.append(job) or rec)
    ds.run_study(tmp_path, **args)
    assert [j.slug for j in calls] == ["clean-small-cnn-bn-seed0"]

    # a claim held by another worker: this one leaves the job alone
    path.unlink()
    calls.clear()
    with ds._Claim(path.with_suffix(".claim")) as mine:
        assert mine
        st = ds.study_settings(**_TINY)
        assert ds._work(tmp_path, [ds.Job("digits", "clean", "small-cnn-bn", 0)], st,
                        None) == 0
    assert calls == [] and not path.exists()


@pytest.mark.slow
def test_command_line_writes_the_seeds_report_from_finished_jobs(tmp_path, capsys):
    args = ["--seeds", "0", "--datasets", "digits", "--attacks", "Patch", "--no-clean",
            "--study-dir", str(tmp_path / "jobs"), "--out", str(tmp_path / "seeds.html"),
            "--n", "20", "--samples", "4", "--boot", "20", "--methods", "strip", "w-mean",
            "--quiet"]
    assert detection_main(args + ["--report-only"]) == 2  # nothing finished yet: refused
    assert "at least one finished job" in capsys.readouterr().err
    assert detection_main(args) == 0
    md = (tmp_path / "seeds.md").read_text()
    assert "Family verdicts" in md and "fewer than 3 seeds" in md
    assert json.loads((tmp_path / "seeds.json").read_text())["settings"]["n"] == 20
    assert "Detection over seeds" in (tmp_path / "seeds.html").read_text()
    tables = sec.read_seeds_tables(tmp_path / "seeds.json")["tables"]
    assert tables["auc all"][0]["attack"] == "Patch" and "strip" in tables["auc all"][0]


def test_reading_a_summary_refuses_what_is_not_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--seeds"):
        sec.read_seeds_tables(tmp_path / "none.json")
    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a detection-seeds summary"):
        sec.read_seeds_tables(tmp_path / "x.json")


def test_a_summary_written_by_other_code_is_refused(tmp_path):
    """The recorded summary is shown by notebook 07 and the paper report beside numbers computed
    now: one written before a detector's scores changed (DETECTION_VERSION) would have been shown
    as this code's."""
    summary = sec.read_seeds_tables()  # the recorded one is this code's
    assert summary["versions"] == ds.code_versions()
    assert summary["rankings"]["all"] and summary["tables"]["rankings all"]
    older = dict(summary, versions=dict(summary["versions"], detection=0))
    (tmp_path / "old.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="written by other code"):
        sec.read_seeds_tables(tmp_path / "old.json")
    del older["versions"]
    (tmp_path / "old.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="written by other code"):
        sec.read_seeds_tables(tmp_path / "old.json")


def test_the_reports_detection_finding_ranks_only_from_the_seeds_study():
    from workbench.reports.detection_report import detection_finding
    from workbench.studies.detection import roc_analysis

    dets = [roc_analysis("strip", [0, 1, 2], [3, 4, 5], n_boot=0),
            roc_analysis("w-mean", [0, 1, 2], [1, 2, 3], n_boot=0)]
    f = detection_finding(dets, "digits", "Patch")
    assert "no ranking: one model" in str(f["verdict"]) and f["measured"].startswith("one model")
    row = {"dataset": "digits", "family": "visible patch", "best": ["strip"],
           "seeds": [0, 1, 2], "mean": {"strip": 0.99, "w-mean": 0.80}}
    f = detection_finding(dets, "digits", "Patch", {"rankings": {"all": [row]}})
    assert "strip best on all 3 seeds (visible patch): not a W_σ score" in str(f["verdict"])
    assert f["measured"].endswith("over seeds: top strip 0.99, w-mean 0.80")
    row["best"] = []
    f = detection_finding(dets, "digits", "Patch", {"rankings": {"all": [row]}})
    assert "no detector is best on all 3 seeds" in str(f["verdict"])
    # another dataset's or family's row is not used
    f = detection_finding(dets, "fashion-mnist", "Patch", {"rankings": {"all": [row]}})
    assert "no ranking" in str(f["verdict"])


@pytest.mark.slow
def test_python_m_with_worker_processes(tmp_path):
    """`python -m workbench.detection --seeds ... --workers 2` (the README's and `make
    detection-seeds`' command): its spawned workers import the main module again, which ran the
    command again in each worker (both failed, exit 2) before the alias's main was guarded."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "workbench.detection", "--seeds", "0", "--datasets", "digits",
           "--attacks", "Patch", "--no-clean", "--workers", "2", "--study-dir",
           str(tmp_path / "jobs"), "--out", str(tmp_path / "r.html"), "--n", "20", "--samples",
           "4", "--boot", "20", "--methods", "strip", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jobs finished        1 (0 missing)" in done.stdout
    assert (tmp_path / "r.md").exists()
