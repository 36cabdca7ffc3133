"""Sweeps under faults, with real files and processes: CSV tables of older workbenches with torn
writes (imported into the SQLite store), several sweeps and writers on one store, a writer killed
mid-row, a killed sweep, Ctrl-C. The sweeps run `python -m workbench sweep` on quick digits grids
(one epoch per run, trained once into the session's run cache)."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from workbench import sweep as sw
from workbench import sweepstore

psutil = pytest.importorskip("psutil")

# four quick points; the CLI's options and the grid below name the same points (the same keys)
RATES = ("0", "0.05", "0.1", "0.2")
QUICK = ["--sizes", "3", "--rates", *RATES, "--epochs", "1", "--pairs", "10", "--samples", "16",
         "--quiet"]
QUICK_GRID = dict(trigger_sizes=(3,), rates=tuple(float(r) for r in RATES), epochs=1, n_pairs=10,
                  n_samples=16)


HEADER = (",".join(sw.COLUMNS) + "\r\n").encode()  # as the csv module writes it


def _sweep_cmd(out, *args):
    return [sys.executable, "-m", "workbench", "sweep", *args, "--out", str(out)]


def _run(out, *args, timeout=120):
    return subprocess.run(_sweep_cmd(out, *args), capture_output=True, text=True, timeout=timeout)


def _computed(stdout: str) -> int:
    """How many points a CLI sweep computed itself (its last line says)."""
    return int(re.search(r"\((\d+) computed now, \d+ read from the file\)$", stdout.strip())[1])


def _keys_in_file(path: Path) -> Counter:
    """Keys of the complete data lines in the CSV as written (the store's export), duplicates
    included."""
    lines = path.read_bytes().split(b"\n")[:-1]
    assert lines[0].rstrip(b"\r") == HEADER.rstrip(b"\r\n")
    return Counter(line.split(b",", 1)[0].decode() for line in lines[1:])


@pytest.fixture(scope="module")
def quick_csv(tmp_path_factory, digits):
    """The four quick points' complete CSV, computed once in this process."""
    path = tmp_path_factory.mktemp("quick") / "sweep.csv"
    table = sw.run_sweep(sw.SweepGrid(**QUICK_GRID), path, max_workers=1, progress=False)
    assert len(table) == 4
    return path


def _copy(src: Path, dst: Path, data: bytes | None = None) -> Path:
    dst.write_bytes(src.read_bytes() if data is None else data)
    return dst


@pytest.mark.slow
def test_a_csv_with_a_torn_header_is_imported(tmp_path, quick_csv):
    """The CSV of an older workbench holds only the start of its header (a crash as it was
    created): imported as an empty table, the fragment set aside, every point computed once."""
    path = _copy(quick_csv, tmp_path / "sweep.csv", HEADER[:37])
    res = _run(path, *QUICK)
    assert res.returncode == 0, res.stderr
    assert len(sw.read_table(path)) == 4
    assert sorted(_keys_in_file(path).values()) == [1, 1, 1, 1]
    assert "4 runs in" in res.stdout and _computed(res.stdout) == 4
    assert "text of an interrupted write" in res.stderr
    assert (tmp_path / "sweep.csv.torn").read_bytes() == HEADER[:37] + b"\n"
    again = _run(path, *QUICK)
    assert again.returncode == 0 and _computed(again.stdout) == 0


def test_a_torn_header_followed_by_rows_of_older_versions_is_imported(tmp_path, quick_csv):
    """Older versions appended whole sweeps after a torn header: the rows are imported, read
    once; the CSV is rewritten from the store with its header."""
    lines = quick_csv.read_bytes().splitlines(keepends=True)
    path = _copy(quick_csv, tmp_path / "sweep.csv",
                 HEADER[:20] + b"\n" + b"".join(lines[1:] * 2))
    assert len(sw.read_table(path)) == 4  # read as they are, one row per key
    with pytest.warns(UserWarning, match="text of an interrupted write"):
        table = sw.run_sweep(sw.SweepGrid(**QUICK_GRID), path, max_workers=1, progress=False)
    assert len(table) == 4 and table.attrs["computed"] == []
    assert path.read_bytes().startswith(HEADER) and len(sw.read_table(path)) == 4


def _tear_points(line: bytes) -> dict[str, int]:
    """Where to cut the last row: inside the `trigger` column's quoted field among others."""
    q0 = line.index(b'"')  # the trigger's repr holds commas, so it is quoted
    q1 = line.index(b'"', q0 + 1)
    after = line[q1 + 2:].split(b",")  # trigger_type, trigger_size, rate, ..., gap, ...
    gap = q1 + 2 + sum(len(f) + 1 for f in after[:9])
    return {"in the key": 5, "after the opening quote": q0 + 1,
            "inside the quotes, after a comma": line.index(b",", q0) + 1,
            "before the closing quote": q1, "after the closing quote": q1 + 1,
            "inside trigger_type": q1 + 4, "inside the gap's digits": gap + 4,
            "before the line end": len(line.rstrip(b"\r\n")),
            "between CR and LF": len(line) - 1}


def test_a_torn_last_row_is_set_aside_at_every_tear_point(tmp_path, quick_csv):
    """A CSV of an older workbench whose last row was cut (inside the quoted `trigger` field, among
    others, where it used to swallow the next appended row). Each tear point: the import sets the
    fragment aside, the sweep recomputes that one point, and every row reads back once."""
    lines = quick_csv.read_bytes().splitlines(keepends=True)
    last = lines[-1]
    torn_key = last.split(b",", 1)[0].decode()
    grid = sw.SweepGrid(**QUICK_GRID)
    points = _tear_points(last)
    assert len(set(points.values())) == len(points) == 9
    for name, cut in points.items():
        folder = tmp_path / name.replace(" ", "_").replace(",", "")
        folder.mkdir()
        path = _copy(quick_csv, folder / "sweep.csv", b"".join(lines[:-1]) + last[:cut])
        assert len(sw.read_table(path)) == 3, name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = sw.run_sweep(grid, path, max_workers=1, progress=False)
        assert len(sw.read_table(path)) == 4, name
        assert sorted(_keys_in_file(path).values()) == [1, 1, 1, 1], name
        assert len(table) == 4 and table.attrs["computed"] == [torn_key], name
        assert any("text of an interrupted write" in str(w.message) for w in caught), name
        assert (folder / "sweep.csv.torn").read_bytes() == last[:cut] + b"\n", name


def test_rows_after_a_line_torn_by_older_versions_are_read(tmp_path, quick_csv):
    """Older versions appended after a torn line (a newline, then the row): parsed line by line,
    the row after a line torn inside quotes is not swallowed."""
    lines = quick_csv.read_bytes().splitlines(keepends=True)
    q = lines[2].index(b'"') + 4
    path = _copy(quick_csv, tmp_path / "sweep.csv",
                 b"".join(lines[:2]) + lines[2][:q] + b"\n" + b"".join(lines[3:]))
    assert len(sw.read_table(path)) == 3  # the torn one is left out, the ones after it are read


def test_rows_written_must_read_back(tmp_path, quick_csv):
    """An append whose rows do not read back (here: something deletes the store's rows behind
    the sweep's back) fails loudly instead of reporting rows that are not there."""
    path = tmp_path / "sweep.csv"
    rows = sw.read_table(quick_csv).to_dict("records")
    with sweepstore.SweepStore(path) as store:
        store.append(rows[0])
        with sqlite3.connect(tmp_path / "sweep.sqlite") as other:
            other.execute("DELETE FROM rows")  # something else empties the table
        other.close()
        with pytest.raises(sw.SweepFileError,
                           match="1 of the 2 rows this sweep wrote do not read back"):
            store.append(rows[1])


@pytest.mark.slow
def test_sweeps_started_together_compute_each_point_once(tmp_path, quick_csv):
    """Three sweeps of one grid on one CSV at once: every point is computed by exactly one of
    them and written once; each returns the whole grid. (Before: each computed and appended every
    point, 12 rows for 4 points.)"""
    path = tmp_path / "sweep.csv"
    # slower points (about 1 s each) so that the sweeps overlap; training comes from the cache
    args = [*QUICK[:-5], "--pairs", "40", "--samples", "128", "--workers", "1", "--quiet"]
    procs = [subprocess.Popen(_sweep_cmd(path, *args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "4 runs in" in out
    keys = _keys_in_file(path)
    assert len(keys) == 4 and set(keys.values()) == {1}
    assert sum(_computed(out) for out, _ in outs) == 4
    assert not (tmp_path / "sweep.csv.torn").exists()
    with sweepstore.SweepStore(path) as store:
        assert store.claims() == []  # every claim was released


def descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs) -> list:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:  # an exited orphan that nobody reaped
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """Whatever is left of a sweep started in its own session, orphans included."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_killing_a_sweep_ends_its_workers(tmp_path, quick_csv):
    """SIGKILL of the sweep's main process: its worker processes exit within seconds instead of
    finishing their runs for nobody (before: orphans of 830 MB for 15+ minutes)."""
    path = tmp_path / "sweep.csv"
    # slow points (about 30 s each on one thread): the workers are busy when the main dies
    args = ["--sizes", "3", "--rates", "0", "0.05", "--epochs", "1", "--pairs", "100",
            "--samples", "2048", "--workers", "2", "--quiet"]
    main = subprocess.Popen(_sweep_cmd(path, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def workers():
            return [p for p in descendants(main.pid) if "spawn_main" in " ".join(p.cmdline())]

        def busy():  # past imports and set-up: measuring (cached runs load in well under 1 s)
            ws = workers()
            return len(ws) == 2 and all(sum(w.cpu_times()[:2]) > 4 for w in ws)

        _wait_until(busy, 90, "two busy workers")
        family = descendants(main.pid)
        main.kill()
        main.wait(10)
        _wait_until(lambda: not _alive(family), 5, "the workers to exit")
    finally:
        _kill_group(main)
    assert not path.exists() or len(sw.read_table(path)) == 0  # nothing finished, nothing torn


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_cleanly_and_the_same_command_resumes(tmp_path, quick_csv):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it): exit status 130, one
    line saying how to resume, no traceback, no worker left; finished rows are kept and the same
    command computes only the rest."""
    path = tmp_path / "sweep.csv"
    # 512 samples: a few seconds of measuring per point even when every training is cached, so
    # the interrupt lands mid-sweep (with 128 a quiet machine finished all six before it)
    args = ["--sizes", "3", "--rates", "0", "0.05", "0.1", "0.2", "0.3", "0.5", "--epochs", "1",
            "--pairs", "40", "--samples", "512", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(_sweep_cmd(path, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_until(lambda: path.exists() and len(sw.read_table(path)) >= 1, 120, "a first row")
        family = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        _wait_until(lambda: not _alive(family), 5, "the workers and resource tracker to exit")
    finally:
        _kill_group(proc)
    assert proc.returncode == 130
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    kept = len(sw.read_table(path))
    assert 1 <= kept < 6
    command = "python -m workbench sweep " + " ".join(args) + f" --out {path}"
    assert lines == [f"interrupted: {kept} of 6 runs are saved in {path}; to resume, run the same "
                     f"command again: {command}"]
    again = _run(path, *args)
    assert again.returncode == 0, again.stderr
    assert "6 runs in" in again.stdout and _computed(again.stdout) == 6 - kept
    keys = _keys_in_file(path)
    assert len(keys) == 6 and set(keys.values()) == {1}


def test_a_one_line_file_that_is_not_a_table_is_left_alone(tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_bytes(b"my notes, do not touch")
    grid = sw.SweepGrid(trigger_sizes=(3,), rates=(0.0,), epochs=1, n_pairs=4, n_samples=8,
                        sigmas=(0.1, 0.3))
    with pytest.raises(ValueError, match="not a sweep table"):
        sw.run_sweep(grid, notes, max_workers=1, progress=False)
    assert notes.read_bytes() == b"my notes, do not touch"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.csv"]  # no store, nothing set aside


# --- the store under concurrent and killed writers (no training: made-up rows) ------------------

def _made_up_row(key: str) -> dict:
    """A whole row of made-up values (JSON: tuples as lists)."""
    kinds = {"str": "x", "int": 1, "float": 0.25, "Int64": None, "floats": [0.1, 0.2]}
    row = {c: kinds[t] for c, t in sw.COLUMN_TYPES.items()}
    row.update(key=key, row_format=sw.ROW_FORMAT, trigger="Patch(size=3, position='bottom-right')")
    return row


# appends rows w-0, w-1, ... to the table argv[1] (argv[2] of them, or until killed; argv[3] = w),
# printing each key once committed
_WRITER = """
import json, sys
from workbench import sweepstore
path, n, who, row = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
with sweepstore.SweepStore(path) as store:
    i = 0
    while n < 0 or i < n:
        store.append(dict(row, key=f"{who}-{i}"))
        print(f"{who}-{i}", flush=True)
        i += 1
"""


def _writer(path: Path, n: int, who: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n), who,
                             json.dumps(_made_up_row("template"))], text=True, **kw)


def _whole_and_sound(path: Path) -> list[str]:
    """The keys read back, after checking that the store is sound and every row whole."""
    with sqlite3.connect(path.with_suffix(".sqlite")) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    table = sw.read_table(path)
    want = _made_up_row("")
    for r in table.to_dict("records"):
        assert r["trigger"] == want["trigger"] and r["gap"] == 0.25 and r["seed"] == 1, r
        assert r["clean_curve"] == (0.1, 0.2) and r["row_format"] == sw.ROW_FORMAT, r
    return table["key"].tolist()


def test_concurrent_writers_lose_no_row_and_tear_none(tmp_path):
    """Four processes append 40 rows each to one table at once: all 160 read back whole, once."""
    path = tmp_path / "sweep.csv"
    procs = [_writer(path, 40, f"w{i}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    keys = _whole_and_sound(path)
    assert len(keys) == 160 and set(keys) == {f"w{i}-{j}" for i in range(4) for j in range(40)}
    with sqlite3.connect(tmp_path / "sweep.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 160  # none twice
    con.close()


def test_a_writer_killed_mid_row_loses_only_that_row(tmp_path):
    """A writer killed (SIGKILL) at random moments while appending: every row it reported
    committed reads back, at most the one it was writing is lost, none is torn, and the next
    writer appends at once (the kernel released the dead writer's locks)."""
    path = tmp_path / "sweep.csv"
    rng = __import__("random").Random(0)
    reported: list[str] = []
    for trial in range(3):
        p = _writer(path, -1, f"t{trial}", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        first = p.stdout.readline().strip()  # appending is under way
        time.sleep(rng.uniform(0.0, 0.3))
        p.kill()
        out, _ = p.communicate(timeout=10)
        reported += [first, *out.split()]
        keys = _whole_and_sound(path)
        assert set(reported) <= set(keys)  # every row reported committed is there
        mine = [k for k in keys if k.startswith(f"t{trial}-")]
        assert len(mine) - len([k for k in reported if k.startswith(f"t{trial}-")]) <= 1
        assert mine == [f"t{trial}-{j}" for j in range(len(mine))]  # in order, none missing
    with sweepstore.SweepStore(path) as store:  # no lock left behind
        store.append(_made_up_row("after"))
    assert "after" in sw.read_table(path)["key"].tolist()


def test_a_claim_dies_with_its_process(tmp_path):
    """A point claimed by a live sweep is skipped by the others; once that sweep is killed
    (reaped or not), the claim is free and the next sweep takes it over."""
    path = tmp_path / "sweep.csv"
    script = ("import sys, time\nfrom workbench import sweepstore\n"
              "s = sweepstore.SweepStore(sys.argv[1])\nassert s.claim('k') is not None\n"
              "print('claimed', flush=True)\ntime.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "claimed"
        with sweepstore.SweepStore(path) as store:
            assert store.claim("k") is None  # the other sweep is computing it
            assert [c["pid"] for c in store.claims()] == [p.pid]
            p.kill()
            _wait_until(lambda: psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE, 10,
                        "the killed sweep to exit")
            token = store.claim("k")  # its (unreaped) process is dead: the claim is free
            assert token is not None and store.claim("k") is None  # now this process's
            store.release("k", token)
            assert store.claims() == []
    finally:
        p.kill()
        p.wait(10)
