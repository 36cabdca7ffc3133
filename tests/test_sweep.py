import csv
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import workbench as wb
from workbench import sweep as sw
from workbench import sweepstore


def test_spearman_matches_scipy_and_has_a_fisher_interval():
    from workbench import stats as wstats

    assert sw.spearman_ci is wstats.spearman_ci  # it lives in workbench.stats; the old import works
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    s = sw.spearman_ci(x, y)
    ref = stats.spearmanr(x, y)
    assert s["rho"] == pytest.approx(ref.statistic) and s["p_value"] == pytest.approx(ref.pvalue)
    half = 1.959964 * math.sqrt(1.06 / 27)
    assert s["ci"][0] == pytest.approx(math.tanh(math.atanh(ref.statistic) - half), rel=1e-5)
    assert s["ci"][0] < s["rho"] < s["ci"][1]
    with pytest.raises(ValueError, match="at least 4 points"):
        sw.spearman_ci([1, 2, 3], [1, 2, 3])


def test_grid_points_and_validation():
    g = sw.SweepGrid(trigger_types=("Patch", "Blend"), trigger_sizes=(2, 3), rates=(0.0, 0.05))
    pts = g.points()
    assert len(pts) == 2 * 2 + 1 * 2  # Blend has no size: one per rate
    assert len({p["key"] for p in pts}) == len(pts)
    with pytest.raises(ValueError, match="`rates` must be a float in"):
        sw.SweepGrid(rates=(1.5,))
    with pytest.raises(ValueError, match="`datasets` must be one of"):
        sw.SweepGrid(datasets=("imagenet",))
    # checked against each dataset's images and classes before anything runs
    with pytest.raises(ValueError, match="a Checkerboard of size 16 does not fit the 16x16 images of 'digits'"):
        sw.SweepGrid(trigger_types=("Checkerboard",), trigger_sizes=(16,))
    sw.SweepGrid(datasets=("fashion-mnist",), trigger_sizes=(16,))  # fits 28x28
    with pytest.raises(ValueError, match=r"classes of 'cifar10': ints in \[0, 9\]"):
        sw.SweepGrid(datasets=("gtsrb", "cifar10"), targets=(12,))
    sw.SweepGrid(datasets=("gtsrb",), targets=(42,))
    with pytest.raises(ValueError, match="`model` must be one of"):
        sw.SweepGrid(model="vgg")
    with pytest.raises(TypeError, match="`epochs` must be an int"):
        sw.SweepGrid(epochs=2.5)


SMALL = dict(trigger_sizes=(3,), rates=(0.0, 0.05), n_pairs=10, n_samples=16,
             sigmas=(0.1, 0.3, 0.5))
# four quick runs (one epoch each): enough rows for a Spearman interval
FOUR = dict(trigger_sizes=(3,), rates=(0.0, 0.05, 0.1, 0.2), epochs=1, n_pairs=10, n_samples=16,
            sigmas=(0.1, 0.3, 0.5))


def test_trigger_types_come_from_the_trigger_registry():
    from workbench.triggers import CRAFTED, TRIGGERS

    # a pattern cannot be swept by size; crafted triggers are optimised, not built from parameters
    assert set(sw.SWEEPABLE) == set(TRIGGERS) - {"PatternPatch"} - set(CRAFTED)
    with pytest.raises(ValueError, match="`trigger_types` must be one of"):
        sw.SweepGrid(trigger_types=("TrojanNN",))
    assert sw.SIZED == ("Patch", "Checkerboard")
    with pytest.raises(ValueError, match="`trigger_types` must be one of 'Patch'"):
        sw.SweepGrid(trigger_types=("PatternPatch",))


def test_keys_cover_the_resolved_settings(monkeypatch):
    from workbench import experiments, smoothness, train

    def key(**kw):
        return sw.SweepGrid(**{"trigger_sizes": (3,), "rates": (0.05,), **kw}).points()[0]["key"]

    default = sw.SweepGrid(trigger_sizes=(3,), rates=(0.05,)).points()[0]
    # defaults are resolved into the point: naming them gives the same key
    assert default["sigmas"] == experiments.default_sigmas("digits")
    assert default["epochs"] == train.DEFAULTS["digits"]["epochs"]
    assert default["estimator"]["mode"] == "hard" and default["estimator"]["noise"] == "gaussian"
    assert default["versions"]["estimator"] == smoothness.ESTIMATOR_VERSION
    assert key(sigmas=tuple(experiments.default_sigmas("digits"))) == default["key"]
    assert key(epochs=train.DEFAULTS["digits"]["epochs"]) == default["key"]
    # any setting the row depends on gives another key
    changed = [key(sigmas=(0.1, 0.2)), key(n_samples=65), key(n_pairs=51), key(epochs=3)]
    monkeypatch.setitem(experiments.DEFAULT_SIGMAS, "digits", (0.05, 0.5))
    changed.append(key())  # a changed default σ grid
    monkeypatch.undo()
    monkeypatch.setattr(smoothness, "ESTIMATOR_VERSION", smoothness.ESTIMATOR_VERSION + 1)
    changed.append(key())
    monkeypatch.undo()
    monkeypatch.setattr(sw, "KEY_FORMAT", sw.KEY_FORMAT + 1)
    changed.append(key())
    monkeypatch.undo()
    # a new column a point gives (row format 5's max_train) is not a change of what keys cover
    monkeypatch.setattr(sw, "ROW_FORMAT", sw.ROW_FORMAT + 1)
    assert key() == default["key"]
    monkeypatch.undo()
    monkeypatch.setitem(sw.ESTIMATOR_SETTINGS, "common_noise", True)
    changed.append(key())
    monkeypatch.undo()
    monkeypatch.setitem(train.DEFAULTS, "digits", {**train.DEFAULTS["digits"], "lr": 1e-2})
    changed.append(key())
    monkeypatch.undo()
    assert key() == default["key"]
    assert len(set(changed)) == len(changed) and default["key"] not in changed


def test_sweep_runs_resumes_and_filters(tmp_path, digits_run):
    path = tmp_path / "sweep.csv"
    grid = sw.SweepGrid(**SMALL)
    table = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert isinstance(table, pd.DataFrame) and len(table) == 2 and path.exists()
    assert (tmp_path / "sweep.sqlite").exists()  # the store; the CSV is its export
    assert table.attrs["computed"] == table["key"].tolist()
    control = table[table.rate == 0.0].iloc[0]
    attacked = table[table.rate == 0.05].iloc[0]
    assert attacked["attack_success_rate"] >= 0.95 > control["attack_success_rate"]
    assert attacked["clean_accuracy"] == pytest.approx(digits_run.clean_accuracy)
    # an interrupted sweep: the second row never committed (a killed writer loses that row only)
    with sqlite3.connect(tmp_path / "sweep.sqlite") as con:
        con.execute('DELETE FROM rows WHERE "key" = ?', (table["key"][1],))
    con.close()
    assert sw.read_table(path)["key"].tolist() == [table["key"][0]]
    again = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert len(again) == 2 and again.attrs["computed"] == [table["key"][1]]
    assert sorted(sw.read_table(path)["rate"].tolist()) == [0.0, 0.05]
    assert sw.read_table(path)["key"][0] == table["key"][0]
    assert sorted(r["rate"] for r in csv.DictReader(open(path))) == ["0.0", "0.05"]  # exported
    with pytest.raises(FileExistsError, match="nothing was overwritten"):
        sw.run_sweep(grid, path, resume=False, progress=False)
    out = sw.write_table(table, tmp_path / "copy.csv")
    assert list(csv.DictReader(open(out)))[1]["rate"] == "0.05"


@pytest.fixture
def damaged_mnist():
    """MNIST files with a broken header in the session's data folder: loading them fails at once
    (no download is tried), like a run that breaks in a worker."""
    from helpers import write_idx
    from workbench.data import data_dir

    raw = data_dir() / "MNIST" / "raw"
    assert not raw.exists(), f"{raw} exists: this test would damage it"
    write_idx(data_dir(), "MNIST", n_train=20, n_test=10)
    for f in raw.iterdir():
        f.write_bytes(b"\xff" * 4 + f.read_bytes()[4:])
    sw._dataset.cache_clear()
    yield
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()
    raw.parent.rmdir()
    sw._dataset.cache_clear()


def test_damaged_data_fails_before_any_run(tmp_path, damaged_mnist):
    # the grid's keys hold each dataset's fingerprint, so its files are read (and found damaged)
    # before any run starts, and nothing is written
    path = tmp_path / "sweep.csv"
    grid = sw.SweepGrid(**{**SMALL, "datasets": ("mnist", "digits"), "rates": (0.05,)})
    with pytest.raises(ValueError, match=r"Dataset 'mnist'.*damaged"):
        sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert not path.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_run_does_not_lose_the_others(tmp_path, digits_run, workers, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    real = sw.run_point

    def flaky(point):  # a run that breaks in its worker
        if point["rate"] == 0.05:
            raise RuntimeError("worker lost")
        return real(point)

    monkeypatch.setattr(sw, "run_point", flaky)
    path = tmp_path / "sweep.csv"
    grid = sw.SweepGrid(**{**SMALL, "rates": (0.0, 0.05)})
    executor = ThreadPoolExecutor(workers) if workers > 1 else None
    with pytest.raises(sw.SweepError, match=r"1 of 2 runs failed \(1 finished, saved in") as info:
        sw.run_sweep(grid, path, executor=executor, max_workers=1, progress=False)
    err = info.value
    assert "digits Patch 3 rate 0.05 target 0 seed 0: RuntimeError: worker lost" in str(err)
    assert len(err.failures) == 1 and err.failures[0][0]["rate"] == 0.05
    assert err.table["rate"].tolist() == [0.0]
    assert sw.read_table(path)["rate"].tolist() == [0.0]  # the finished run is saved
    if executor is not None:
        executor.shutdown()


@pytest.mark.slow
def test_sweep_on_local_processes_and_dask(tmp_path, digits_run):
    grid = sw.SweepGrid(**SMALL)
    local = sw.run_sweep(grid, tmp_path / "local.csv", max_workers=2, progress=False)
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = sw.run_sweep(grid, tmp_path / "dask.csv", executor=sw.dask_executor(client),
                              progress=False)
    assert local["key"].tolist() == remote["key"].tolist()
    assert remote["gap"].to_numpy() == pytest.approx(local["gap"].to_numpy())


@pytest.fixture(scope="module")
def four_runs(tmp_path_factory):
    """A CSV of the four quick runs (trained once, then from the session's run cache)."""
    path = tmp_path_factory.mktemp("four") / "sweep.csv"
    return sw.run_sweep(sw.SweepGrid(**FOUR), path, max_workers=1, progress=False), path


def test_a_point_written_twice_counts_once(tmp_path, four_runs):
    from workbench import paper

    table, src = four_runs
    path = tmp_path / "sweep.csv"
    lines = src.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines + lines[1:]))  # two sweeps appended every row
    read = sw.read_table(path)
    assert len(read) == 4 and sorted(read["key"]) == sorted(table["key"])
    head = paper.headline(read)["digits"]
    ref = sw.spearman_ci(table["attack_success_rate"], table["gap"])
    assert head["runs"] == 4 and head["gap"]["ci"] == [round(c, 3) for c in ref["ci"]]
    assert paper.headline(pd.concat([table, table]))["digits"]["runs"] == 4
    # a run measured again under other settings (another key) is still one run
    again = table.assign(key=table["key"].str[::-1], n_samples=32)
    latest, superseded = paper.latest_per_run(pd.concat([table, again]))
    assert superseded == 4 and latest["n_samples"].tolist() == [32] * 4
    assert paper.headline(pd.concat([table, again]))["digits"]["runs"] == 4


def test_rows_of_other_settings_are_not_reused(tmp_path, four_runs, monkeypatch):
    from workbench import experiments

    table, src = four_runs
    path = tmp_path / "sweep.csv"
    path.write_bytes(src.read_bytes())
    grid = sw.SweepGrid(**{**FOUR, "rates": (0.0, 0.05), "n_samples": 24})
    other = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert len(other.attrs["computed"]) == 2 and other["n_samples"].tolist() == [24, 24]
    # the default σ grid changes: rows made with the old default are computed again
    grid = sw.SweepGrid(**{**FOUR, "rates": (0.0,), "sigmas": None})
    first = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert len(first.attrs["computed"]) == 1 and first["sigma_max"][0] == 0.6
    assert sw.run_sweep(grid, path, max_workers=1, progress=False).attrs["computed"] == []
    monkeypatch.setitem(experiments.DEFAULT_SIGMAS, "digits", (0.05, 0.3))
    changed = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert len(changed.attrs["computed"]) == 1 and changed["sigma_max"][0] == 0.3
    assert len(sw.read_table(path)) == 4 + 2 + 2  # old rows stay in the file, unused


def test_a_file_that_is_not_a_sweep_table_is_refused(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("name,value\nx,1\n")
    with pytest.raises(sw.SweepFileError, match="is not a sweep table"):
        sw.read_table(path)
    with pytest.raises(sw.SweepFileError, match="nothing was changed"):
        sw.run_sweep(sw.SweepGrid(**SMALL), path, max_workers=1, progress=False)
    assert path.read_text() == "name,value\nx,1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["other.csv"]  # no store was made
    # nor is a SQLite file of something else taken for a store
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
    con.close()
    before = other.read_bytes()
    with pytest.raises(sw.SweepFileError, match="is not a sweep store"):
        sw.run_sweep(sw.SweepGrid(**SMALL), other, max_workers=1, progress=False)
    with pytest.raises(sw.SweepFileError, match="is not a sweep store"):
        sw.read_table(other)
    assert other.read_bytes() == before


def test_write_table_is_atomic_and_reads_back(tmp_path, four_runs):
    table, src = four_runs
    subset = table[table.rate > 0].sort_values("gap")  # any DataFrame of sweep rows
    out = sw.write_table(subset, tmp_path / "copy.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["copy.csv"]  # no temporary file left
    pd.testing.assert_frame_equal(sw.read_table(out), subset.reset_index(drop=True))
    pd.testing.assert_frame_equal(sw.read_table(src), table)  # what the sweep returned, as read
    with pytest.raises(ValueError, match="`table` must have every sweep column; it lacks gap"):
        sw.write_table(table.drop(columns="gap"), tmp_path / "x.csv")
    with pytest.raises(TypeError, match="`table` must be a pandas DataFrame"):
        sw.write_table(table.to_dict("records"), tmp_path / "x.csv")
    # the CSV beside a store is its export: writing it would not change the table
    with pytest.raises(ValueError, match="`path` must not be the CSV export of a sweep store"):
        sw.write_table(subset, src)
    with pytest.raises(ValueError, match="`path` must name a CSV file"):
        sw.write_table(subset, tmp_path / "x.sqlite")


def test_read_table_gives_typed_columns(tmp_path, four_runs):
    table, src = four_runs
    read = sw.read_table(src)
    for col, kind in sw.COLUMN_TYPES.items():
        dtype = read[col].dtype
        if kind == "str":
            assert pd.api.types.is_string_dtype(dtype), (col, dtype)
        elif kind == "floats":  # tuples of floats, one per σ of the row's grid
            assert str(dtype) == "object", col
            assert all(isinstance(v, tuple) and len(v) == len(s) and
                       all(isinstance(x, float) for x in v)
                       for v, s in zip(read[col], read["sigmas"])), col
        else:
            assert str(dtype) == {"int": "int64", "float": "float64", "Int64": "Int64"}[kind], col
    assert list(read.columns) == sw.COLUMNS and (read["row_format"] == sw.ROW_FORMAT).all()
    # the curves come back exactly as the sweep measured them (repr of each float in the CSV)
    assert (dict(zip(read["key"], read["clean_curve"]))
            == dict(zip(table["key"], map(tuple, table["clean_curve"]))))
    assert len(read["sigmas"].iloc[0]) >= 2
    assert read["rate"].tolist() == [0.0, 0.05, 0.1, 0.2]  # numbers, in the file's order
    assert read.sort_values("rate", ascending=False)["rate"].iloc[-1] == 0.0  # sorts numerically
    empty = sw.read_table(tmp_path / "missing.csv")  # no file yet: no rows, the same columns
    assert len(empty) == 0 and (empty.dtypes == read.dtypes).all()
    # a value its column cannot hold (a seed of 1.5) is a damaged line: left out, like a torn one
    lines = src.read_bytes().splitlines(keepends=True)
    fields = next(csv.reader([lines[1].decode()]))
    fields[sw.COLUMNS.index("seed")] = "1.5"
    bad = tmp_path / "bad.csv"
    bad.write_bytes(lines[0] + sweepstore._csv_record(fields) + b"".join(lines[2:]))
    assert sw.read_table(bad)["rate"].tolist() == [0.05, 0.1, 0.2]


def _legacy(src, dst, rows=None):
    """`src`'s table as a row-format-2 workbench wrote it: no row_format and radius interval."""
    lines = src.read_bytes().splitlines(keepends=True)
    out = []
    for ln in [lines[0], *(lines[1:] if rows is None else [lines[1 + i] for i in rows])]:
        fields = dict(zip(sw.COLUMNS, next(csv.reader([ln.decode()]))))
        out.append(sweepstore._csv_record([fields[c] for c in sweepstore.LEGACY_COLUMNS]))
    dst.write_bytes(b"".join(out))
    return dst


def test_rows_of_older_row_formats_are_read_never_reused(tmp_path, four_runs):
    table, src = four_runs
    path = _legacy(src, tmp_path / "sweep.csv", rows=[0, 1])
    old = sw.read_table(path)
    assert len(old) == 2 and old["row_format"].isna().all()  # read, marked as of no known format
    assert old["gap"].tolist() == table["gap"][:2].tolist() and old["radius_gap_ci_low"].isna().all()
    current, stale = sw.current_rows(old)
    assert len(current) == 0 and stale == 2
    # a sweep into it upgrades the header, keeps the old rows and computes the points again (even
    # where an old row's key matched: only rows of this row format are reused)
    grid = sw.SweepGrid(**{**FOUR, "rates": (0.0, 0.05)})
    with pytest.warns(UserWarning, match=r"older workbench .*its 2 rows are kept with their older "
                                          r"or an empty row_format"):
        new = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert len(new.attrs["computed"]) == 2 and (new["row_format"] == sw.ROW_FORMAT).all()
    lines = path.read_bytes().splitlines()  # the store's export: every row, the current header
    assert lines[0] + b"\r\n" == sweepstore.CSV_HEADER and len(lines) == 1 + 2 + 2
    assert lines[1].split(b",")[1] == b""  # the old rows, with an empty row_format
    assert sw.current_rows(sw.read_table(path))[1] == 0  # one row per key: the new ones
    # a row of another row format in a current table is read and set apart too (here: written
    # into the CSV by hand, which the store takes in as that key's latest row)
    fields = next(csv.reader([lines[3].decode()]))
    fields[1] = str(sw.ROW_FORMAT + 1)
    path.write_bytes(b"\n".join(lines[:3]) + b"\n" + sweepstore._csv_record(fields) + lines[4]
                     + b"\n")
    with pytest.warns(UserWarning, match=r"changed since .* its 1 rows that the store does not"):
        current, stale = sw.current_rows(sw.read_table(path))
    assert len(current) == 1 and stale == 1


def test_sweeptable_names_its_replacement():
    with pytest.raises(AttributeError, match=r"replaced by a pandas DataFrame.*df\.to_dict\('records'\)"):
        sw.SweepTable  # noqa: B018


def test_keys_cover_the_datas_content(monkeypatch):
    p = sw.SweepGrid(**SMALL).points()[0]
    assert p["data"] == wb.load_dataset("digits").fingerprint
    # other files under the same name would be another experiment: another key
    other = wb.load_dataset("digits", max_train=500)
    sw._dataset.cache_clear()
    monkeypatch.setattr(sw, "_dataset", lambda name: other)
    assert sw.SweepGrid(**SMALL).points()[0]["key"] != p["key"]


def test_keys_cover_trigger_defaults_and_training_defaults(monkeypatch):
    p = sw.SweepGrid(**SMALL).points()[0]
    assert p["trigger"] == wb.triggers.Patch(size=3).to_config()  # position, value, margin too
    assert p["weight_decay"] == 0.0 and p["max_train"] is None
    # a changed default position of the trigger class is another trigger: another key
    monkeypatch.setattr(wb.triggers.Patch.__init__, "__defaults__",
                        tuple("top-left" if d == "bottom-right" else d
                              for d in wb.triggers.Patch.__init__.__defaults__))
    assert sw.SweepGrid(**SMALL).points()[0]["key"] != p["key"]
