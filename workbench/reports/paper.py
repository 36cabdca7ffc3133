"""The paper's findings on real data, assembled into `reports/paper.html`: attack strength, training
dynamics, artificial patterns on a clean model, detection and the attack atlas. Each section lives in
its own module (`sweep_section`, `dynamics_section`, `patterns_section`, `detection_report`,
`atlas_section`); this module assembles them and keeps their public names for notebooks
(`from workbench.paper import pattern_study`, ...)."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pandas as pd

from . import plots
from ..base._validate import check_choice, check_int
from ..base.data import DATASETS, load_dataset
from ..studies.experiments import smoothing_dynamics
from ..base.fileio import write_json
from ..studies.patterns import pattern_table
from .report import percent, runs_phrase, table_html, write_report
from ..studies.sweep import ROW_FORMAT, check_table, read_table
from ..training.train import environment

# the sections: write_paper assembles them, and their public names stay importable from here
# (notebooks, scripts)
from ..studies.sweep import RUN_COLUMNS, current_rows, latest_per_run  # noqa: F401
from ..studies.detection_study import (DETECTION_ATTACKS, DETECTION_MODEL, DETECTION_ORIGINAL,  # noqa: F401
                                       DETECTION_RATES, REPORT_DETECTION_ATTACKS,
                                       check_detection_args, detection_atlas, detection_attack,
                                       detection_measure, detection_rate, detection_run,
                                       detection_study, detection_trigger)
from ..studies.pattern_study import (pattern_size_study, pattern_sizes, pattern_study,  # noqa: F401
                                     size_table)
from .sweep_section import (attack_strength_table, correlation_table, headline,  # noqa: F401
                            report_rows, run_settings, sweep_findings)
from .dynamics_section import dynamics_finding, dynamics_heatmap, first_epochs  # noqa: F401
from .patterns_section import pattern_findings, pattern_size_rows  # noqa: F401
from .detection_seeds_section import RECORDED_SUMMARY, read_seeds_tables
from .detection_report import (detection_costs, detection_families, detection_finding,  # noqa: F401
                               detection_heatmap, detection_report, detection_roc,
                               detection_rows, detection_summary, detection_table,
                               write_detection_report)
from .atlas_section import (atlas_correlations, atlas_findings, atlas_rows,  # noqa: F401
                            atlas_table, atlas_verdicts, attack_atlas_section,
                            has_atlas)


def write_paper(table: pd.DataFrame, out: str | Path = "reports/paper.html", *,
                dynamics: list[dict] | None = None, patterns: dict[int, list] | None = None,
                detection: tuple | None = None, dataset: str = "digits",
                provenance: dict | None = None, atlas: pd.DataFrame | None = None,
                seeds: dict | None = None) -> dict:
    """Write the paper report to `out` (offline HTML) and `out` with .json (the summary) from a
    sweep table (`read_table`'s DataFrame: only rows of this row format are used, one per trained
    run) and the studies' results on `dataset`: `dynamics` (`smoothing_dynamics`' rows),
    `patterns` (`pattern_sizes`' {size: measurements}), `detection` (`detection_study`'s (run,
    DetectionResults)); a study left None is left out. `provenance`: the command, seeds and
    settings that made it (versions are added). `atlas`: the attack atlas's table (`read_table`
    of `python -m workbench sweep --atlas`'s CSV) for the "Attack atlas" section
    (`attack_atlas_section`), its findings and summary["atlas"]; None leaves the section out. An
    `atlas` without rows of at least two attacks of this row format is refused. `seeds`: the
    multi-seed detection study's summary (`read_seeds_tables`): the detection finding's verdict
    and the rankings and model-level rows of `dataset` come from it; None: the detection section
    shows one model and states no ranking. Returns the summary."""
    check_table("table", table)
    if seeds is not None and not (isinstance(seeds, dict) and isinstance(seeds.get("tables"), dict)
                                  and isinstance(seeds.get("rankings"), dict)):
        raise TypeError("`seeds` must be None or a detection-seeds summary (`read_seeds_tables`); "
                        f"got {type(seeds).__name__}.")
    if not isinstance(out, (str, Path)):
        raise TypeError(f"`out` must be a str or a Path; got {out!r}.")
    for name, v, kind in (("dynamics", dynamics, list), ("patterns", patterns, dict),
                          ("detection", detection, tuple), ("provenance", provenance, dict)):
        if v is not None and not isinstance(v, kind):
            raise TypeError(f"`{name}` must be None or a {kind.__name__}; got {type(v).__name__}.")
    if atlas is not None:
        check_table("atlas", atlas)
        atlas_used, atlas_counts = atlas_rows(atlas)
        if not has_atlas(atlas_used):
            raise ValueError(f"`atlas` must hold rows of at least two attacks (column `attack`) of "
                             f"this version's row format ({ROW_FORMAT}); its {len(atlas)} rows hold "
                             f"{atlas_used['attack'].nunique() if len(atlas_used) else 0}. Run "
                             "`python -m workbench sweep --atlas` (trained runs come from the cache).")
    rows, counts = report_rows(table)
    if not len(rows):
        raise ValueError(f"`table` must hold rows of row format {ROW_FORMAT} (this version's); it "
                         f"holds {len(table)} rows of older formats, which are never used: run the "
                         "sweep again (trained runs come from the cache).")
    head = headline(rows)
    findings = sweep_findings(rows, head)
    summary: dict = {"correlations": head, "sweep_rows_superseded": counts["superseded"],
                     "sweep_rows_stale": counts["stale"]}
    stale_note = "".join([
        f" Left out: {runs_phrase(counts['superseded'], 'older measurement')} of the same runs."
        if counts["superseded"] else "",
        f" Ignored: {runs_phrase(counts['stale'], 'row')} of an older row format (written by an earlier "
        "workbench)." if counts["stale"] else ""])
    sections = [("Attack strength", [
        "<p class='note'>Claim 4: smoothing grows with the attack's success. Each row is one "
        f"trained run ({run_settings(rows)}). Rate-0 rows are clean-model controls: the trigger "
        "on a model trained without poisoning. The smoothing gap is mean W<sub>σ</sub>(clean) − "
        "mean W<sub>σ</sub>(triggered) over the σ grid (> 0: triggered inputs smoother); the "
        "radius gap is the shift of the σ at which W<sub>σ</sub> first exceeds 10% of log K. "
        "Intervals: 95% t-intervals over pairs; p: Wilcoxon signed-rank." + stale_note + "</p>",
        table_html(attack_strength_table(rows)),
        "<h3>Correlation across runs</h3>", table_html(correlation_table(head)),
        "<p class='note'>Spearman's ρ over distinct runs, 95% Fisher-z interval.</p>",
        plots.attack_strength(rows), plots.rate_curves(rows)])]
    atlas_section = attack_atlas_section(atlas_used) if atlas is not None else None
    if atlas_section is not None:
        sections.append(atlas_section)
        findings.extend(atlas_findings(atlas_used))
        summary["atlas"] = {"runs": len(atlas_used), "rows_read": atlas_counts["read"],
                            "families": [{k: v for k, v in e.items() if k != "measured"}
                                         for e in atlas_verdicts(atlas_used)],
                            "correlations": atlas_correlations(atlas_used)}
    if dynamics:
        a, g = first_epochs(dynamics)
        summary["dynamics"] = {"first_epoch_asr_ge_0.9": a, "first_epoch_gap_ci_above_0": g}
        findings.append(dynamics_finding(dynamics, dataset))
        sections.append(("Training dynamics", [
            f"<p class='note'>A backdoor (3×3 patch, 5%, target 0) trained on {dataset} while the "
            "clean/triggered comparison is measured on fixed test pairs after every epoch. First "
            f"epoch with ASR ≥ 0.9: {a if a is not None else 'none'}; first epoch whose gap "
            f"interval lies above 0: {g if g is not None else 'none'}.</p>",
            plots.dynamics(dynamics), dynamics_heatmap(dynamics)]))
    if patterns:
        by_size = size_table(patterns)
        largest = max(patterns)
        summary.update({"patterns_size": largest, "patterns": pattern_table(patterns[largest]),
                        "patterns_by_size": by_size})
        findings.extend(pattern_findings(patterns, dataset))
        sections.append(("Artificial patterns without poisoning", [
            "<p class='note'>Claim 5: patterns crafted on a clean model (no poisoning), at the "
            "centre of the image: a universal adversarial patch per size, with the white patch and "
            "random patches of the same size as controls. Success rate: the share of non-target "
            "test inputs the pattern sends to class 0.</p>",
            table_html(pattern_size_rows(patterns)), plots.pattern_sizes(by_size),
            f"<h3>The {largest}×{largest} patterns in detail</h3>",
            plots.patterns_figure(patterns[largest])]))
    if detection:
        det_run, detection = detection
        attack = type(det_run.trigger).__name__
        summary["detection"] = [{"method": d.label, "name": d.method, "auc": round(d.auc, 4),
                                 "auc_ci": [round(v, 4) for v in d.auc_ci],
                                 "tpr_at_1_fpr": round(d.tpr_at_1_fpr, 4),
                                 "tpr_at_5_fpr": round(d.tpr_at_5_fpr, 4),
                                 "ms_per_input": round(1000 * d.seconds_per_input, 3)}
                                for d in detection]
        findings.append(detection_finding(detection, dataset, attack, seeds))
        cfg = det_run.config
        sections.append(("Detection", [
            f"<p class='note'>One attack: {html.escape(repr(det_run.trigger))} at "
            f"{percent(cfg['rate'])}, target {cfg['target']}, model {html.escape(cfg['model'])} "
            f"(clean accuracy {det_run.clean_accuracy:.3f}, ASR {det_run.attack_success_rate:.3f}); "
            f"{len(detection[0].clean_scores)} clean vs {len(detection[0].triggered_scores)} "
            "triggered test inputs; intervals: bootstrap 95%. Every detector on every attack: "
            "<code>python -m workbench.detection</code> (reports/detection.html).</p>",
            table_html(detection_rows(detection)),
            detection_roc(detection, title=f"Detecting triggered inputs: {dataset}, {attack}")]
            + ([] if seeds is None else [
                f"<h3>Over seeds ({seeds['jobs']} models of the multi-seed study)</h3><p "
                "class='note'>A detector is named best for a family only if its family AUC is "
                "above every other's on every seed (all inputs).</p>",
                table_html([r for r in seeds["tables"]["rankings all"]
                            if r["dataset"] == dataset]),
                "<h3>Is this model backdoored? (AUC over models)</h3>",
                table_html([r for r in seeds["tables"]["model level"]
                            if r["dataset"] == dataset])])))
    summary["findings"] = [{k: html.unescape(re.sub("<[^>]+>", "", str(v))) for k, v in f.items()}
                           for f in findings]
    sections.insert(0, ("Summary of findings", [
        table_html(findings, classes="findings"),
        "<p class='note'>Verdicts are read from the 95% intervals: “smoother” when every interval "
        "lies above 0, “less smooth” when every one lies below, “mixed” otherwise. Green: as the "
        "paper (Grosse et al. 2022) says; red: against it.</p>"]))
    datasets = ", ".join(sorted(rows["dataset"].unique()))
    meta = dict(provenance or {})
    meta["sweep rows"] = {"read": len(table), "used (one per run)": len(rows),
                          "older row format, ignored": counts["stale"],
                          "superseded measurements": counts["superseded"],
                          "row format": ROW_FORMAT,
                          "sweep seeds": sorted(int(s) for s in rows["seed"].unique()),
                          "made with workbench": sorted(rows["workbench"].unique().tolist()),
                          "made with torch": sorted(rows["torch"].unique().tolist())}
    if atlas_section is not None:
        meta["atlas rows"] = {"read": atlas_counts["read"], "used (one per run)": len(atlas_used),
                              "attacks": atlas_used["attack"].nunique(),
                              "seeds": sorted(int(v) for v in atlas_used["seed"].unique())}
    meta["versions"] = environment()
    command = meta.get("command")
    write_report(out, "Backdoor smoothing: the paper's findings, reproduced", sections,
                 metadata=meta,
                 subtitle=f"{len(rows)} sweep runs on {html.escape(datasets)}"
                          + (f"; studies on {html.escape(dataset)}" if dynamics or patterns or detection else "")
                          + (f". Made by <code>{html.escape(command)}</code>" if command else "")
                          + f" on {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    write_json(Path(out).with_suffix(".json"), summary, default=str)
    return summary


def paper_report(sweep_csv: str | Path = "reports/sweep.csv", out: str | Path = "reports/paper.html",
                 dataset: str = "digits", seed: int = 0, n_pairs: int | None = None,
                 n_samples: int | None = None, command: str | None = None,
                 atlas: str | Path | pd.DataFrame | None = None,
                 seeds: str | Path | None = "recorded") -> dict:
    """Write `out` (offline HTML) and `out` with .json (the summary) from a sweep's CSV and the
    dynamics, pattern and detection studies on `dataset` (`write_paper`).

    n_pairs, n_samples: None keeps each study's default (dynamics 40 pairs × 32 samples, patterns
    100 × 64, detection 200 clean and 200 triggered inputs × 64); a number sets all three
    (smaller is faster, with wider intervals). command: how it was called, for the provenance
    (default: this call, in Python). Only rows of this version's row format are used: a CSV of
    older rows only is refused before any study runs.

    atlas: the attack atlas for its section, a CSV path (`python -m workbench sweep --atlas`
    writes `workbench.atlas.ATLAS_CSV`, reports/atlas.csv) or its `read_table` DataFrame; None
    leaves the section out. A path that does not
    exist, or a table without rows of at least two attacks of this row format, is refused before
    any study runs.

    seeds: the multi-seed detection study's summary for the detection verdict: "recorded" (the
    study in benchmarks/, `RECORDED_SUMMARY`, where present), a path to one
    (`python -m workbench.detection --seeds ...` writes reports/detection-seeds.json) or None.
    """
    t0 = time.perf_counter()
    check_choice("dataset", dataset, DATASETS)
    check_int("seed", seed, low=0)
    if seeds == "recorded":
        seeds = read_seeds_tables() if RECORDED_SUMMARY.exists() else None
    elif seeds is not None:
        if not isinstance(seeds, (str, Path)):
            raise TypeError(f"`seeds` must be None, 'recorded' or a path; got {seeds!r}.")
        seeds = read_seeds_tables(seeds)
    for name, v in (("n_pairs", n_pairs), ("n_samples", n_samples)):
        if v is not None:
            check_int(name, v, low=4)
    if command is not None and not isinstance(command, str):
        raise TypeError(f"`command` must be None or a str; got {command!r}.")
    atlas_source, atlas_is_path = None, isinstance(atlas, (str, Path))
    if atlas_is_path:
        atlas_source = str(atlas)
        if not Path(atlas).is_file():
            raise FileNotFoundError(f"`atlas` {atlas} does not exist: run `python -m workbench sweep "
                                    f"--atlas --out {atlas}` first, or leave `atlas` None.")
        atlas = read_table(atlas)
    elif atlas is not None and not isinstance(atlas, pd.DataFrame):
        raise TypeError("`atlas` must be None, a path to an atlas CSV or its `read_table` "
                        f"DataFrame; got {type(atlas).__name__}.")
    elif atlas is not None:
        atlas_source = "a DataFrame"
    if atlas is not None:  # refused now, not after the studies
        check_table("atlas", atlas)
        if not has_atlas(atlas_rows(atlas)[0]):
            raise ValueError(f"`atlas` ({atlas_source}) must hold rows of at least two attacks "
                             f"(column `attack`) of this version's row format ({ROW_FORMAT}); it "
                             f"holds {len(atlas)} rows and no such atlas. Run `python -m workbench "
                             "sweep --atlas` (trained runs come from the cache).")
    table = read_table(sweep_csv)
    rows, counts = report_rows(table)
    if not len(rows):
        if len(table):
            raise ValueError(f"`sweep_csv` {sweep_csv} must hold rows of this version's row format "
                             f"({ROW_FORMAT}); its {len(table)} rows were written by an older "
                             "workbench and are never used. Run the same `python -m workbench "
                             f"sweep --out {sweep_csv}` again (trained runs come from the cache).")
        raise FileNotFoundError(f"`sweep_csv` {sweep_csv} holds no rows: run `python -m workbench "
                                "sweep` first.")
    data = load_dataset(dataset)
    settings = {"dynamics": {"pairs": n_pairs or 40, "samples": n_samples or 32},
                "patterns": {"pairs": n_pairs or 100, "samples": n_samples or 64},
                "detection": {"inputs": n_pairs or 200, "samples": n_samples or 64}}
    dyn = smoothing_dynamics(data, n_pairs=settings["dynamics"]["pairs"],
                             n_samples=settings["dynamics"]["samples"], seed=seed)
    measured = pattern_sizes(dataset, seed=seed, n_pairs=settings["patterns"]["pairs"],
                             n_samples=settings["patterns"]["samples"])
    # the detection study's Patch attack, every detector (the full study: `detection_report`)
    dets = detection_study(dataset, seed=seed, n=settings["detection"]["inputs"],
                           n_samples=settings["detection"]["samples"],
                           attack=REPORT_DETECTION_ATTACKS[0])
    if command is None:
        command = (f"workbench.paper.paper_report({str(sweep_csv)!r}, {str(out)!r}, "
                   f"dataset={dataset!r}, seed={seed}, n_pairs={n_pairs}, n_samples={n_samples}"
                   + (f", atlas={atlas_source!r})" if atlas_is_path else ")"))
    provenance = {"command": command, "sweep table": str(sweep_csv)}
    if atlas_source is not None:
        provenance["atlas table"] = atlas_source
    return write_paper(table, out, dynamics=dyn, patterns=measured, detection=dets,
                       dataset=dataset, atlas=atlas, seeds=seeds, provenance={
                           **provenance,
                           "study seed": seed, "study dataset": dataset,
                           "study settings": settings,
                           "seconds": round(time.perf_counter() - t0, 1)})
