"""The detection study over several independently trained models (issue 20), resumable.

One trained model per attack is not evidence: retraining the same digits configuration moved
STRIP's AUC on Sinusoid from 0.86 to 0.55. This study trains every attack of the atlas
(`DETECTION_ATTACKS`) with several seeds on each dataset, runs every detector on each model
(`detection_study.detection_measure`, both evaluation sets), scores every model as a whole
("is this model backdoored?", `detection.model_scores`), trains clean models of several seeds and
architectures as the negatives of that model-level test, and summarises:

    run_study        train and measure what is missing (resumable; several worker processes)
    load_study       the finished jobs of a configuration (a job computed under other settings
                     or another code version is not returned: it is done again)
    seed_rows        one row per (dataset, attack, seed, detector, evaluation set)
    seed_summary     per (dataset, attack, detector): mean, spread, min and max over seeds
    family_verdicts  per (dataset, family, detector): the band of the family's AUC on each seed
                     and "holds on every seed" or "depends on the seed"
    rankings         per (dataset, family): which detectors beat which on every seed
    model_level      per (dataset, model statistic): AUC over models with its interval, and
                     which attacks escape

Jobs are files: `<out>/<dataset>/<job>.json`, written atomically when a job ends, with the
settings, the code versions and package versions they came from. A worker claims a job with an
OS lock on `<job>.claim` (released by the kernel when the worker dies), so any number of workers,
started at any time, share the jobs and a killed study resumes where it stopped (models come from
the run cache). Seeds: the model's seed is the job's seed, and the detectors' draws (which test
inputs, STRIP's partners, noise) use the same seed, so two seeds differ in everything a
replication would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import atlas as _atlas, detection
from .._version import __version__
from ..base._validate import check_choice, check_int, check_sigmas
from ..base.data import DATASETS, load_dataset
from ..base.fileio import read_json, write_json
from ..base.models import MODELS
from ..estimator.smoothness import ESTIMATOR_VERSION
from ..training.crafting import CRAFT_VERSION
from ..training.train import environment
from .attack_registry import clean_model_run, training_args
from .detection import DETECTION_VERSION, METHODS, model_scores, roc_analysis
from .detection_study import (DETECTION_ATTACKS, DETECTION_MODEL, DETECTION_ORIGINAL,
                              check_detection_args, detection_measure, detection_rate,
                              detection_run)
from .experiments import default_sigmas

STUDY_VERSION = 1  # bump when what a job computes or records changes
SEEDS = (0, 1, 2)
# The model-level test's negatives: clean models of the detection architecture and two others
# (same training budget as the backdoored ones: `atlas.training_args`), 20 per dataset.
CLEAN_MODELS = (("small-cnn-bn", tuple(range(10))), ("small-cnn", tuple(range(5))),
                ("lenet5", tuple(range(5))))
# CBD's noise scales, tried on every model. The reference's default, 2.0, is for CIFAR-10's
# normalised inputs; on 16x16 digits in [0, 1] it drowns every image. `chosen_cbd_sigma` picks one
# per dataset from the clean models alone.
CBD_SIGMAS = (0.25, 0.5, 1.0, 2.0)
MODEL_PER_CLASS = 5  # correctly classified test images per class for the model-level scores
MODEL_CBD_SAMPLES = 512  # CBD's noisy copies per image (the reference: 1,024 of 1 image a class)
MODEL_W_SAMPLES = 128
DEFAULT_OUT = Path("reports") / "detection-seeds"
# Per-dataset changes to the shared settings (`study_settings`): Fashion-MNIST's 28x28 models cost
# about three times digits' per forward pass, so its models are scored on 100 + 100 inputs with
# 32 W_σ samples per σ (digits: 200 + 200, 64), which keeps the study near two hours on 2 cores.
DATASET_SETTINGS = {"fashion-mnist": {"n": 100, "n_samples": 32}}
BANDS = ((0.9, "detects"), (0.6, "partial"), (-math.inf, "misses"))  # AUC >= bound: band
EVALUATION_SETS = ("all", "filtered")
EVERY_ATTACK = "every attack"  # the summaries' pseudo-family: the mean over every attack


@dataclass(frozen=True)
class Job:
    """One unit of the study: an attack's model of one seed, or a clean model."""

    dataset: str
    kind: str  # "attack" or "clean"
    name: str  # the attack (DETECTION_ATTACKS) or the clean model's architecture (MODELS)
    seed: int

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", f"{self.kind}-{self.name}-seed{self.seed}").lower()


def band(auc: float) -> str:
    """"detects" (AUC >= 0.9), "partial" (0.6 <= AUC < 0.9) or "misses" (below 0.6, inverted
    scores included); NaN: "n/a" (no input left in a filtered set)."""
    if not np.isfinite(auc):
        return "n/a"
    return next(name for bound, name in BANDS if auc >= bound)


def _check_clean_models(clean_models):
    if isinstance(clean_models, (str, bytes)) or not isinstance(clean_models, (tuple, list)):
        raise TypeError("`clean_models` must be a tuple of (architecture, seeds) pairs; got "
                        f"{clean_models!r}.")
    out = []
    for item in clean_models:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError("`clean_models` must be a tuple of (architecture, seeds) pairs; got "
                            f"the item {item!r}.")
        arch, seeds = item
        check_choice("clean_models architecture", arch, MODELS)
        out.append((arch, tuple(check_int("clean_models seed", s, low=0) for s in seeds)))
    return tuple(out)


def study_settings(n: int = 200, n_samples: int = 64, methods=METHODS, n_boot: int = 1000,
                   model: str = DETECTION_MODEL, cbd_sigmas=CBD_SIGMAS,
                   per_class: int = MODEL_PER_CLASS, cbd_samples: int = MODEL_CBD_SAMPLES,
                   w_samples: int = MODEL_W_SAMPLES) -> dict:
    """The settings every job of a study shares (checked; part of each job's key)."""
    check_int("n", n, low=2)
    check_int("n_samples", n_samples, low=1)
    check_int("n_boot", n_boot, low=0)
    check_choice("model", model, MODELS)
    check_int("per_class", per_class, low=1)
    check_int("w_samples", w_samples, low=1)
    check_int("cbd_samples", cbd_samples, low=1)
    return {"n": n, "n_samples": n_samples, "methods": list(detection.check_methods(methods)),
            "n_boot": n_boot, "model": model,
            "cbd_sigmas": check_sigmas("cbd_sigmas", cbd_sigmas), "per_class": per_class,
            "cbd_samples": cbd_samples, "w_samples": w_samples}


def settings_for(settings: dict, dataset: str, overrides=None) -> dict:
    """The settings of `dataset`'s jobs: `settings` with `overrides[dataset]` (default
    DATASET_SETTINGS) applied and checked."""
    overrides = DATASET_SETTINGS if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise TypeError("`dataset_settings` must be a dict of dataset -> settings; got "
                        f"{type(overrides).__name__}.")
    extra = dict(overrides.get(dataset, {}))
    if not extra:
        return settings
    return study_settings(**{**settings, **extra})


def study_jobs(datasets=("digits", "fashion-mnist"), attacks=DETECTION_ATTACKS, seeds=SEEDS,
               clean_models=CLEAN_MODELS) -> list[Job]:
    """Every job, in the order workers take them: per dataset, seed by seed every attack, then
    the clean models."""
    if isinstance(datasets, str) or isinstance(attacks, str):
        raise TypeError("`datasets` and `attacks` must be tuples of names; got a str.")
    for ds in datasets:
        check_choice("datasets", ds, DATASETS)
    for a in attacks:
        check_choice("attacks", a, DETECTION_ATTACKS)
    seeds = tuple(check_int("seeds", s, low=0) for s in seeds)
    if not datasets or not (attacks or clean_models) or not seeds:
        raise ValueError("`datasets`, `seeds` and `attacks` or `clean_models` must each name at "
                         "least one; got none.")
    jobs = []
    for ds in datasets:
        jobs += [Job(ds, "attack", a, s) for s in seeds for a in attacks]
        jobs += [Job(ds, "clean", arch, s) for arch, ss in _check_clean_models(clean_models)
                 for s in ss]
    return jobs


def code_versions() -> dict:
    """The versions of the code a job's numbers depend on (part of its key, and recorded in a
    written summary so that a summary from other code is refused: `read_seeds_tables`)."""
    return {"workbench": __version__, "study": STUDY_VERSION, "detection": DETECTION_VERSION,
            "estimator": ESTIMATOR_VERSION, "craft": CRAFT_VERSION}


def job_config(job: Job, settings: dict) -> dict:
    """Everything a job's result depends on: its settings, the attack's definition (rate,
    trigger, training budget) and the code versions. Its hash is the job's key."""
    cfg = {"job": [job.dataset, job.kind, job.name, job.seed], "settings": settings,
           "training": training_args(job.dataset),
           "versions": code_versions()}
    if job.kind == "attack":
        a = _atlas.ATTACKS[job.name]
        cfg["attack"] = {"rate": detection_rate(job.dataset, job.name),
                         "original": job.name in DETECTION_ORIGINAL,
                         "trigger": json.loads(json.dumps(dict(a.trigger_config(job.dataset)),
                                                          default=repr))}
    return cfg


def job_key(job: Job, settings: dict) -> str:
    blob = json.dumps(job_config(job, settings), sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def job_path(out: Path, job: Job) -> Path:
    return Path(out) / job.dataset / f"{job.slug}.json"


def _result_dict(r) -> dict:
    return {"method": r.method, "evaluation": r.evaluation, "auc": r.auc,
            "auc_ci": list(r.auc_ci), "tpr_at_1_fpr": r.tpr_at_1_fpr,
            "tpr_at_1_fpr_ci": list(r.tpr_at_1_fpr_ci), "tpr_at_5_fpr": r.tpr_at_5_fpr,
            "tpr_at_5_fpr_ci": list(r.tpr_at_5_fpr_ci), "n_clean": int(r.n_clean),
            "n_triggered": int(r.n_triggered), "n_clean_total": int(r.n_clean_total),
            "n_triggered_total": int(r.n_triggered_total), "bootstrap": r.bootstrap,
            "seconds_per_input": r.seconds_per_input, "setup_seconds": r.setup_seconds,
            "clean_scores": [float(v) for v in r.clean_scores],
            "triggered_scores": [float(v) for v in r.triggered_scores]}


def _model_scores(model, data, settings: dict, seed: int) -> dict:
    """CBD at each of the settings' σ and the W_σ gap over the dataset's σ grid, on the same
    correctly classified test images (`per_class` per class, drawn with `seed`)."""
    out = {}
    common = dict(n_per_class=settings["per_class"], seed=seed)
    for i, s in enumerate(settings["cbd_sigmas"]):
        methods = ("cbd", "w-gap") if i == 0 else ("cbd",)
        ms = model_scores(model, data, methods, sigma=s, n_samples=settings["cbd_samples"],
                          w_sigmas=default_sigmas(data.name),
                          w_samples=settings["w_samples"], **common)
        for m in methods:
            name = f"cbd@{s:g}" if m == "cbd" else m
            out[name] = {"score": ms.scores[m], "se": ms.standard_errors[m],
                         "target": ms.targets[m]}
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def run_job(job: Job, settings: dict, data=None, progress: bool = False) -> dict:
    """Compute one job (training its model on first use: the run cache) and return its record."""
    t0 = time.perf_counter()
    data = data if data is not None else load_dataset(job.dataset)
    if job.kind == "attack":
        run = detection_run(data, job.name, settings["model"], progress, seed=job.seed)
    else:
        run = clean_model_run(data, seed=job.seed, model=job.name, progress=progress)
    t_train = time.perf_counter() - t0
    rec = {"job": {"dataset": job.dataset, "kind": job.kind, "name": job.name,
                   "seed": job.seed},
           "family": _atlas.ATTACKS[job.name].family if job.kind == "attack" else "clean",
           "architecture": settings["model"] if job.kind == "attack" else job.name,
           "run": {"clean_accuracy": run.clean_accuracy,
                   "attack_success_rate": run.attack_success_rate if job.kind == "attack"
                   else None, "rate": run.config["rate"], "poisoning": run.config.get("poisoning"),
                   "target_mode": run.config.get("target_mode"), "trigger": repr(run.trigger),
                   "train_seconds": run.train_seconds, "path": run.path}}
    t1 = time.perf_counter()
    if job.kind == "attack":
        entry = detection_measure(data, run, job.name, settings["n"], job.seed,
                                  settings["n_samples"], tuple(settings["methods"]),
                                  settings["n_boot"], evaluation="both")
        rec["detection"] = [_result_dict(r) for r in entry["results"]]
    t2 = time.perf_counter()
    rec["model_scores"] = _model_scores(run.model, data, settings, job.seed)
    t3 = time.perf_counter()
    rec["seconds"] = {"train_or_load": t_train, "detectors": t2 - t1, "model_scores": t3 - t2,
                      "total": t3 - t0}
    rec["peak_rss_mb"] = _peak_rss_mb()
    return rec


class _Claim:
    """An OS lock on `<job>.claim`: held while a worker computes the job, released by the kernel
    if the worker dies."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = None

    def __enter__(self) -> bool:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        return True

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays (harmless, reused)
        return False


def read_job(out: Path, job: Job, settings: dict) -> dict | None:
    """A finished job's record if it was computed with exactly these settings and code versions
    (its key), else None."""
    path = job_path(out, job)
    if not path.exists():
        return None
    rec = read_json(path, "detection-seeds job")
    return rec if isinstance(rec, dict) and rec.get("key") == job_key(job, settings) else None


def _work(out: Path, jobs: list[Job], settings: dict, log, overrides=None) -> int:
    done = 0
    datasets = {}
    base = settings
    for job in jobs:
        settings = settings_for(base, job.dataset, overrides)
        if read_job(out, job, settings) is not None:
            continue
        path = job_path(out, job)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _Claim(path.with_suffix(".claim")) as mine:
            if not mine or read_job(out, job, settings) is not None:
                continue  # another worker has it, or finished it meanwhile
            if job.dataset not in datasets:
                datasets[job.dataset] = load_dataset(job.dataset)
            rec = run_job(job, settings, datasets[job.dataset], progress=False)
            rec.update({"key": job_key(job, settings), "config": job_config(job, settings),
                        "environment": environment(), "finished": time.time()})
            write_json(path, rec)
            done += 1
        if log:
            best = ""
            if job.kind == "attack":
                aucs = {d["method"]: d["auc"] for d in rec["detection"] if d["evaluation"] == "all"}
                best = "  " + " ".join(f"{m} {v:.2f}" for m, v in aucs.items())
            log(f"{job.dataset:>13} {job.kind:<6} {job.name:<24} seed {job.seed}  acc "
                f"{rec['run']['clean_accuracy']:.3f}"
                + (f" ASR {rec['run']['attack_success_rate']:.3f}" if job.kind == "attack" else "")
                + best + f"  ({rec['seconds']['total']:.0f} s, peak {rec['peak_rss_mb']:.0f} MB)")
    return done


def _worker_main(out, jobs, settings, threads, overrides):  # a worker process (spawned)
    torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    _work(Path(out), jobs, settings, lambda m: print(m, flush=True), overrides)


def run_study(out=DEFAULT_OUT, datasets=("digits", "fashion-mnist"), attacks=DETECTION_ATTACKS,
              seeds=SEEDS, clean_models=CLEAN_MODELS, workers: int = 1, progress: bool = True,
              dataset_settings=None, **settings) -> dict:
    """Compute every job of the study that is missing under `out` (see the module's docstring)
    and return `load_study`'s result. `workers` > 1 starts that many processes (one torch thread
    each); more `run_study` calls, on this or another terminal, share the jobs the same way.
    `settings`: `study_settings`' (n, n_samples, methods, n_boot, model, cbd_sigmas,
    per_class, cbd_samples, w_samples), changed per dataset by `dataset_settings` (default
    DATASET_SETTINGS; {} for none). Every argument is checked before any work; IBD-PSC needs BatchNorm
    in the detection model."""
    st = study_settings(**settings)
    jobs = study_jobs(datasets, attacks, seeds, clean_models)
    for ds in datasets:
        dst = settings_for(st, ds, dataset_settings)
        check_detection_args(ds, tuple(attacks) or ("Patch",), dst["n"], 0, dst["n_samples"],
                             tuple(dst["methods"]), dst["model"], dst["n_boot"])
    check_int("workers", workers, low=1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda m: print(m, flush=True)) if progress else None
    if workers == 1:
        _work(out, jobs, st, log, dataset_settings)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(str(out), jobs, st, 1, dataset_settings))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            raise
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise RuntimeError(f"{len(bad)} of {workers} workers failed (exit codes {bad}); the "
                               "finished jobs are kept: run the study again to resume.")
    return load_study(out, datasets, attacks, seeds, clean_models,
                      dataset_settings=dataset_settings, **settings)


def load_study(out=DEFAULT_OUT, datasets=("digits", "fashion-mnist"), attacks=DETECTION_ATTACKS,
               seeds=SEEDS, clean_models=CLEAN_MODELS, dataset_settings=None,
               **settings) -> dict:
    """The finished jobs of this configuration under `out`: {"settings" (shared), "by_dataset"
    (each dataset's effective settings), "records" (one per finished job, in `study_jobs`
    order), "missing" (the jobs not finished with these settings and code versions)}. Nothing
    is computed."""
    st = study_settings(**settings)
    per = {ds: settings_for(st, ds, dataset_settings) for ds in datasets}
    records, missing = [], []
    for job in study_jobs(datasets, attacks, seeds, clean_models):
        rec = read_job(Path(out), job, per[job.dataset])
        (records.append(rec) if rec is not None else missing.append(job))
    return {"settings": st, "by_dataset": per, "records": records, "missing": missing}


# --- summaries ---------------------------------------------------------------------------------

def _attack_records(study: dict) -> list[dict]:
    return [r for r in study["records"] if r["job"]["kind"] == "attack"]


def seed_rows(study: dict, evaluation: str = "all") -> list[dict]:
    """One row per (dataset, attack, seed, detector) on one evaluation set: the model's clean
    accuracy and ASR, AUC [95% CI], TPR at 1% and 5% FPR, and the inputs counted (of how many)."""
    check_choice("evaluation", evaluation, EVALUATION_SETS)
    rows = []
    for rec in _attack_records(study):
        j = rec["job"]
        for d in rec["detection"]:
            if d["evaluation"] != evaluation:
                continue
            rows.append({"dataset": j["dataset"], "attack": j["name"], "family": rec["family"],
                         "seed": j["seed"], "clean acc.": rec["run"]["clean_accuracy"],
                         "ASR": rec["run"]["attack_success_rate"], "method": d["method"],
                         "auc": d["auc"], "auc_ci": tuple(d["auc_ci"]),
                         "tpr1": d["tpr_at_1_fpr"], "tpr5": d["tpr_at_5_fpr"],
                         "n_clean": d["n_clean"], "n_clean_total": d["n_clean_total"],
                         "n_triggered": d["n_triggered"],
                         "n_triggered_total": d["n_triggered_total"]})
    return rows


def _spread(values) -> dict:
    v = np.asarray(values, float)
    ok = v[np.isfinite(v)]
    return {"mean": float(ok.mean()) if len(ok) else math.nan,
            "sd": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
            "min": float(ok.min()) if len(ok) else math.nan,
            "max": float(ok.max()) if len(ok) else math.nan,
            "values": [float(x) for x in v], "n": int(len(ok))}


def seed_summary(study: dict, evaluation: str = "all", metric: str = "auc") -> list[dict]:
    """Per (dataset, attack, detector): `metric` ("auc", "tpr1", "tpr5") on each seed, its mean,
    standard deviation (ddof 1), min and max over seeds, and the mean ASR."""
    check_choice("metric", metric, ("auc", "tpr1", "tpr5"))
    groups: dict[tuple, list] = {}
    for r in seed_rows(study, evaluation):
        groups.setdefault((r["dataset"], r["attack"], r["method"]), []).append(r)
    out = []
    for (ds, attack, method), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        out.append({"dataset": ds, "attack": attack, "family": rs[0]["family"], "method": method,
                    "seeds": [r["seed"] for r in rs], "asr": float(np.mean([r["ASR"] for r in rs])),
                    **_spread([r[metric] for r in rs])})
    return out


def _family_aucs(study: dict, evaluation: str) -> dict:
    """(dataset, family, method) -> {seed: mean AUC over the family's attacks on that seed};
    family EVERY_ATTACK: over every attack of the study."""
    acc: dict[tuple, dict] = {}
    for r in seed_rows(study, evaluation):
        for fam in (r["family"], EVERY_ATTACK):
            acc.setdefault((r["dataset"], fam, r["method"]), {}).setdefault(
                r["seed"], []).append(r["auc"])
    return {k: {s: float(np.mean(v)) for s, v in sorted(d.items())} for k, d in acc.items()}


def family_verdicts(study: dict, evaluation: str = "all") -> list[dict]:
    """Per (dataset, family, detector): the family's mean AUC on each seed, its band on each
    seed (`band`: detects >= 0.9 > partial >= 0.6 > misses) and the verdict: "holds on every
    seed: <band>" where every seed gives the same band, "depends on the seed" where they differ,
    and no verdict where a seed has no AUC (a filtered set left without inputs)."""
    order = {f: i for i, f in enumerate(_atlas.FAMILIES)}
    rows = []
    for (ds, fam, method), per_seed in sorted(
            _family_aucs(study, evaluation).items(),
            key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), METHODS.index(kv[0][2])
                            if kv[0][2] in METHODS else 99)):
        bands = [band(v) for v in per_seed.values()]
        if len(per_seed) < 3:
            verdict = f"fewer than 3 seeds ({len(per_seed)})"
        elif "n/a" in bands:  # a filtered set without inputs: no AUC, so no verdict
            verdict = "n/a on a seed (no inputs left)"
        elif len(set(bands)) == 1:
            verdict = f"holds on every seed: {bands[0]}"
        else:
            verdict = "depends on the seed"
        rows.append({"dataset": ds, "family": fam, "method": method,
                     "per_seed": per_seed, "bands": bands, "verdict": verdict,
                     **{k: v for k, v in _spread(list(per_seed.values())).items()
                        if k in ("mean", "min", "max")}})
    return rows


def rankings(study: dict, evaluation: str = "all", methods=None) -> list[dict]:
    """Per (dataset, family): the detectors ordered by their mean family AUC over seeds, the
    pairs (a, b) where a's family AUC is above b's on every seed (at least 3 seeds), and "best":
    the detectors above every other on every seed (empty where no ranking holds across seeds)."""
    fam = _family_aucs(study, evaluation)
    groups: dict[tuple, dict] = {}
    for (ds, f, m), per_seed in fam.items():
        if methods is None or m in methods:
            groups.setdefault((ds, f), {})[m] = per_seed
    order = {f: i for i, f in enumerate(_atlas.FAMILIES)}
    rows = []
    for (ds, f), ms in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        seeds = sorted(set.intersection(*(set(v) for v in ms.values())))
        mean = {m: float(np.mean([v[s] for s in seeds])) for m, v in ms.items()}
        names = sorted(ms, key=lambda m: -mean[m])
        beats = [(a, b) for a in names for b in names if a != b and len(seeds) >= 3
                 and all(ms[a][s] > ms[b][s] for s in seeds)]
        best = [a for a in names if all((a, b) in beats for b in names if b != a)]
        rows.append({"dataset": ds, "family": f, "seeds": seeds, "order": names, "mean": mean,
                     "beats": beats, "best": best})
    return rows


def chosen_cbd_sigma(study: dict, dataset: str) -> float:
    """CBD's σ for `dataset`, chosen from the clean models alone (no backdoored model is looked
    at): the σ of the settings' grid whose mean LDP over the clean models is lowest, where noise
    spreads a clean model's votes most evenly over the classes, which leaves the most room for a
    backdoor's target class to dominate (at a σ that drowns the image every model sends noise to
    one class, and the LDP of clean and backdoored models alike is near 1)."""
    clean = [r for r in study["records"]
             if r["job"]["kind"] == "clean" and r["job"]["dataset"] == dataset]
    if not clean:
        raise ValueError(f"`study` must hold clean models of {dataset!r} to choose CBD's σ; "
                         "got none.")
    means = {s: np.mean([r["model_scores"][f"cbd@{s:g}"]["score"] for r in clean])
             for s in study["settings"]["cbd_sigmas"]}
    return float(min(means, key=means.get))


def model_level(study: dict, n_boot: int = 2000, seed: int = 0,
                negatives: str = "all") -> list[dict]:
    """"Is this model backdoored?" over models, per (dataset, statistic: CBD at each σ, w-gap):
    the AUC of the statistic separating the backdoored models (every attack × seed: positives)
    from the clean ones (negatives: "all" the clean models, or "same-architecture", those of
    the detection model's architecture), with a bootstrap 95% interval (models resampled within
    each group), TPR at the threshold flagging at most 5% of the clean models, per attack the
    seeds whose model stays at or below that threshold ("escapes"), and how many all-to-one
    backdoored models the statistic's suspected class names their target (class 0)."""
    check_choice("negatives", negatives, ("all", "same-architecture"))
    rows = []
    for ds in dict.fromkeys(r["job"]["dataset"] for r in study["records"]):
        recs = [r for r in study["records"] if r["job"]["dataset"] == ds]
        pos = [r for r in recs if r["job"]["kind"] == "attack"]
        neg = [r for r in recs if r["job"]["kind"] == "clean"]
        if negatives == "same-architecture":
            neg = [r for r in neg if r["architecture"] == study["settings"]["model"]]
        if not pos or len(neg) < 2:
            continue
        chosen = chosen_cbd_sigma(study, ds)
        for stat in neg[0]["model_scores"]:
            c = np.array([r["model_scores"][stat]["score"] for r in neg])
            t = np.array([r["model_scores"][stat]["score"] for r in pos])
            res = roc_analysis(stat, c, t, paired=False, n_boot=n_boot, seed=seed)
            thr = np.sort(c)[::-1][int(math.floor(0.05 * len(c)))]  # flags <= 5% of clean
            escapes: dict[str, list] = {}
            for r in pos:
                if r["model_scores"][stat]["score"] <= thr:
                    escapes.setdefault(r["job"]["name"], []).append(r["job"]["seed"])
            one = [r for r in pos if r["run"].get("target_mode", "all-to-one") != "all-to-all"]
            named = sum(r["model_scores"][stat]["target"] == 0 for r in one)  # the study's target
            rows.append({"dataset": ds, "statistic": stat, "target_named": named,
                         "target_models": len(one),
                         "chosen": stat == f"cbd@{chosen:g}", "auc": res.auc,
                         "auc_ci": tuple(res.auc_ci), "tpr_at_5_fpr": res.tpr_at_5_fpr,
                         "n_backdoored": len(t), "n_clean": len(c), "negatives": negatives,
                         "escapes": escapes, "threshold": float(thr),
                         "models_per_attack": {a: sum(r["job"]["name"] == a for r in pos)
                                               for a in dict.fromkeys(r["job"]["name"]
                                                                      for r in pos)}})
    return rows


def study_times(study: dict) -> list[dict]:
    """Per dataset: the jobs' summed wall time (training or loading, detectors, model scores),
    the largest single job and the largest peak RSS of a worker."""
    rows = []
    for ds in dict.fromkeys(r["job"]["dataset"] for r in study["records"]):
        recs = [r for r in study["records"] if r["job"]["dataset"] == ds]
        sec = lambda k: float(sum(r["seconds"][k] for r in recs))  # noqa: E731
        rows.append({"dataset": ds, "jobs": len(recs), "train_or_load_s": sec("train_or_load"),
                     "detectors_s": sec("detectors"), "model_scores_s": sec("model_scores"),
                     "total_s": sec("total"),
                     "longest_job_s": max(r["seconds"]["total"] for r in recs),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in recs)})
    return rows


__all__ = ["code_versions", "EVERY_ATTACK", "BANDS", "CBD_SIGMAS", "CLEAN_MODELS", "DEFAULT_OUT", "Job", "SEEDS", "STUDY_VERSION",
           "band", "chosen_cbd_sigma", "DATASET_SETTINGS", "family_verdicts", "job_config", "job_key",
           "job_path", "settings_for",
           "load_study", "model_level", "rankings", "read_job", "run_job", "run_study",
           "seed_rows", "seed_summary", "study_jobs", "study_settings", "study_times"]
