"""The sweep store (workbench.sweepstore): SQLite beside the CSV path users give, CSV tables
imported once, the CSV export, values read back exactly. Made-up rows, no training; the store
under several processes and kills is tested in test_sweep_faults.py."""

import math
import sqlite3

import pandas as pd
import pytest

from workbench import sweep as sw
from workbench import sweepstore as ss


def _row(key: str, **values) -> dict:
    kinds = {"str": "x", "int": 1, "float": 0.25, "Int64": None, "floats": (0.1, 0.2)}
    row = {c: kinds[t] for c, t in ss.COLUMN_TYPES.items()}
    row.update(key=key, row_format=ss.ROW_FORMAT, trigger="Patch(size=3, position='bottom-right')")
    row.update(values)
    return row


def _csv(path, rows, columns=ss.COLUMNS):
    path.write_bytes(ss._csv_record(columns) + b"".join(
        ss._csv_record(["" if r[c] is None else ";".join(map(repr, r[c]))
                        if ss.COLUMN_TYPES[c] == "floats" else r[c] for c in columns])
        for r in rows))
    return path


def test_paths_name_the_store_beside_the_csv(tmp_path):
    assert ss.store_paths("reports/sweep.csv") == (ss.Path("reports/sweep.sqlite"),
                                                   ss.Path("reports/sweep.csv"))
    assert ss.store_paths("reports/atlas.sqlite") == (ss.Path("reports/atlas.sqlite"), None)
    with pytest.raises(TypeError, match="`path` must be a str or an os.PathLike; got 3"):
        ss.store_paths(3)
    path = tmp_path / "t.csv"
    assert not ss.table_exists(path)
    with ss.SweepStore(path) as store:
        store.append(_row("a"))
        assert not path.exists()  # the CSV is written by `export`, at a sweep's end
        assert store.export() == path
    assert ss.table_exists(path) and sorted(p.name for p in tmp_path.iterdir()) == [
        "t.csv", "t.sqlite"]  # the WAL's files go with the last connection
    assert ss.read_table(path)["key"].tolist() == ["a"]
    assert ss.read_table(tmp_path / "t.sqlite")["key"].tolist() == ["a"]
    assert ss.read_table(tmp_path / "none.csv").empty  # no table: no rows, nothing made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.sqlite"]


def test_values_read_back_exactly(tmp_path):
    rows = [_row("a", gap=1 / 3, p_value=float("nan"), radius_gap=float("inf"), max_train=20000,
                 clean_curve=(0.1 + 0.2, 1e-300), sigmas=(), family="", torch="2.5.1"),
            _row("b", max_train=None, row_format=None, rate=0.05, trigger='a "quoted", text')]
    path = tmp_path / "t.sqlite"
    with ss.SweepStore(path) as store:
        for r in rows:
            store.append(r)
        store.append(_row("c"))
        assert list(store.finished()) == ["a", "c"]  # "b" has no row format: never reused
    got = ss.read_table(path)
    pd.testing.assert_frame_equal(got, ss.rows_frame(rows + [_row("c")]))
    a = got.iloc[0]
    assert a["gap"] == 1 / 3 and math.isnan(a["p_value"]) and a["radius_gap"] == math.inf
    assert a["clean_curve"] == (0.1 + 0.2, 1e-300) and a["sigmas"] == () and a["family"] == ""
    assert got["max_train"].iloc[0] == 20000 and got["max_train"].isna().tolist() == [False, True,
                                                                                      True]
    assert got["row_format"].isna().tolist() == [False, True, False]
    # the export reads back equal, and so does write_table's CSV
    out = ss.export_csv(path, tmp_path / "export.csv")
    pd.testing.assert_frame_equal(ss.read_table(out), got)
    with ss.SweepStore(path) as store:
        with pytest.raises(ValueError, match=r"`row\['trigger'\]` must be one line of text"):
            store.append(_row("d", trigger="two\nlines"))
        with pytest.raises(ValueError, match=r"`row\['seed'\]` must be an int"):
            store.append(_row("d", seed=None))
        assert [r["key"] for r in store.rows()] == ["a", "b", "c"]  # refused before the write


def test_a_key_written_again_reads_as_its_last_row(tmp_path):
    path = tmp_path / "t.csv"
    with ss.SweepStore(path) as store:
        store.append(_row("a", gap=0.1))
        store.append(_row("b"))
        store.append(_row("a", gap=0.2))
        assert store.finished_row("a")["gap"] == 0.2 and store.finished_row("z") is None
        # a later row of another (newer) row format does not hide this format's row from reuse
        store.append(_row("b", row_format=ss.ROW_FORMAT + 1))
        assert store.finished_row("b")["row_format"] == ss.ROW_FORMAT
    t = ss.read_table(path)
    assert t["key"].tolist() == ["a", "b"] and t["gap"].tolist() == [0.2, 0.25]
    assert t["row_format"].tolist() == [ss.ROW_FORMAT, ss.ROW_FORMAT + 1]


def test_a_csv_is_imported_once_and_kept(tmp_path):
    path = _csv(tmp_path / "sweep.csv", [_row("a"), _row("b"), _row("a", gap=0.5)])
    before = path.read_bytes()
    pd.testing.assert_frame_equal(ss.read_table(path), ss.read_table(path))
    assert not (tmp_path / "sweep.sqlite").exists()  # reading a CSV makes no store
    with ss.SweepStore(path) as store:
        assert [r["key"] for r in store.rows()] == ["a", "b", "a"]
    assert path.read_bytes() == before  # kept as it was
    with ss.SweepStore(path) as store:  # not imported again
        assert len(store.rows()) == 3
        store.append(_row("c"))
    t = ss.read_table(path)
    assert t["key"].tolist() == ["b", "a", "c"] and t["gap"].tolist() == [0.25, 0.5, 0.25]


def test_rows_appended_to_the_csv_later_are_taken_in(tmp_path):
    """An older workbench (or a person) appends to the CSV after the store was made: its new rows
    are read (with a warning) and imported by the next writer, once."""
    path = tmp_path / "sweep.csv"
    with ss.SweepStore(path) as store:
        store.append(_row("a"))
        store.export()
    with open(path, "ab") as f:
        f.write(ss.csv_line(_row("b")) + ss.csv_line(_row("a", gap=0.75)))
    with pytest.warns(UserWarning, match=r"changed since .*its 2 rows that the store does not "
                                         r"hold are read"):
        t = ss.read_table(path)
    assert t["key"].tolist() == ["b", "a"]  # the CSV's rows come after the store's
    assert dict(zip(t["key"], t["gap"])) == {"a": 0.75, "b": 0.25}
    with pytest.warns(UserWarning, match="its 2 rows that the store did not hold were imported"):
        store = ss.SweepStore(path)
    store.close()
    with ss.SweepStore(path) as store:  # once
        assert len(store.rows()) == 3
    pd.testing.assert_frame_equal(ss.read_table(path), t)
    # a CSV only touched (same bytes, new time) is not read again
    path.touch()
    with ss.SweepStore(path) as store:
        assert len(store.rows()) == 3
    # a CSV replaced by something else is refused, naming what to do
    path.write_text("name,value\nx,1\n")
    with pytest.raises(ss.SweepFileError, match=r"move sweep.csv away .*nothing was changed"):
        ss.read_table(path)


def test_columns_a_newer_version_adds_are_added_to_an_older_store(tmp_path, monkeypatch):
    path = tmp_path / "t.sqlite"
    with ss.SweepStore(path) as store:
        store.append(_row("a"))
    types = dict(ss.COLUMN_TYPES, new_metric="float")
    monkeypatch.setattr(ss, "COLUMN_TYPES", types)
    monkeypatch.setattr(ss, "COLUMNS", list(types))
    assert "new_metric" not in [r[1] for r in sqlite3.connect(path).execute(
        "PRAGMA table_info(rows)")]
    assert ss.read_table(path)["new_metric"].isna().all()  # read as missing, nothing changed
    with ss.SweepStore(path) as store:
        store.append(_row("b", new_metric=2.5))
    assert ss.read_table(path)["new_metric"].tolist()[1] == 2.5


def test_a_store_of_a_newer_workbench_is_refused(tmp_path):
    path = tmp_path / "t.sqlite"
    ss.SweepStore(path).close()
    with sqlite3.connect(path) as con:
        con.execute("UPDATE meta SET value = ? WHERE name = 'store_format'",
                    (str(ss.STORE_FORMAT + 1),))
    con.close()
    with pytest.raises(ss.SweepFileError, match="written by a newer workbench"):
        ss.SweepStore(path)
    with pytest.raises(ss.SweepFileError, match="written by a newer workbench"):
        ss.read_table(path)


def test_claims_in_one_process(tmp_path):
    with ss.SweepStore(tmp_path / "t.csv") as one, ss.SweepStore(tmp_path / "t.csv") as two:
        token = one.claim("k")
        assert token is not None
        assert two.claim("k") is None  # this process's other sweep holds it
        two.release("k", "not its token")  # only the holder releases
        assert [c["key"] for c in one.claims()] == ["k"]
        one.release("k", token)
        assert two.claim("k") is not None


def test_the_sweep_module_reexports_the_tables_names():
    for name in ("read_table", "write_table", "current_rows", "latest_per_run", "run_identity",
                 "COLUMNS", "COLUMN_TYPES", "ROW_FORMAT", "RUN_COLUMNS", "SweepFileError",
                 "export_csv"):
        assert getattr(sw, name) is getattr(ss, name), name
    with pytest.raises(AttributeError, match="replaced by a SQLite store"):
        sw._Store  # noqa: B018


def test_a_sweeps_export_appends_its_rows_and_rewrites_a_csv_it_did_not_write(tmp_path):
    path = tmp_path / "t.csv"
    with ss.SweepStore(path) as store:
        store.append(_row("a"))
        store.export(full=False)  # no export yet: written whole
        first = path.read_bytes()
        store.append(_row("b"))
        store.export(full=False)  # the new row appended
        assert path.read_bytes() == first + ss.csv_line(_row("b"))
        store.export(full=False)  # nothing new: unchanged
        assert path.read_bytes() == first + ss.csv_line(_row("b"))
        path.write_bytes(first[:-5])  # not as exported (here: torn): rewritten whole
        store.append(_row("c"))
        with pytest.warns(UserWarning, match="text of an interrupted write"):
            store.export(full=False)  # its torn text set aside first
    assert (tmp_path / "t.csv.torn").read_bytes() == first[len(ss.CSV_HEADER):-5] + b"\n"
    assert path.read_bytes() == ss.CSV_HEADER + b"".join(ss.csv_line(_row(k)) for k in "abc")
    with ss.SweepStore(path) as store:  # the CSV it wrote is not taken for a changed one
        assert len(store.rows()) == 3


def test_rows_added_to_the_csv_during_a_sweep_are_imported_not_overwritten(tmp_path):
    path = tmp_path / "t.csv"
    with ss.SweepStore(path) as store:
        store.append(_row("a"))
        store.export(full=False)
        with open(path, "ab") as f:  # someone appends a row by hand meanwhile
            f.write(ss.csv_line(_row("by-hand")))
        store.append(_row("b"))
        with pytest.warns(UserWarning, match="its 1 rows that the store did not hold were imported"):
            store.export(full=False)
    assert ss.read_table(path)["key"].tolist() == ["a", "b", "by-hand"]  # in the store's order
    assert [ln.split(b",")[0] for ln in path.read_bytes().splitlines()[1:]] == [
        b"a", b"b", b"by-hand"]
