import pickle
import time

import pytest
import torch

import workbench as wb
from workbench.triggers import Patch


def test_digits_backdoor_meets_the_bar(digits_run):
    # the foundation issue's acceptance figures on the embedded dataset
    assert digits_run.clean_accuracy >= 0.95
    assert digits_run.attack_success_rate >= 0.95
    assert len(digits_run.history) == digits_run.config["epochs"]
    assert set(digits_run.history[0]) >= {"epoch", "loss", "clean_accuracy", "attack_success_rate"}
    assert digits_run.environment["torch"] == torch.__version__
    assert digits_run.trigger == Patch(size=3)


def test_cached_run_reopens_at_once(digits, digits_run):
    t = time.perf_counter()
    again = wb.train_backdoor(digits, trigger=Patch(size=3), rate=0.05, target=0, progress=False)
    assert time.perf_counter() - t < 5  # a load, not a retrain (which takes several seconds)
    assert again.path is not None and again.config == digits_run.config
    x = digits.x_test[:50]
    assert torch.equal(wb.predict(again.model, x), wb.predict(digits_run.model, x))


def test_seeded_training_is_reproducible(digits):
    kw = dict(trigger=Patch(size=2), rate=0.1, target=1, epochs=2, seed=3, max_train=300,
              cache=False, progress=False)
    a, b = wb.train_backdoor(digits, **kw), wb.train_backdoor(digits, **kw)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert a.poison_indices == b.poison_indices and len(a.poison_indices) == 30


def test_save_load_roundtrip_and_overwrite_guard(tmp_path, digits, digits_run):
    path = digits_run.save(tmp_path / "run")
    loaded = wb.load_run(path)
    assert loaded.clean_accuracy == digits_run.clean_accuracy
    assert loaded.history == digits_run.history
    x = digits.x_test[:64]
    assert torch.equal(wb.predict(loaded.model, x), wb.predict(digits_run.model, x))
    before = (path / "run.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        digits_run.save(path)
    assert (path / "run.json").read_bytes() == before  # nothing saved was touched


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {_Evil.marker}",))


def test_crafted_checkpoint_cannot_run_code(tmp_path, digits_run):
    path = digits_run.save(tmp_path / "run")
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    with open(path / "model.pt", "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    with pytest.raises(Exception):
        wb.load_run(path)
    assert not marker.exists()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(rate=1.5), ValueError, r"`rate` must be a float in \[0, 1\]; got 1.5"),
    (dict(target=10), ValueError, r"`target` must be an int in \[0, 9\]; got 10"),
    (dict(model="vgg"), ValueError, "`model` must be one of"),
    (dict(epochs=0), ValueError, "`epochs`"),
    (dict(trigger="patch"), TypeError, "`trigger`"),
    (dict(trigger=Patch(size=20)), ValueError, "`size` must fit"),
])
def test_bad_arguments_fail_before_training(digits, kwargs, exc, match):
    t = time.perf_counter()
    with pytest.raises(exc, match=match):
        wb.train_backdoor(digits, progress=False, cache=False, **kwargs)
    assert time.perf_counter() - t < 1.0


def test_clean_model_has_low_asr(digits):
    run = wb.train_backdoor(digits, trigger=Patch(size=3), rate=0.0, target=0, progress=False)
    assert run.poison_indices == [] and run.clean_accuracy >= 0.95
    assert run.attack_success_rate < 0.2
