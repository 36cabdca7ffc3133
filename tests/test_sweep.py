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
