"""The table of sweep rows: one row per measured grid point, kept in SQLite.

A table is named by the path users have always given (`reports/sweep.csv`, `reports/atlas.csv`,
any `NAME.csv`): its rows live in the SQLite file beside it, `NAME.sqlite` (the store), and
`NAME.csv` is the store's CSV export, for people and other tools: a sweep appends each row it
commits to it (`SweepStore.export(full=False)`) and rewrites it from the store when it ends (also
when it failed or was interrupted), as `export_csv` does. It holds the rows finished so far (a
sweep killed between a row and its export leaves the CSV a row behind the store until the next
sweep or `export_csv`). A path ending in
`.sqlite` names a store with no CSV beside it. `read_table` reads either; `write_table` writes any
DataFrame of rows as a CSV.

The store (Python's sqlite3, WAL mode, synchronous=FULL): table `rows` holds every row ever
appended, in order (`seq`), a column per entry of `COLUMN_TYPES`; table `claims` the points that
sweeps are computing; table `meta` the store's format and what it last knew of the CSV beside it.
Its guarantees, for several sweeps (processes) appending to one table at once:
- one transaction per row (`SweepStore.append`): a row is in the table whole or not at all, and
  durable once `append` returns. A writer killed mid-row loses that row only; SQLite rolls its
  transaction back. No torn row, so there is nothing to repair;
- writers take turns (SQLite's write lock, waited for up to BUSY_TIMEOUT_S seconds); readers read
  the last committed rows without waiting;
- every row a store appended must read back after each append (SweepFileError otherwise:
  something else deleted rows);
- a sweep claims each point it computes (`claim`: a row of `claims` naming its process: id, start
  time, host); other sweeps skip it and read its row when it is done. A claim dies with its
  process: one whose process is gone (or has exited, not yet reaped), or whose id a later process
  reuses, is free again (the start time is read from /proc on Linux; elsewhere the id alone
  tells, so a reused id holds a dead sweep's claim until that other process ends);
- one machine: SQLite's WAL mode needs every process of a store on one host (not a network
  filesystem). A Dask sweep's workers return their rows to the sweep's process, which alone
  writes them; a claim made on another host is refused with SweepFileError.

Tables of CSV (the workbench's store before SQLite, or a CSV someone made) are imported once: when
`NAME.sqlite` does not exist yet, opening the table (`SweepStore`, `run_sweep`) checks `NAME.csv`
as before (a file that is not a sweep table is refused and nothing is created), imports its rows
of every row format the workbench reads in one transaction, and keeps the CSV; lines that are not
whole rows (text of interrupted writes, values their columns cannot hold) are left out and set
aside in `NAME.csv.torn` before the next export rewrites the CSV. `read_table` of a CSV with no
store reads it directly and creates nothing. If the CSV changes after the store last wrote or read
it (rows appended by an older workbench or by hand, a colleague's copy put in its place), its rows
that the store does not hold are taken in as the latest rows of their keys, with a warning:
`read_table` reads them, the next sweep imports them.

Rows: `COLUMNS`, typed by `COLUMN_TYPES`; `read_table` gives one row per key (the last appended).
Every row says which `row_format` made it; `current_rows` keeps those of this version. Rows of
tables written before row format 3 have `row_format` missing (<NA>); rows of row format 4 lack only
`max_train` (the sweep completes them from its grid points: `COMPLETABLE`).

A trained run is named by `RUN_COLUMNS` (its identity: dataset, attack, trigger, poisoning, target
mode, rate, target, seed, model, epochs, training subset); one run measured under several keys
(other pairs, samples, σ grid, estimator) is counted once by `latest_per_run`. Every module that
tells runs apart (the paper report, the atlas's figures) uses these two.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import numbers
import os
import socket
import sqlite3
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .fileio import atomic_write

# Version of the rows' content: bump whenever a change can move a number in a row or adds a column.
# 2: keys cover the resolved σ grid and training defaults, the estimator's settings and versions.
# 3: rows carry their row format (a `row_format` column), so readers can tell stale rows apart,
#    and the radius gap's interval (radius_gap_ci_low, radius_gap_ci_high).
# 4: attacks (the atlas, `workbench.atlas`): attack, family, poisoning, target_mode columns, the
#    trigger's size (trigger_l2, trigger_linf) and the mean W_σ curves (sigmas, clean_curve,
#    triggered_curve); pairs drawn by the run's `triggered_pairs` (every target mode).
# 5: the training subset (`max_train`: None = the whole training set), a column of the run's
#    identity (RUN_COLUMNS). Its numbers are computed as format 4's and its keys are format 4's
#    (`workbench.sweep.KEY_FORMAT`): a row of format 4 whose key matches a grid point is completed
#    from the point (`COMPLETABLE`), not computed again.
ROW_FORMAT = 5

# Each column and its type in `read_table`'s DataFrame: "str" ("" where empty or missing), "int"
# (int64; a row without one is damaged), "float" (float64, NaN where empty), "Int64" (nullable int:
# rows of older tables have no row format; max_train is <NA> for the whole training set), "floats"
# (a tuple of floats, one per σ; () where empty).
COLUMN_TYPES = {
    "key": "str", "row_format": "Int64", "dataset": "str", "attack": "str", "family": "str",
    "trigger": "str", "trigger_type": "str", "trigger_size": "int", "trigger_l2": "float",
    "trigger_linf": "float", "poisoning": "str", "target_mode": "str",
    "rate": "float", "target": "int", "seed": "int", "model": "str",
    "epochs": "int", "max_train": "Int64", "clean_accuracy": "float",
    "attack_success_rate": "float", "gap": "float",
    "gap_ci_low": "float", "gap_ci_high": "float", "p_value": "float", "radius_gap": "float",
    "radius_gap_ci_low": "float", "radius_gap_ci_high": "float", "radius_p_value": "float",
    "clean_mean_W": "float", "triggered_mean_W": "float", "n_pairs": "int", "n_samples": "int",
    "sigma_min": "float", "sigma_max": "float",
    "sigmas": "floats", "clean_curve": "floats", "triggered_curve": "floats",
    "train_seconds": "float", "torch": "str", "workbench": "str"}
COLUMNS = list(COLUMN_TYPES)
# The CSV headers of older row formats. Their tables are read (the columns a header lacks are
# missing values: NaN, <NA>, or "" for text) and imported with their rows' older row formats.
# When COLUMNS changes, add the header it had here (and bump ROW_FORMAT).
LEGACY_COLUMNS = ["key", "dataset", "trigger", "trigger_type", "trigger_size", "rate", "target",
                  "seed", "model", "epochs", "clean_accuracy", "attack_success_rate", "gap",
                  "gap_ci_low", "gap_ci_high", "p_value", "radius_gap", "radius_p_value",
                  "clean_mean_W", "triggered_mean_W", "n_pairs", "n_samples", "sigma_min",
                  "sigma_max", "train_seconds", "torch", "workbench"]  # row formats 1 and 2
FORMAT3_COLUMNS = (LEGACY_COLUMNS[:17] + ["radius_gap_ci_low", "radius_gap_ci_high"]
                   + LEGACY_COLUMNS[17:])
FORMAT3_COLUMNS.insert(1, "row_format")
FORMAT4_COLUMNS = [c for c in COLUMNS if c != "max_train"]
OLDER_COLUMNS = [FORMAT4_COLUMNS, FORMAT3_COLUMNS, LEGACY_COLUMNS]
# Older row formats whose rows a sweep completes when it reuses them (their keys are this
# version's): format -> the columns they lack, each the grid point's value.
COMPLETABLE = {4: ("max_train",)}
# a column an older table lacks must have a "missing" value: not an int
assert all(COLUMN_TYPES[c] != "int" for old in OLDER_COLUMNS for c in COLUMNS if c not in old)

# The identity of a trained run: the columns that name it. Rows equal on these measure the same
# model (measured again under another key: other pairs, samples, σ grid, estimator or versions);
# rows that differ on any of them are different models: the attack (Patch and Patch/all-to-all
# share trigger, rate and seed), its poisoning and target mode, the training subset (the atlas
# trains Fashion-MNIST on its first 20,000 images). The one definition: `latest_per_run`, the
# paper report and the atlas's figures use it.
RUN_COLUMNS = ("dataset", "attack", "trigger", "trigger_type", "trigger_size", "poisoning",
               "target_mode", "rate", "target", "seed", "model", "epochs", "max_train")
assert set(RUN_COLUMNS) <= set(COLUMN_TYPES)

STORE_FORMAT = 1  # the layout of the SQLite file (tables meta, rows, claims)
_MARK = "workbench sweep table"  # meta's `store` entry: a SQLite file that lacks it is not a store
# How long a writer waits for the write lock. Others hold it for one row (milliseconds) or one
# import of a CSV (a second for thousands of rows).
BUSY_TIMEOUT_S = 60.0
_SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "Int64": "INTEGER", "float": "REAL",
              "floats": "TEXT"}
_MISSING = {"str": "", "floats": ()}  # a column an older table lacks; None for the others


class SweepFileError(ValueError):
    """A sweep table that cannot be used safely: not a sweep table (CSV) or store (SQLite), or rows
    written to it do not read back."""


def store_paths(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(the SQLite store, the CSV export or None) of the table `path`: `NAME.sqlite` and `NAME.csv`
    for `NAME.csv` (any other suffix is replaced the same way), `path` itself and None for a path
    ending in `.sqlite`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or an os.PathLike; got {path!r}.")
    path = Path(path)
    if path.suffix == ".sqlite":
        return path, None
    return path.with_suffix(".sqlite"), path


def table_exists(path: str | os.PathLike) -> bool:
    """Whether the table `path` has a store or a CSV on disk."""
    db, csv_path = store_paths(path)
    return db.exists() or (csv_path is not None and csv_path.exists())


# --- values --------------------------------------------------------------------------------------

def _missing(v) -> bool:
    """A cell's missing value: None, pd.NA, NaN (not a tuple of a "floats" column)."""
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _floats(column: str, value) -> tuple:
    """A "floats" cell as a tuple of floats: a tuple, list or 1-d array of numbers; None or a
    lone NaN (a cell pandas filled in) or "" (the CSV's missing value) is empty."""
    if value is None or (isinstance(value, float) and value != value) or (
            isinstance(value, str) and value == ""):
        return ()
    items = value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value
    if not isinstance(items, (tuple, list)) or not all(
            isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in items):
        raise TypeError(f"`{column}` must hold tuples of floats (one per σ); got {value!r}.")
    return tuple(float(x) for x in items)


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts of `COLUMNS`) as a DataFrame with `COLUMN_TYPES` (also when there are none)."""
    df = pd.DataFrame([[r.get(c) for c in COLUMNS] for r in rows], columns=COLUMNS)
    for c, kind in COLUMN_TYPES.items():
        if kind == "float":
            df[c] = pd.to_numeric(df[c]).astype("float64")
        elif kind == "int":
            df[c] = df[c].astype("int64")
        elif kind == "Int64":
            df[c] = pd.array([None if _missing(v) else int(v) for v in df[c]], dtype="Int64")
        elif kind == "floats":
            df[c] = pd.Series([_floats(c, v) for v in df[c]], index=df.index, dtype=object)
        else:  # a missing text value is "", as a CSV's empty field reads (never "nan")
            df[c] = pd.Series(["" if _missing(v) else v for v in df[c]], index=df.index,
                              dtype=object).astype(str)
    return df


def table_records(table: pd.DataFrame) -> list[dict]:
    """The rows of a table as dicts of plain Python values (None where missing: NaN in a text or
    integer column, e.g. one pandas filled in when concatenating tables, is missing, not "nan")."""
    out = []
    for r in table[COLUMNS].to_dict("records"):
        out.append({k: (_floats(k, v) if COLUMN_TYPES.get(k) == "floats" else
                        None if _missing(v) else
                        v.item() if hasattr(v, "item") else v)
                    for k, v in r.items()})
    return out


def normalise_row(row: dict) -> dict:
    """A row with exactly `COLUMNS` (absent ones None)."""
    return {k: row.get(k) for k in COLUMNS}


def check_table(name: str, table) -> None:
    """`table` must be a DataFrame with every column of `COLUMNS` (TypeError, ValueError)."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"`{name}` must be a pandas DataFrame of sweep rows (as `read_table` "
                        f"returns); got {type(table).__name__}.")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"`{name}` must have every sweep column; it lacks {', '.join(missing)}.")


def current_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows of `table` made by this version's row format, and how many others it held (rows of
    older tables, or of another version of the workbench): those are never mixed into a result."""
    check_table("table", table)
    keep = (table["row_format"] == ROW_FORMAT).fillna(False).astype(bool)
    return table[keep], int((~keep).sum())


def run_identity(table: pd.DataFrame) -> pd.DataFrame:
    """The `RUN_COLUMNS` of `table`'s rows (same index), each missing value made one value: "" in
    a text column, <NA> in a number column (Float64). A column the table lacks (a table built by
    hand, or of an older layout) is missing in every row: rows of older row formats have a
    well-defined identity, and one without an attack never equals one with."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError("`table` must be a pandas DataFrame of sweep rows (as `read_table` "
                        f"returns); got {type(table).__name__}.")
    out = {}
    for c in RUN_COLUMNS:
        values = table[c].tolist() if c in table.columns else [None] * len(table)
        if COLUMN_TYPES[c] == "str":
            out[c] = pd.Series(["" if _missing(v) else str(v) for v in values], index=table.index,
                               dtype=object)
        else:
            out[c] = pd.Series([pd.NA if _missing(v) else float(v) for v in values],
                               index=table.index, dtype="Float64")
    return pd.DataFrame(out, index=table.index)


def latest_per_run(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per trained run (`run_identity`): the last one in the table, and how many rows were
    left out.

    A table can hold a run twice under different keys (measured again after a change of settings
    or of the estimator); both rows come from one model, so a correlation over runs counts it
    once. Rows of different attacks, poisoning or target modes, or training subsets are different
    runs, whatever else they share.
    """
    later = run_identity(table).duplicated(keep="last").to_numpy()
    return table[~later], int(later.sum())


def _latest_by_key(rows: list[dict]) -> dict[str, dict]:
    """One row per key: the last one (two sweeps, or older versions, may have written a key
    twice; counting both would weigh that point twice)."""
    out: dict[str, dict] = {}
    for r in rows:
        out.pop(r["key"], None)
        out[r["key"]] = r
    return out


# --- CSV -----------------------------------------------------------------------------------------

def csv_line(row: dict) -> bytes:
    """One row as one CSV record on one physical line (the importer reads a file line by line, so
    a line torn inside a quoted field cannot swallow the rows after it)."""
    values = ["" if row.get(c) is None else
              ";".join(repr(x) for x in _floats(c, row[c])) if COLUMN_TYPES[c] == "floats" else
              row.get(c) for c in COLUMNS]
    for c, v in zip(COLUMNS, values):
        if isinstance(v, str) and ("\n" in v or "\r" in v):
            raise ValueError(f"`row[{c!r}]` must be one line of text; got {v!r}.")
    return _csv_record(values)


def _csv_record(fields: list) -> bytes:
    """One CSV record as the csv module writes it (quoted where needed, CRLF)."""
    buf = io.StringIO()
    csv.writer(buf).writerow(fields)
    return buf.getvalue().encode("utf-8")


CSV_HEADER = _csv_record(COLUMNS)


def _fields(line: bytes) -> list[str] | None:
    """The fields of one physical line, or None when it is not one whole record (a torn quote)."""
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    try:
        return next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        return None


def _layout(line: bytes) -> list[str] | None:
    """The columns of a table whose first line (without its newline) is `line`: `COLUMNS` for this
    version's header or a proper beginning of it (a crash while the file was created, after which
    older versions appended rows), an older header's columns for that header (or a beginning of
    it only), None when it is not a sweep table."""
    text = line.rstrip(b"\r")
    fields = _fields(line)
    if fields == COLUMNS or CSV_HEADER.startswith(text):
        return COLUMNS
    for old in OLDER_COLUMNS:
        if fields == old or _csv_record(old).startswith(text):
            return old
    return None


def _not_a_table(path: Path) -> SweepFileError:
    return SweepFileError(f"`path` {path} is not a sweep table of this workbench (its first line is "
                          f"not the header {','.join(COLUMNS[:3])},...): choose another path "
                          "(nothing was changed).")


def _parse_value(kind: str, text: str):
    """One field's value; ValueError when it cannot be one of `kind`."""
    if kind == "str":
        return text
    if kind == "floats":  # repr of each float: read back exactly
        return tuple(float(x) for x in text.split(";")) if text else ()
    if text == "":
        if kind in ("float", "Int64"):
            return None
        raise ValueError("missing")
    if kind == "float":
        return float(text)
    try:  # "int", "Int64"
        return int(text)
    except ValueError:
        v = float(text)  # "3.0" is accepted, "3.5" is not
        if not v.is_integer():
            raise
        return int(v)


def _read_csv(data: bytes, path: Path) -> tuple[list[str], list[dict], list[bytes]]:
    """A sweep CSV's bytes -> (its columns, every whole row in file order with duplicates, each
    value of its column's type and every column of `COLUMNS` present, and the text that is not a
    whole row: a torn header, the text after the last newline, lines torn or with a value their
    column cannot hold). SweepFileError when it is not a sweep table. An empty file is an empty
    table of this layout."""
    if not data:
        return COLUMNS, [], []
    first = data.find(b"\n") + 1  # 0: no complete line
    line = data[:first - 1] if first else data
    columns = _layout(line)
    if columns is None:
        raise _not_a_table(path)
    damaged = [] if first and _fields(line) == columns else [data[:first or None]]
    end = data.rfind(b"\n") + 1
    rows = []
    for ln in (data[first:end].split(b"\n")[:-1] if first else []):
        vals = _fields(ln)
        r = None
        if vals is not None and len(vals) == len(columns) and vals[0]:
            try:
                r = {k: _parse_value(COLUMN_TYPES[k], v) for k, v in zip(columns, vals)}
            except ValueError:
                r = None
        if r is None:
            damaged.append(ln + b"\n")
            continue
        # a row of an older table lacks the newer columns: missing values
        rows.append({c: r.get(c, _MISSING.get(COLUMN_TYPES[c])) for c in COLUMNS})
    if first and end < len(data):
        damaged.append(data[end:])
    return columns, rows, damaged


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of a sweep table as a pandas DataFrame: one row per key (the last appended), the
    columns `COLUMNS` with their types (`COLUMN_TYPES`), in the order they were appended.

    path: the table as users name it (`reports/sweep.csv`: its store `reports/sweep.sqlite` is
    read when there is one, else the CSV; see the module's docstring), or a store (`.sqlite`).
    A missing table is an empty one. Rows of every row format are read: `current_rows` keeps this
    version's. Lines of a CSV that are not whole rows are left out. Creates and changes nothing.
    Raises SweepFileError when `path` is not a sweep table or store."""
    db, csv_path = store_paths(path)
    con = _connect_for_reading(db)
    if con is None:
        if csv_path is None or not csv_path.exists():
            return rows_frame([])
        return rows_frame(list(_latest_by_key(_read_csv(csv_path.read_bytes(), csv_path)[1])
                               .values()))
    try:
        rows = [r for _, r in _select(con)]
        if csv_path is not None:
            rows += _csv_rows_not_in_store(con, db, csv_path, rows, stacklevel=3)
    except sqlite3.DatabaseError as exc:
        raise _not_a_store(db, exc) from None
    finally:
        con.close()
    return rows_frame(list(_latest_by_key(rows).values()))


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a sweep table (a DataFrame with `COLUMNS`, e.g. a filtered `read_table`) to `path` as
    a CSV, atomically; `read_table` reads it back equal. `path` must not be a store, nor the CSV
    export of one (the store is the table: writing its CSV would not change it)."""
    check_table("table", table)
    db, csv_path = store_paths(path)
    if csv_path is None:
        raise ValueError(f"`path` must name a CSV file; got {str(db)!r} (a store: `run_sweep` "
                         "writes stores; write_table writes CSV).")
    if db.exists():
        raise ValueError(f"`path` must not be the CSV export of a sweep store; got {str(csv_path)!r}, "
                         f"whose store {db} is the table (writing the CSV would not change it): "
                         "write elsewhere.")
    return atomic_write(csv_path, CSV_HEADER + b"".join(csv_line(r) for r in table_records(table)))


def export_csv(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write every row of the store of table `path` (in the order appended, rows measured again
    under the same key included) to `out` as a CSV, atomically (default: the CSV beside the store,
    as every sweep does at its end); returns where. FileNotFoundError when it has no store."""
    db, csv_path = store_paths(path)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"`out` must be None, a str or an os.PathLike; got {out!r}.")
    if out is None and csv_path is None:
        raise ValueError(f"`out` must be given for a store with no CSV beside it; got None for {db}.")
    if not db.exists():
        raise FileNotFoundError(f"`path` {path} has no sweep store ({db} does not exist).")
    with SweepStore(path) as store:
        return store.export(out)


# --- SQLite --------------------------------------------------------------------------------------

def _q(name: str) -> str:
    """A quoted SQL identifier (`trigger` and `key` are SQL words)."""
    return '"' + name.replace('"', '""') + '"'


def _to_sql(column: str, value):
    kind = COLUMN_TYPES[column]
    if kind == "floats":
        return json.dumps(list(_floats(column, value)))
    if _missing(value):
        if kind == "int":
            raise ValueError(f"`row[{column!r}]` must be an int; got {value!r}.")
        return None
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError(f"`row[{column!r}]` must be a str; got {value!r}.")
        if "\n" in value or "\r" in value:  # the CSV export keeps one row per line
            raise ValueError(f"`row[{column!r}]` must be one line of text; got {value!r}.")
        return value
    if kind == "float":
        return float(value)
    v = value.item() if hasattr(value, "item") else value  # "int", "Int64"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise TypeError(f"`row[{column!r}]` must be an int; got {value!r}.")
    return int(v)


def _from_sql(column: str, value):
    kind = COLUMN_TYPES[column]
    if kind == "floats":
        return tuple(json.loads(value)) if value else ()
    if kind == "str":
        return "" if value is None else value
    return value  # int, Int64 (None where missing), float (None: NaN in the DataFrame)


def _connect(db: Path) -> sqlite3.Connection:
    """A connection to store `db` in WAL mode (created when missing), autocommit (transactions
    are explicit). A file that is not a sweep store is refused before anything in it changes."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        con = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            tables = _tables(con)
            if tables:
                _check_store(con, db, tables)
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            con.execute("PRAGMA synchronous=FULL")  # each row durable once committed
            break
        except sqlite3.OperationalError as exc:  # switching to WAL needs a moment alone
            con.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise _not_a_store(db, exc) from None
            time.sleep(0.05)
        except sqlite3.DatabaseError as exc:
            con.close()
            raise _not_a_store(db, exc) from None
        except BaseException:
            con.close()
            raise
    if mode.lower() != "wal":
        con.close()
        raise SweepFileError(f"{db}: SQLite cannot use WAL mode there (journal mode {mode!r}); put "
                             "the sweep table on a local filesystem.")
    return con


def _connect_for_reading(db: Path) -> sqlite3.Connection | None:
    """A connection to an existing store, or None when there is none yet (no file, an empty one,
    or one whose tables another process is still creating)."""
    try:
        if db.stat().st_size == 0:
            return None
    except FileNotFoundError:
        return None
    con = _connect(db)
    try:
        if not _tables(con):
            con.close()
            return None
    except sqlite3.DatabaseError as exc:
        con.close()
        raise _not_a_store(db, exc) from None
    return con


def _not_a_store(db: Path, exc: Exception) -> SweepFileError:
    return SweepFileError(f"`path` {db} is not a sweep store of this workbench (SQLite: {exc}): "
                          "choose another path (nothing was changed).")


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _check_store(con: sqlite3.Connection, db: Path, tables: set[str]) -> None:
    if not {"meta", "rows", "claims"} <= tables:
        raise SweepFileError(f"`path` {db} is not a sweep store of this workbench (its tables are "
                             f"{', '.join(sorted(tables))}): choose another path (nothing was "
                             "changed).")
    meta = dict(con.execute("SELECT name, value FROM meta"))
    if meta.get("store") != _MARK:
        raise SweepFileError(f"`path` {db} is not a sweep store of this workbench: choose another "
                             "path (nothing was changed).")
    if int(meta.get("store_format", 0)) > STORE_FORMAT:
        raise SweepFileError(f"{db} was written by a newer workbench (store format "
                             f"{meta['store_format']}; this one reads up to {STORE_FORMAT}): "
                             "upgrade the workbench (nothing was changed).")


def _columns(con: sqlite3.Connection) -> list[str]:
    """The columns of `COLUMNS` that the store's rows table has (a store made before a column was
    added lacks it until a writer opens it)."""
    have = {r[1] for r in con.execute("PRAGMA table_info(rows)")}
    return [c for c in COLUMNS if c in have]


def _select(con: sqlite3.Connection, where: str = "", params: tuple = ()):
    """(seq, row) of the store's rows (every column of `COLUMNS`), in the order appended."""
    cols = _columns(con)
    sql = (f"SELECT seq, {', '.join(_q(c) for c in cols)} FROM rows {where} ORDER BY seq")
    for rec in con.execute(sql, params):
        got = dict(zip(cols, rec[1:]))
        yield rec[0], {c: (_from_sql(c, got[c]) if c in got else _MISSING.get(COLUMN_TYPES[c]))
                       for c in COLUMNS}


@contextmanager
def _not_durable(con: sqlite3.Connection):
    """Commits that need not outlive a power cut (claims: their processes would not either)
    without waiting for the disk (synchronous=NORMAL: in WAL mode atomic and isolated all the
    same); the next FULL commit makes them durable too."""
    con.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        con.execute("PRAGMA synchronous=FULL")


@contextmanager
def _transaction(con: sqlite3.Connection):
    """One write transaction, taken at once (BEGIN IMMEDIATE: the write lock, waited for)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _csv_signature(path: Path) -> dict | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _meta_key(csv_path: Path) -> str:
    return f"csv {csv_path.name}"


def _csv_rows_not_in_store(con, db: Path, csv_path: Path, store_rows: list[dict],
                           stacklevel: int) -> list[dict]:
    """For a reader: the rows of the CSV beside the store that the store does not hold, when the
    CSV changed since the store last wrote or read it (else none), with a warning saying how many
    (the next sweep imports them)."""
    change = _csv_changes(con, db, csv_path, store_rows, write=False)
    if change is not None and change.rows:
        warnings.warn(f"{csv_path} changed since {db} last wrote or read it: its "
                      f"{len(change.rows)} rows that the store does not hold are read as the latest "
                      "rows of their keys (the next sweep imports them).", stacklevel=stacklevel)
    return [] if change is None else change.rows


class _CsvChange:
    """What a changed CSV beside a store holds: `rows` the store lacks, its `columns` (an older
    layout's for an older table) and its `damaged` text (not whole rows)."""

    def __init__(self, rows: list[dict], columns: list[str], damaged: list[bytes]):
        self.rows, self.columns, self.damaged = rows, columns, damaged


def _csv_changes(con, db: Path, csv_path: Path, store_rows: list[dict] | None,
                 write: bool) -> _CsvChange | None:
    """None when the CSV beside the store is missing or unchanged since the store last wrote or
    read it (its size and modification time, or its SHA-256, as recorded); else what it holds
    that the store does not. With `write` (the write lock held) its signature is recorded.
    store_rows: the store's rows (None: read here, only when needed)."""
    sig = _csv_signature(csv_path)
    if sig is None:
        return None
    row = con.execute("SELECT value FROM meta WHERE name = ?", (_meta_key(csv_path),)).fetchone()
    known = json.loads(row[0]) if row else None
    if known and (known["size"], known["mtime_ns"]) == (sig["size"], sig["mtime_ns"]):
        return None
    data = csv_path.read_bytes()  # after the stat: a later change gives a later signature
    sig["sha256"] = hashlib.sha256(data).hexdigest()
    if known and known.get("sha256") == sig["sha256"]:  # touched, not changed
        if write:
            _record(con, csv_path, sig)
        return None
    try:
        columns, rows, damaged = _read_csv(data, csv_path)
    except SweepFileError:
        raise SweepFileError(f"{csv_path} is not a sweep table of this workbench, but {db} is its "
                             f"store: move {csv_path.name} away (the next sweep writes the "
                             "store's rows there again); nothing was changed.") from None
    if store_rows is None:
        store_rows = [r for _, r in _select(con)]
    have = {csv_line(r) for r in store_rows}
    if write:
        _record(con, csv_path, sig)
    return _CsvChange([r for r in rows if csv_line(r) not in have], columns, damaged)


def _record(con, csv_path: Path, sig: dict) -> None:
    con.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                (_meta_key(csv_path), json.dumps(sig)))


def _process_start(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot, /proc/PID/stat), "zombie" for a
    process that has exited (not yet reaped), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return "zombie"
    return fields[19].decode()


def _alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` of this host, started at `started`, still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = _process_start(pid)
    return now != "zombie" and (started is None or now is None or now == started)


class SweepStore:
    """The rows of one sweep table in its SQLite store, opened for appending (see the module's
    docstring): `finished`, `finished_row`, `append`, `claim`/`release`, `export`, `close`.

    Opening imports the CSV beside the store once (when the store is new) and rows of the CSV
    that changed since (with a warning). One store object per process and thread; use it as a
    context manager or close it.
    """

    def __init__(self, path: str | os.PathLike):
        self.db_path, self.csv_path = store_paths(path)
        self.path = Path(path)
        self.torn_path = (None if self.csv_path is None else
                          self.csv_path.with_name(f"{self.csv_path.name}.torn"))
        self._written: dict[int, str] = {}  # seq -> key of the rows this store appended
        self._pid, self._host = os.getpid(), socket.gethostname()
        self._started = _process_start(self._pid)
        if (self.csv_path is not None and self.csv_path.exists()
                and not (self.db_path.exists() and self.db_path.stat().st_size)):
            _read_csv(self.csv_path.read_bytes(), self.csv_path)  # refused before anything exists
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._con = _connect(self.db_path)
        try:
            with _transaction(self._con):
                self._set_up()
        except sqlite3.DatabaseError as exc:
            self._con.close()
            raise _not_a_store(self.db_path, exc) from None
        except BaseException:
            self._con.close()
            raise

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._con.close()

    def _set_up(self) -> None:
        """Create or check the tables, add columns this version has and the store lacks, take in
        the CSV (the write lock held)."""
        con = self._con
        tables = _tables(con)
        if not tables:
            con.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cols = ", ".join(f"{_q(c)} {_SQL_TYPES[COLUMN_TYPES[c]]}" for c in COLUMNS)
            con.execute(f"CREATE TABLE rows (seq INTEGER PRIMARY KEY AUTOINCREMENT, {cols})")
            con.execute('CREATE INDEX rows_by_key ON rows ("key", seq)')
            con.execute('CREATE TABLE claims ("key" TEXT PRIMARY KEY, token TEXT NOT NULL, '
                        "pid INTEGER NOT NULL, started TEXT, host TEXT NOT NULL, "
                        "since REAL NOT NULL)")
            con.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                            [("store", _MARK), ("store_format", str(STORE_FORMAT))])
        else:
            _check_store(con, self.db_path, tables)
            have = set(_columns(con))
            for c in COLUMNS:
                if c not in have:  # never an "int" column: the assert on OLDER_COLUMNS
                    con.execute(f"ALTER TABLE rows ADD COLUMN {_q(c)} "
                                f"{_SQL_TYPES[COLUMN_TYPES[c]]}")
        if self.csv_path is not None:
            self._take_in_csv()

    def _take_in_csv(self) -> None:
        """Import the rows of the CSV beside the store that it lacks, when the CSV changed since
        the store last wrote or read it (the write lock held); set its damaged text aside."""
        con = self._con
        had_rows = con.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is not None
        change = _csv_changes(con, self.db_path, self.csv_path, None, write=True)
        if change is None:
            return
        self._insert(change.rows)
        if change.damaged:
            with open(self.torn_path, "ab") as f:
                for frag in change.damaged:
                    f.write(frag if frag.endswith(b"\n") else frag + b"\n")
                f.flush()
                os.fsync(f.fileno())
            warnings.warn(f"{self.csv_path}: text of an interrupted write (or a line whose values "
                          f"its columns cannot hold) was not imported into {self.db_path}; it is "
                          f"kept in {self.torn_path} (a point whose row the store lacks is "
                          "computed again).", stacklevel=5)
        if had_rows and change.rows:
            warnings.warn(f"{self.csv_path} changed since {self.db_path} last wrote or read it: "
                          f"its {len(change.rows)} rows that the store did not hold were imported "
                          "as the latest rows of their keys.", stacklevel=5)
        if change.columns is not COLUMNS and change.rows:
            completable = ", ".join(map(str, sorted(COMPLETABLE)))
            warnings.warn(f"{self.csv_path} is a sweep table of an older workbench (row format "
                          f"before {ROW_FORMAT}): its {len(change.rows)} rows are kept with their "
                          f"older or an empty row_format, imported into {self.db_path} (rows of "
                          f"row format {completable} are completed from the sweep's grid points "
                          "where their keys match, with no training or measuring; older ones are "
                          "never reused: they are computed again).", stacklevel=5)

    def _insert(self, rows: list[dict]) -> list[int]:
        """Insert rows (in a transaction the caller holds); their seqs."""
        cols = _columns(self._con)
        sql = (f"INSERT INTO rows ({', '.join(_q(c) for c in cols)}) "
               f"VALUES ({', '.join('?' for _ in cols)})")
        out = []
        for r in rows:
            out.append(self._con.execute(sql, [_to_sql(c, r.get(c)) for c in cols]).lastrowid)
        return out

    def _latest(self, key: str | None = None) -> dict[str, dict]:
        """key -> the row a sweep reuses for it: the last row of this row format, else the last
        of an older format it completes (`COMPLETABLE`)."""
        out: dict[str, dict] = {}
        for fmts in (tuple(COMPLETABLE), (ROW_FORMAT,)):
            marks = ", ".join("?" for _ in fmts)
            where = '"key" = ? AND ' if key is not None else ""
            params = ((key,) if key is not None else ()) + fmts
            for _, r in _select(self._con, f"WHERE seq IN (SELECT MAX(seq) FROM rows WHERE "
                                           f"{where}row_format IN ({marks}) GROUP BY \"key\")",
                                params):
                out[r["key"]] = r
        return out

    def finished(self) -> dict[str, dict]:
        """key -> row of every point finished so far: rows of this row format, and of the older
        formats a sweep completes (`COMPLETABLE`, where no row of this format has the key)."""
        return self._latest()

    def finished_row(self, key: str) -> dict | None:
        """The row `finished()` holds for `key`, or None."""
        return self._latest(key).get(key)

    def rows(self) -> list[dict]:
        """Every row, in the order appended (rows of one key measured again included)."""
        return [r for _, r in _select(self._con)]

    def append(self, row: dict) -> None:
        """Append one row (one transaction), then check that every row this store appended reads
        back (SweepFileError when one does not: something else deleted it)."""
        row = normalise_row(row)
        csv_line(row)  # one line per text value, numbers of the right types: before the write
        with _transaction(self._con):
            (seq,) = self._insert([row])
        self._written[seq] = row["key"]
        seqs = list(self._written)
        found: set[int] = set()
        for i in range(0, len(seqs), 500):
            part = seqs[i:i + 500]
            found.update(s for (s,) in self._con.execute(
                f"SELECT seq FROM rows WHERE seq IN ({', '.join('?' for _ in part)})", part))
        lost = [s for s in seqs if s not in found]
        if lost:
            raise SweepFileError(
                f"{self.db_path}: {len(lost)} of the {len(seqs)} rows this sweep wrote do not "
                f"read back (first: key {self._written[lost[0]]}); something else changed the "
                "store. Run the sweep again to recompute the missing rows.")

    def claim(self, key: str) -> str | None:
        """Claim `key`'s point for this process: a token for `release`, or None when a live
        process (this one included) holds it. A claim whose process is gone is taken over."""
        with _not_durable(self._con), _transaction(self._con):
            held = self._con.execute('SELECT pid, started, host FROM claims WHERE "key" = ?',
                                     (key,)).fetchone()
            if held is not None:
                pid, started, host = held
                if host != self._host:
                    raise SweepFileError(
                        f"{self.db_path}: point {key} is claimed by process {pid} on host "
                        f"{host!r}; a sweep store is for the sweeps of one machine (SQLite's WAL "
                        "mode): give each machine its own table, or run one sweep with a Dask "
                        "executor (its workers send their rows to the sweep's process).")
                if pid == self._pid or _alive(pid, started):
                    return None
            token = uuid.uuid4().hex
            self._con.execute("INSERT OR REPLACE INTO claims (\"key\", token, pid, started, host, "
                              "since) VALUES (?, ?, ?, ?, ?, ?)",
                              (key, token, self._pid, self._started, self._host, time.time()))
        return token

    def release(self, key: str, token: str | None) -> None:
        """Give back a claim made by `claim` (a no-op for None)."""
        if token is not None:
            with _not_durable(self._con):
                self._con.execute('DELETE FROM claims WHERE "key" = ? AND token = ?',
                                  (key, token))

    def claims(self) -> list[dict]:
        """The claims held now (key, pid, host, since): points sweeps are computing, or claims of
        processes that died (taken over by the next sweep that wants the point)."""
        return [dict(zip(("key", "pid", "host", "since"), r)) for r in
                self._con.execute('SELECT "key", pid, host, since FROM claims ORDER BY since')]

    def export(self, out: str | os.PathLike | None = None, full: bool = True) -> Path | None:
        """Write every row (in the order appended) as a CSV: to `out`, or to the CSV beside the
        store (None when there is none), whose signature is then recorded. The write lock is held,
        so no row is appended meanwhile.

        full: rewrite the whole file atomically (a reader sees the old CSV or the new one). With
        full=False (what a sweep does after each row) the rows appended since this CSV was last
        exported are appended to it, when it is still exactly as exported then (else it is
        rewritten): a sweep's CSV costs one row per row, not the whole table. Rows deleted from
        the store behind its back stay in such a CSV until the next full export (every sweep's
        last). A CSV beside the store that changed since the store wrote it is first taken in
        (its rows the store lacks imported, with a warning), never overwritten unread."""
        target = self.csv_path if out is None else Path(out)
        if target is None:
            return None
        beside = target == self.csv_path
        with _transaction(self._con):
            if beside:  # rows someone added to the CSV since are imported, never overwritten
                self._take_in_csv()
            last = self._con.execute("SELECT MAX(seq) FROM rows").fetchone()[0] or 0
            known = (self._con.execute("SELECT value FROM meta WHERE name = ?",
                                       (_meta_key(target),)).fetchone() if beside else None)
            known = json.loads(known[0]) if known else None
            sig = _csv_signature(target)
            if (not full and beside and known is not None and known.get("exported_seq") is not None
                    and sig is not None
                    and (sig["size"], sig["mtime_ns"]) == (known["size"], known["mtime_ns"])):
                new = [r for _, r in _select(self._con, "WHERE seq > ?", (known["exported_seq"],))]
                if not new:
                    return target
                with open(target, "ab") as f:
                    f.write(b"".join(csv_line(r) for r in new))
                    f.flush()
                    os.fsync(f.fileno())
                sig = dict(_csv_signature(target), sha256=None, exported_seq=last)
            else:
                body = CSV_HEADER + b"".join(csv_line(r) for r in self.rows())
                atomic_write(target, body)
                sig = dict(_csv_signature(target), sha256=hashlib.sha256(body).hexdigest(),
                           exported_seq=last)
            if beside:
                _record(self._con, target, sig)
        return target


__all__ = ["SweepStore", "SweepFileError", "read_table", "write_table", "export_csv",
           "store_paths", "table_exists", "current_rows", "latest_per_run", "run_identity",
           "rows_frame", "table_records", "normalise_row", "check_table", "csv_line",
           "CSV_HEADER", "COLUMNS", "COLUMN_TYPES", "ROW_FORMAT", "RUN_COLUMNS", "COMPLETABLE",
           "LEGACY_COLUMNS", "FORMAT3_COLUMNS", "FORMAT4_COLUMNS", "OLDER_COLUMNS",
           "STORE_FORMAT", "BUSY_TIMEOUT_S"]
