import pytest
import torch

import workbench as wb
from workbench.triggers import Patch


def test_poisoning_picks_non_target_images(digits):
    p = wb.poison_dataset(digits.x_train, digits.y_train, Patch(size=3), rate=0.05, target=0, seed=1)
    n = len(digits.y_train)
    assert len(p.poison_indices) == round(0.05 * n)
    assert (digits.y_train[p.poison_indices] != 0).all()
    assert (p.y[p.poison_indices] == 0).all()
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[p.poison_indices] = False
    assert torch.equal(p.x[untouched], digits.x_train[untouched])
    assert torch.equal(p.x[p.poison_indices], Patch(size=3)(digits.x_train[p.poison_indices]))
    again = wb.poison_dataset(digits.x_train, digits.y_train, Patch(size=3), 0.05, 0, seed=1)
    assert torch.equal(again.poison_indices, p.poison_indices)
    other = wb.poison_dataset(digits.x_train, digits.y_train, Patch(size=3), 0.05, 0, seed=2)
    assert not torch.equal(other.poison_indices, p.poison_indices)


def test_rate_zero_and_bad_rates(digits):
    p = wb.poison_dataset(digits.x_train, digits.y_train, Patch(), rate=0.0, target=3)
    assert len(p.poison_indices) == 0 and torch.equal(p.x, digits.x_train)
    with pytest.raises(ValueError, match=r"`rate` must be a float in \[0, 1\]; got 1.5"):
        wb.poison_dataset(digits.x_train, digits.y_train, Patch(), rate=1.5, target=0)
    with pytest.raises(ValueError, match="`rate` must leave enough"):
        wb.poison_dataset(digits.x_train, digits.y_train, Patch(), rate=0.99, target=0)
    with pytest.raises(TypeError, match="`trigger`"):
        wb.poison_dataset(digits.x_train, digits.y_train, "patch", rate=0.1, target=0)


def test_triggered_pairs(digits):
    pairs = wb.triggered_pairs(digits.x_test, digits.y_test, Patch(), target=0, n=20, seed=0)
    assert len(pairs.clean) == 20 and (pairs.labels != 0).all()
    assert torch.equal(pairs.triggered, Patch()(pairs.clean))
    assert torch.equal(digits.x_test[pairs.indices], pairs.clean)
