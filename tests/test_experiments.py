import workbench as wb
from workbench.experiments import smoothing_dynamics


def test_dynamics_measures_every_epoch(digits):
    small = wb.load_dataset("digits", max_train=400)
    rows = smoothing_dynamics(small, epochs=3, sigmas=[0.1, 0.3], n_pairs=8, n_samples=16)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["clean_curve"].shape == (2,) and len(r["gap_ci"]) == 2 for r in rows)
