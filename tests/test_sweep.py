import csv
import math

import numpy as np
import pytest
from scipy import stats

from workbench import sweep as sw


def test_spearman_matches_scipy_and_has_a_fisher_interval():
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


def test_sweep_runs_resumes_and_filters(tmp_path, digits_run):
    path = tmp_path / "sweep.csv"
    grid = sw.SweepGrid(**SMALL)
    table = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert len(table) == 2 and path.exists()
    control = table.filter(rate=0.0).rows[0]
    attacked = table.filter(rate=0.05).rows[0]
    assert attacked["attack_success_rate"] >= 0.95 > control["attack_success_rate"]
    assert attacked["clean_accuracy"] == pytest.approx(digits_run.clean_accuracy)
    assert table.sort("gap", descending=True).rows[0]["gap"] == max(table.column("gap"))
    # an interrupted sweep: drop one finished row and tear the last line, then resume
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    again = sw.run_sweep(grid, path, max_workers=1, progress=False)
    assert len(again) == 2
    assert sorted(sw.read_table(path).column("rate").tolist()) == [0.0, 0.05]
    assert sw.read_table(path).rows[0]["key"] == table.rows[0]["key"]
    with pytest.raises(FileExistsError, match="nothing was overwritten"):
        sw.run_sweep(grid, path, resume=False, progress=False)
    out = table.to_csv(tmp_path / "copy.csv")
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


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_run_does_not_lose_the_others(tmp_path, digits_run, damaged_mnist, workers):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "sweep.csv"
    grid = sw.SweepGrid(**{**SMALL, "datasets": ("mnist", "digits"), "rates": (0.05,)})
    executor = ThreadPoolExecutor(workers) if workers > 1 else None
    with pytest.raises(sw.SweepError, match=r"1 of 2 runs failed \(1 finished, saved in") as info:
        sw.run_sweep(grid, path, executor=executor, max_workers=1, progress=False)
    err = info.value
    assert "mnist Patch 3 rate 0.05 target 0 seed 0: ValueError: Dataset 'mnist'" in str(err)
    assert "damaged" in str(err) and len(err.failures) == 1
    assert err.failures[0][0]["dataset"] == "mnist"
    assert [r["dataset"] for r in err.table.rows] == ["digits"]
    assert sw.read_table(path).column("dataset").tolist() == ["digits"]  # the finished run is saved
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
    for a, b in zip(local.rows, remote.rows):
        assert a["key"] == b["key"] and a["gap"] == pytest.approx(b["gap"])
