"""Sweeps under faults, with real files and processes: torn CSV writes, several sweeps on one CSV,
a killed sweep, Ctrl-C. The sweeps run `python -m workbench sweep` on quick digits grids (one
epoch per run, trained once into the session's run cache)."""

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from workbench import sweep as sw

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
    """Keys of the complete data lines in the file as written, duplicates included."""
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
def test_a_torn_header_is_repaired(tmp_path, quick_csv):
    """The file holds only the start of its header (a crash as it was created): before, every
    rerun said "4 runs" while the file read back as 0 rows, and appended every point again."""
    path = _copy(quick_csv, tmp_path / "sweep.csv", HEADER[:37])
    res = _run(path, *QUICK)
    assert res.returncode == 0, res.stderr
    assert len(sw.read_table(path)) == 4
    assert sorted(_keys_in_file(path).values()) == [1, 1, 1, 1]
    assert "4 runs in" in res.stdout and _computed(res.stdout) == 4
    assert "an interrupted write was repaired" in res.stderr
    assert (tmp_path / "sweep.csv.torn").read_bytes() == HEADER[:37] + b"\n"
    again = _run(path, *QUICK)
    assert again.returncode == 0 and _computed(again.stdout) == 0


def test_a_torn_header_followed_by_rows_of_older_versions_is_repaired(tmp_path, quick_csv):
    """Older versions appended whole sweeps after a torn header: the rows are kept, read once."""
    lines = quick_csv.read_bytes().splitlines(keepends=True)
    path = _copy(quick_csv, tmp_path / "sweep.csv",
                 HEADER[:20] + b"\n" + b"".join(lines[1:] * 2))
    assert len(sw.read_table(path)) == 4  # read as they are, one row per key
    with pytest.warns(UserWarning, match="repaired"):
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


def test_a_torn_last_row_is_repaired_at_every_tear_point(tmp_path, quick_csv):
    """A row cut inside the quoted `trigger` field used to swallow the next appended row (3 of 4
    rows read back while the sweep said 4). Each tear point: the rerun moves the fragment aside,
    recomputes that one point, and every row reads back once."""
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
        assert any("an interrupted write was repaired" in str(w.message) for w in caught), name
        assert (folder / "sweep.csv.torn").read_bytes() == last[:cut] + b"\n", name


def test_rows_after_a_line_torn_by_older_versions_are_read(tmp_path, quick_csv):
    """Older versions appended after a torn line (a newline, then the row): parsed line by line,
    the row after a line torn inside quotes is not swallowed."""
    lines = quick_csv.read_bytes().splitlines(keepends=True)
    q = lines[2].index(b'"') + 4
    path = _copy(quick_csv, tmp_path / "sweep.csv",
                 b"".join(lines[:2]) + lines[2][:q] + b"\n" + b"".join(lines[3:]))
    assert len(sw.read_table(path)) == 3  # the torn one is left out, the ones after it are read


def test_rows_written_must_read_back(tmp_path, quick_csv, monkeypatch):
    """An append whose rows do not read back (here: the file is truncated behind the sweep's
    back after each write) fails loudly instead of reporting rows that are not there."""
    path = tmp_path / "sweep.csv"
    store = sw._Store(path)
    rows = sw.read_table(quick_csv).to_dict("records")
    store.append(rows[0])
    real_open = open

    def clobbering_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if Path(file) == path and "a" in mode:
            os.truncate(path, len(HEADER))  # something else empties the table
        return f

    monkeypatch.setattr("builtins.open", clobbering_open)
    with pytest.raises(sw.SweepFileError, match="1 of the 2 rows this sweep wrote do not read back"):
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
    assert list((tmp_path / ".sweep.csv.claims").iterdir()) == []  # every claim was released


def _descendants(pid: int) -> list:
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
            return [p for p in _descendants(main.pid) if "spawn_main" in " ".join(p.cmdline())]

        def busy():  # past imports and set-up: measuring (cached runs load in well under 1 s)
            ws = workers()
            return len(ws) == 2 and all(sum(w.cpu_times()[:2]) > 4 for w in ws)

        _wait_until(busy, 90, "two busy workers")
        family = _descendants(main.pid)
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
        family = _descendants(proc.pid)
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
    assert not (tmp_path / "notes.csv.torn").exists()
