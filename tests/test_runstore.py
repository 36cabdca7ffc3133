"""Fault injection on the run cache and saved runs, with real processes: concurrent trainers,
savers and readers, SIGKILL at random moments of training and saving (also between the two renames
of an overwrite where the atomic swap is not available), damaged files, wrong paths."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import workbench as wb
from workbench import runstore
from workbench.triggers import Patch

pytestmark = pytest.mark.slow

TINY = dict(trigger=Patch(size=2), rate=0.1, target=1, epochs=2, seed=11, max_train=300,
            progress=False)
_TINY_SRC = ("dict(trigger=wb.triggers.Patch(size=2), rate=0.1, target=1, epochs=2, seed=11, "
             "max_train=300, progress=False)")


def _spawn(code: str, data: Path, **env) -> subprocess.Popen:
    src = "import sys, json, time, os, torch\nimport workbench as wb\nfrom workbench import runstore\n"
    src += "torch.set_num_threads(1)\n" + textwrap.dedent(code)
    e = {**os.environ, "WORKBENCH_DATA": str(data), "TQDM_DISABLE": "1", **env}
    return subprocess.Popen([sys.executable, "-c", src], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.is_dir())


def test_four_processes_training_one_new_configuration(tmp_path):
    code = f"""
        run = wb.train_backdoor("digits", **{_TINY_SRC})
        print(json.dumps({{"path": run.path, "seconds": run.train_seconds,
                          "acc": run.clean_accuracy}}))
    """
    procs = [_spawn(code, tmp_path) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    res = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    # one trained and saved; the three others waited on the lock and loaded that run
    assert len({r["path"] for r in res}) == 1
    assert len({r["seconds"] for r in res}) == 1 and len({r["acc"] for r in res}) == 1
    runs = tmp_path / "runs"
    assert [p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")] == \
        [Path(res[0]["path"]).name]
    assert _leftovers(runs) == []


def test_sigkill_during_training_and_saving_leaves_a_usable_cache(tmp_path, monkeypatch):
    """Kill trainers at random moments of import, training and saving (6 kills); the next call
    returns a valid run and nothing is left behind. Kill times are drawn from the duration of
    one uninterrupted run measured first, so the test adapts to how busy the machine is."""
    code = f"""
        wb.train_backdoor("digits", **{_TINY_SRC})
        print("done")
    """
    runs = tmp_path / "runs"
    t0 = time.perf_counter()
    first = _spawn(code, tmp_path)
    first.communicate(timeout=300)
    full = time.perf_counter() - t0
    assert first.returncode == 0
    rng = random.Random(0)
    kills = tries = 0
    while kills < 6 and tries < 20:
        tries += 1
        for d in runs.iterdir():  # a fresh entry: each try trains and saves again, while
            if d.is_dir() and not d.name.startswith("."):  # killed saves' leftovers stay
                shutil.rmtree(d)
        p = _spawn(code, tmp_path)
        time.sleep(rng.uniform(0.3, 1.0) * full)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate(timeout=300)
    assert kills == 6, (kills, tries)
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    run = wb.train_backdoor("digits", **TINY)
    again = wb.train_backdoor("digits", **TINY)
    assert again.path == run.path and again.train_seconds == run.train_seconds  # loaded
    assert _leftovers(runs) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_sigkill_during_overwrites_never_loses_the_users_run(tmp_path, digits_run, exchange):
    """A process overwrites a user's run folder in a loop and is killed at random moments
    (8 kills); after each kill, load_run finds a complete run (old or new), and no `.run.*`
    folder is left once the next save or load has run."""
    target = tmp_path / "user-run"
    digits_run.save(target)
    code = f"""
        runstore._exchange.available = {exchange}
        run = wb.load_run({str(target)!r})
        print("ready", flush=True)
        while True:
            run.save({str(target)!r}, overwrite=True)
    """
    rng = random.Random(1)
    for _ in range(8):
        p = _spawn(code, tmp_path)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.5))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        loaded = wb.load_run(target)  # restores `.user-run.old` if the kill fell between renames
        assert loaded.config == digits_run.config
    digits_run.save(target, overwrite=True)  # the next save removes what killed saves left
    assert _leftovers(tmp_path) == []


def test_kill_between_the_two_renames_is_repaired(tmp_path, digits_run):
    # the state a save leaves when killed after `path -> .path.old` and before `tmp -> path`
    target = tmp_path / "r"
    digits_run.save(target)
    os.rename(target, tmp_path / ".r.old")
    (tmp_path / ".r.tmp-abcd1234").mkdir()  # and an unfinished temporary folder
    assert wb.load_run(target).config == digits_run.config
    digits_run.save(target, overwrite=True)
    assert _leftovers(tmp_path) == []


def test_recovery_touches_only_its_own_leftovers(tmp_path, digits_run):
    # `exp` must not take `exp.v2`'s run caught between renames, nor a live writer's folder,
    # nor names that a glob pattern would match (`run[1]` vs `.run1.old`)
    digits_run.save(tmp_path / "exp.v2")
    os.rename(tmp_path / "exp.v2", tmp_path / ".exp.v2.old")
    (tmp_path / ".exp.v2.tmp-live1234").mkdir()
    (tmp_path / ".run1.old").mkdir()
    digits_run.save(tmp_path / "exp")
    digits_run.save(tmp_path / "run[1]")
    assert (tmp_path / ".exp.v2.old").is_dir() and (tmp_path / ".exp.v2.tmp-live1234").is_dir()
    assert (tmp_path / ".run1.old").is_dir()
    assert wb.load_run(tmp_path / "exp.v2").config == digits_run.config  # restored by its own load


def test_concurrent_saves_and_loads(tmp_path, digits_run):
    """Four processes overwrite one folder in loops (4 x 150 saves) while one loads it in a loop
    (400 loads), all released at once: no save fails, every load finds a complete, consistent
    run. (Before the fix: `Directory not empty` and `.old` errors in saves, missing folders in
    loads.)"""
    target = tmp_path / "shared"
    go = tmp_path / "go"
    digits_run.save(target)
    wait = f"""
        run = wb.load_run({str(target)!r})
        print("ready", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        fails = 0
    """
    saver = wait + f"""
        for i in range(150):
            run.clean_accuracy = (os.getpid() % 1000) / 1000
            try:
                run.save({str(target)!r}, overwrite=True)
            except Exception as exc:
                fails += 1
                print(repr(exc), file=sys.stderr)
        print(fails)
    """
    reader = wait + f"""
        for i in range(400):
            try:
                r = wb.load_run({str(target)!r})
                assert r.history and r.config["rate"] == 0.05
            except Exception as exc:
                fails += 1
                print(repr(exc), file=sys.stderr)
        print(fails)
    """
    procs = [_spawn(saver, tmp_path) for _ in range(4)] + [_spawn(reader, tmp_path)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    fails = [int(o[0].strip().splitlines()[-1]) for o in outs]
    assert fails == [0, 0, 0, 0, 0], [o[1][-1500:] for o in outs]
    assert _leftovers(tmp_path) == []


def test_save_errors_name_the_requested_path(digits_run, tmp_path):
    with pytest.raises(OSError) as err:
        digits_run.save("/proc/x")
    assert "/proc/x" in str(err.value) and "/proc/.x." not in str(err.value)


def test_saved_runs_are_readable_by_others(digits_run, tmp_path):
    old = os.umask(0o022)
    try:
        path = digits_run.save(tmp_path / "shared")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o755)
    assert all(oct((path / n).stat().st_mode & 0o777) == oct(0o644) for n in runstore.RUN_FILES)
