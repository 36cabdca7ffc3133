"""`python -m workbench ...`: the command line.

    python -m workbench demo [--dataset digits] [--out reports/demo.html]
    python -m workbench sweep [--datasets digits fashion-mnist] [--workers 2] [--dask ADDRESS]
        (resumable: Ctrl-C keeps the finished runs; the same command continues)
    python -m workbench sweep --atlas [--attacks Patch BPP ...] [--workers 2]
        (the attack atlas: every attack, digits and Fashion-MNIST, two rates, seeds 0 and 1,
        into reports/atlas.csv)
    python -m workbench report [--sweep reports/sweep.csv] [--atlas reports/atlas.csv]
        [--out reports/paper.html]
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from ..base.data import DATASETS


def _demo(args) -> int:
    from ..reports import plots
    from ..base.data import load_dataset
    from ..studies.experiments import default_sigmas, smoothing_analysis
    from ..reports.report import table_html, write_report
    from ..training.train import environment, train_backdoor
    from ..attacks.triggers import Patch

    t0 = time.perf_counter()
    data = load_dataset(args.dataset)
    run = train_backdoor(data, trigger=Patch(size=args.trigger_size), rate=args.rate,
                         target=args.target, model=args.model, seed=args.seed,
                         progress=not args.quiet)
    sigmas = default_sigmas(data.name)
    an = smoothing_analysis(run, data, sigmas, n_pairs=args.pairs, n_samples=args.samples,
                            seed=args.seed, progress=not args.quiet)
    cmp = an.comparison
    lo, hi = cmp.gap_ci
    print(f"dataset              {data.name} ({len(data.y_train)} train / {len(data.y_test)} test)")
    print(f"trigger              {run.trigger!r}, rate {args.rate}, target {args.target}")
    print(f"clean accuracy       {run.clean_accuracy:.4f}")
    print(f"attack success rate  {run.attack_success_rate:.4f}")
    print(f"smoothing gap        {cmp.gap:.4f} nats  (95% CI [{lo:.4f}, {hi:.4f}], "
          f"Wilcoxon p = {cmp.p_value:.2g}, {cmp.n_pairs} pairs, mean W over σ in "
          f"[{sigmas[0]}, {sigmas[-1]}])")
    rows = [{"clean accuracy": run.clean_accuracy, "attack success rate": run.attack_success_rate,
             "smoothing gap (nats)": cmp.gap, "gap 95% CI": f"[{lo:.4f}, {hi:.4f}]",
             "Wilcoxon p": f"{cmp.p_value:.2g}", "pairs": cmp.n_pairs,
             "training time (s)": round(run.train_seconds, 1)}]
    note = ("<p class='note'>W<sub>σ</sub> is the entropy (nats) of the model's votes over "
            f"{args.samples} Gaussian-noise copies of each input (method.md). Lower is smoother. "
            "The smoothing gap is the mean over pairs of (mean W of the clean curve − mean W of "
            "the triggered curve): positive means the decision function is smoother around "
            "triggered inputs. Bands are 95% t-intervals of the mean over inputs.</p>")
    out = write_report(
        args.out, f"Backdoor smoothing demo: {data.name}",
        [("Summary", [table_html(rows), note]),
         ("Inputs", [plots.image_pairs(an.pairs.clean, an.pairs.triggered, an.pairs.labels,
                                       data.classes, 8, an.triggered_predictions)]),
         ("Training", [plots.training_curves(run.history)]),
         ("Smoothness", [plots.smoothness_curves(cmp.clean, cmp.triggered, per_input=10),
                         plots.summary_distribution(cmp)])],
        metadata={"run_config": run.config, "sigmas": sigmas, "estimator": cmp.clean.settings,
                  "environment": environment(), "run_environment": run.environment})
    print(f"report               {out}  ({time.perf_counter() - t0:.1f} s)")
    return 0


def _sweep(args) -> int:
    from ..studies.sweep import SweepError, SweepGrid, default_table, read_table, run_sweep

    if args.atlas:
        from ..studies.atlas import ATLAS_DATASETS, ATTACKS

        if args.triggers is not None or args.sizes is not None:
            raise ValueError("`--triggers` and `--sizes` do not apply with --atlas: choose attacks "
                             "with --attacks.")
        grid = SweepGrid(datasets=tuple(args.datasets or ATLAS_DATASETS),
                         attacks=tuple(args.attacks or ATTACKS),
                         rates=tuple(args.rates) if args.rates is not None else None,
                         targets=tuple(args.targets), seeds=tuple(args.seeds or (0, 1)),
                         epochs=args.epochs, n_pairs=args.pairs, n_samples=args.samples)
    else:
        if args.attacks:
            raise ValueError("`--attacks` needs --atlas (a grid of attacks); without it the grid "
                             "is --triggers × --sizes.")
        grid = SweepGrid(datasets=tuple(args.datasets or ["digits"]),
                         trigger_types=tuple(args.triggers or ["Patch"]),
                         trigger_sizes=tuple(args.sizes or [2, 3]),
                         rates=tuple(args.rates if args.rates is not None else
                                     [0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1]),
                         targets=tuple(args.targets), seeds=tuple(args.seeds or [0]),
                         epochs=args.epochs, n_pairs=args.pairs, n_samples=args.samples)
    # one definition of where a grid's rows go (sweep.default_table: atlas.csv or sweep.csv)
    args.out = Path(default_table(grid)) if args.out is None else args.out
    executor = None
    if args.dask:
        from distributed import Client

        from ..studies.sweep import dask_executor

        executor = dask_executor(Client(args.dask))
    t0 = time.perf_counter()
    failed = None
    try:
        table = run_sweep(grid, args.out, executor=executor, max_workers=args.workers,
                          progress=not args.quiet)
    except SweepError as exc:
        table, failed = exc.table, exc
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not print a traceback
        keys = {p["key"] for p in grid.points()}
        try:
            saved = str(int(read_table(args.out)["key"].isin(keys).sum()))
        except (OSError, ValueError):  # the message matters more than the count
            saved = "some"
        print(f"interrupted: {saved} of {len(keys)} runs are saved in {args.out}; to resume, run "
              f"the same command again: {_command(args)}", file=sys.stderr)
        return 130
    for r in table.to_dict("records"):
        what = (f"{r['attack']:>22}" if args.atlas else f"{r['trigger_type']:>12} {r['trigger_size']}")
        print(f"{r['dataset']:>13} {what} rate {r['rate']:<6} seed {r['seed']} "
              f"acc {r['clean_accuracy']:.4f} ASR {r['attack_success_rate']:.4f} "
              f"gap {r['gap']:+.4f} [{r['gap_ci_low']:+.4f}, {r['gap_ci_high']:+.4f}]")
    n = len(table.attrs["computed"])
    print(f"{len(table)} runs in {time.perf_counter() - t0:.1f} s -> {args.out} ({n} computed now, "
          f"{len(table) - n} read from the file)")
    if failed is not None:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0


def _command(args) -> str:
    return "python -m workbench " + shlex.join(args.argv)


def _report(args) -> int:
    from ..base.sweepstore import table_exists
    from ..reports.paper import paper_report
    from ..studies.atlas import ATLAS_CSV

    atlas = args.atlas
    if atlas is None and table_exists(ATLAS_CSV):  # the atlas sweep's default output, if usable
        from ..reports.atlas_section import atlas_rows, has_atlas
        from ..studies.sweep import read_table

        if has_atlas(atlas_rows(read_table(ATLAS_CSV))[0]):
            atlas = Path(ATLAS_CSV)
        else:
            print(f"note: {ATLAS_CSV} holds no atlas of this version (rows of two attacks or "
                  "more): the report has no atlas section; pass --atlas to require one",
                  file=sys.stderr)
    s = paper_report(args.sweep, args.out, args.dataset, n_pairs=args.pairs,
                     n_samples=args.samples, command=_command(args), atlas=atlas)
    for f in s["findings"]:
        print(f"{f['finding']}: {f['verdict']}\n    {f['measured']}")
    print(f"report -> {args.out} (summary: {Path(args.out).with_suffix('.json')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a backdoored model and write reports/demo.html")
    d.add_argument("--dataset", default="digits", choices=DATASETS)
    d.add_argument("--model", default="small-cnn")
    d.add_argument("--rate", type=float, default=0.05, help="poisoning rate in [0, 1]")
    d.add_argument("--target", type=int, default=0, help="target class")
    d.add_argument("--trigger-size", type=int, default=3, help="side of the square patch")
    d.add_argument("--pairs", type=int, default=100, help="clean/triggered test pairs")
    d.add_argument("--samples", type=int, default=128, help="noisy samples per input and σ")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", type=Path, default=Path("reports/demo.html"))
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)
    s = sub.add_parser("sweep", help="grid of runs -> reports/sweep.csv (resumable)")
    s.add_argument("--atlas", action="store_true",
                   help="the attack atlas (workbench.atlas): a grid of attacks, each at its two "
                   "rates; defaults: every attack, digits and fashion-mnist, seeds 0 1, "
                   "--out reports/atlas.csv")
    s.add_argument("--attacks", nargs="+", default=None,
                   help="with --atlas: attack names (default: all of workbench.atlas.ATTACKS)")
    s.add_argument("--datasets", nargs="+", default=None, choices=DATASETS,
                   help="default: digits (with --atlas: digits fashion-mnist)")
    s.add_argument("--triggers", nargs="+", default=None, help="trigger types (default: Patch)")
    s.add_argument("--sizes", nargs="+", type=int, default=None, help="patch sides (default: 2 3)")
    s.add_argument("--rates", nargs="+", type=float, default=None,
                   help="default: 0 0.001 0.005 0.01 0.02 0.05 0.1 (with --atlas: each attack's "
                   "weak and strong rate)")
    s.add_argument("--targets", nargs="+", type=int, default=[0])
    s.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="default: 0 (with --atlas: 0 1)")
    s.add_argument("--epochs", type=int, default=None, help="training epochs (default: the "
                   "dataset's)")
    s.add_argument("--pairs", type=int, default=50)
    s.add_argument("--samples", type=int, default=64)
    s.add_argument("--workers", type=int, default=None, help="local worker processes")
    s.add_argument("--dask", default=None, help="address of a Dask scheduler (tcp://host:8786)")
    s.add_argument("--out", type=Path, default=None,
                   help="default: reports/sweep.csv (with --atlas: reports/atlas.csv)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_sweep)
    r = sub.add_parser("report", help="reports/paper.html from a sweep and the other studies")
    r.add_argument("--sweep", type=Path, default=Path("reports/sweep.csv"))
    r.add_argument("--dataset", default="digits", choices=DATASETS)
    r.add_argument("--out", type=Path, default=Path("reports/paper.html"))
    r.add_argument("--atlas", type=Path, default=None,
                   help="the attack atlas's CSV (`sweep --atlas`) for the report's atlas section "
                   "(default: reports/atlas.csv when it exists)")
    r.add_argument("--pairs", type=int, default=None,
                   help="test inputs per study (default: 40 dynamics, 100 patterns, 200 detection)")
    r.add_argument("--samples", type=int, default=None,
                   help="noisy samples per input and σ (default: 32 dynamics, 64 otherwise)")
    r.set_defaults(func=_report)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # 128 + SIGINT, as a shell reports it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"interrupted: {args.command} stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
